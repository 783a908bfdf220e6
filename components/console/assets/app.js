// The mini-program demo: a customer's journey through the real APIs. Only the identity provider and the payment
// gateway are simulated (POST /api/demo/identity, /api/demo/payments), and only when the server runs in demo mode.
import { $, el, api, yuan, newKey, progress } from './common.js';

const BANK_CARD_BIN = '62258801';
let token = sessionStorage.getItem('scenefin.session');

const say = (text, bad = false) => { const m = $('#message'); m.textContent = text; m.className = bad ? 'bad' : 'muted'; };
const problem = (r) => `${r.status} ${r.body?.code ?? ''}: ${r.body?.detail ?? ''}`;

async function login(event) {
  event.preventDefault();
  const persona = $('#persona').value;
  const id = await api('POST', '/api/demo/identity', { body: { persona } });
  if (id.status !== 201) return say(`Demo login unavailable (${problem(id)})`, true);
  const referral = $('#referral-code').value.trim();
  const body = { assertion: id.body.assertion, ...(referral ? { referral_code: referral } : {}) };
  const s = await api('POST', '/api/sessions', { body });
  if (s.status !== 200 && s.status !== 201) return say(`Login failed (${problem(s)})`, true);
  token = s.body.token;
  sessionStorage.setItem('scenefin.session', token);
  await refresh();
  say(`Logged in as ${persona}${s.body.is_new ? ' (new customer)' : ''}.`);
}

async function refresh() {
  if (!token) return;
  const me = await api('GET', '/api/me', { token });
  if (me.status !== 200) { token = null; sessionStorage.removeItem('scenefin.session'); $('#who').textContent = 'Not logged in.'; return; }
  $('#who').replaceChildren(el('span', { 'data-test': 'customer', text: `Customer ${me.body.customer_id} · stage ${me.body.lifecycle?.stage ?? "-"}` }));
  await Promise.all([billers(), accounts(), campaigns(), wallet(), cards(), programs()]);
}

// Utility bills -----------------------------------------------------------------------------------------------

async function billers() {
  const r = await api('GET', '/api/utility/billers');
  $('#biller').replaceChildren(...(r.body?.items ?? []).map((b) => el('option', { value: b.id, text: b.name })));
}

async function accounts() {
  const r = await api('GET', '/api/utility/accounts', { token });
  const items = r.body?.items ?? [];
  $('#accounts').replaceChildren(...items.map((a) => el('div', { class: 'card', 'data-test': 'account' },
    el('div', {}, `${a.biller_name ?? a.biller_id} · ${a.account_no} · ${a.holder_masked}`),
    el('div', {}, 'Due: ', el('strong', { 'data-test': 'due', text: yuan(a.outstanding_fen) })),
    a.outstanding_fen > 0 ? el('button', { type: 'button', 'data-test': 'pay', onclick: () => pay(a) }, 'Pay with the bank\'s card') : el('span', { class: 'ok', text: 'Nothing due' }))));
}

async function bind(event) {
  event.preventDefault();
  const r = await api('POST', '/api/utility/accounts', { token, body: { biller_id: $('#biller').value, account_no: $('#account-no').value.trim() } });
  if (r.status !== 201 && r.status !== 200) return say(`Bind failed (${problem(r)})`, true);
  say('Account bound.');
  await accounts();
}

async function pay(account) {
  const q = new URLSearchParams({ biller_id: account.biller_id, account_no: account.account_no });
  const bills = await api('GET', `/api/utility/bills?${q}`, { token });
  const billIds = (bills.body?.items ?? []).map((b) => b.bill_id);
  const quote = await api('POST', '/api/utility/quotes', { token, body: { biller_id: account.biller_id, account_no: account.account_no, bill_ids: billIds, pay_with: 'bank_card', card_bin: BANK_CARD_BIN } });
  if (quote.status !== 201) return say(`Quote failed (${problem(quote)})`, true);
  const order = await api('POST', '/api/utility/orders', { token, body: { quote_id: quote.body.quote_id }, headers: { 'idempotency-key': newKey() } });
  if (order.status !== 201) return say(`Order failed (${problem(order)})`, true);
  const orderId = order.body.order.order_id;
  // The simulated gateway signs the notification; the page delivers it as the gateway would.
  const gw = await api('POST', '/api/demo/payments', { body: { scenario: 'utility', order_id: orderId, amount_fen: order.body.payment.amount_fen, card_bin: BANK_CARD_BIN } });
  if (gw.status !== 201) return say(`Gateway unavailable (${problem(gw)})`, true);
  const notified = await api('POST', gw.body.notify_path, { body: gw.body.body, headers: gw.body.headers });
  if (notified.status !== 200) return say(`Payment not applied (${problem(notified)})`, true);
  const receipt = await api('GET', `/api/utility/orders/${orderId}`, { token });
  $('#receipt').replaceChildren(el('div', { class: 'card', 'data-test': 'receipt' },
    el('div', { class: 'ok', text: `Paid ${yuan(receipt.body.total_fen)}` }),
    ...receipt.body.lines.map((l) => el('div', { class: 'muted', text: `${l.description}: ${yuan(l.amount_fen)}` })),
    el('div', { class: 'muted', text: `Receipt ${receipt.body.receipt_no} · order ${receipt.body.order_id} · ${receipt.body.state}` })));
  say('Bill paid.');
  await Promise.all([accounts(), refreshReferral()]);
}

// Coupons -------------------------------------------------------------------------------------------------------

async function campaigns() {
  const r = await api('GET', '/api/coupons/campaigns');
  const items = r.body?.items ?? [];
  $('#campaigns').replaceChildren(...(items.length ? items.map((c) => el('div', { class: 'card', 'data-test': 'campaign' },
    el('strong', { text: c.title }), el('span', { class: 'muted', text: ` · ${c.remaining_stock} left` }),
    el('div', {}, el('button', { type: 'button', 'data-test': 'claim', onclick: () => claim(c.id) }, 'Claim')))) : [el('span', { class: 'muted', text: 'No campaigns running.' })]));
}

async function claim(id) {
  const r = await api('POST', `/api/coupons/campaigns/${encodeURIComponent(id)}/claim`, { token, headers: { 'idempotency-key': newKey() } });
  if (r.status !== 201) return say(`Not claimed: ${r.body?.code ?? r.status}`, true);
  say(`Coupon ${r.body.code} is in your wallet.`);
  await Promise.all([wallet(), campaigns()]);
}

async function wallet() {
  const r = await api('GET', '/api/coupons/wallet', { token });
  const items = r.body?.items ?? [];
  const w = $('#wallet'); w.className = '';
  w.replaceChildren(...(items.length ? items.map((c) => el('div', { class: 'card', 'data-test': 'coupon' },
    el('span', { class: 'code', text: c.code }), ` ${c.title} · ${c.status} · until ${c.expires_at.slice(0, 10)}`)) : [el('span', { class: 'muted', text: 'Empty.' })]));
}

// Campus card ---------------------------------------------------------------------------------------------------

async function cards() {
  const r = await api('GET', '/api/campus/cards/me', { token });
  const items = r.body?.items ?? [];
  const c = $('#cards'); c.className = '';
  c.replaceChildren(...(items.length ? items.map((k) => el('div', { class: 'card', 'data-test': 'campus-card' },
    el('div', { class: 'big', text: yuan(k.balance_fen) }),
    el('div', { class: 'muted', text: `${k.school_id} · ${k.member_no} · ${k.status} · spent today ${yuan(k.spent_today_fen)} of ${yuan(k.daily_limit_fen)}` }))) : [el('span', { class: 'muted', text: 'No campus card bound.' })]));
}

async function bindCard(event) {
  event.preventDefault();
  const body = { school_id: $('#school-id').value.trim(), member_no: $('#member-no').value.trim(), activation_code: $('#activation').value.trim() };
  const r = await api('POST', '/api/campus/cards/bind', { token, body });
  if (r.status !== 201 && r.status !== 200) return say(`Card not bound (${problem(r)})`, true);
  say('Campus card bound.');
  await cards();
}

// Referrals -----------------------------------------------------------------------------------------------------

async function programs() {
  const r = await api('GET', '/api/referrals/programs');
  $('#program').replaceChildren(...(r.body?.items ?? []).map((p) => el('option', { value: p.id, text: p.title })));
  await refreshReferral();
}

async function getCode() {
  const r = await api('POST', '/api/referrals/codes', { token, body: { program_id: $('#program').value } });
  if (r.status !== 201 && r.status !== 200) return say(`No code (${problem(r)})`, true);
  await refreshReferral();
}

async function refreshReferral() {
  const id = $('#program').value;
  if (!id || !token) return;
  const r = await api('GET', `/api/referrals/me?program_id=${encodeURIComponent(id)}`, { token });
  if (r.status !== 200) return;
  const me = r.body;
  $('#my-code').replaceChildren(me.code ? el('div', {}, 'Share your code: ', el('span', { class: 'code', 'data-test': 'referral-code', text: me.code })) : el('span', { class: 'muted', text: 'No code yet.' }));
  const next = me.next_tier;
  const p = $('#progress'); p.className = '';
  p.replaceChildren(
    el('div', { 'data-test': 'referral-progress' }, `${me.qualified_count} qualified friends · tier ${me.current_tier?.tier ?? 0}`),
    next ? el('div', {}, progress(me.qualified_count / next.min_qualified), el('span', { 'data-test': 'next-tier', text: next.message })) : el('div', { class: 'ok', text: 'Top tier reached' }),
    el('div', { class: 'muted', text: `Rewards: ${yuan(me.rewards.cash_fen)} · ${me.rewards.points} points · ${me.rewards.coupons} coupons` }),
    ...me.referrals.map((x) => el('div', { class: 'muted', 'data-test': 'referral', text: `${x.referee_masked}: ${x.status}${x.reason ? ` (${x.reason})` : ''}` })));
}

$('#login-form').addEventListener('submit', login);
$('#bind-form').addEventListener('submit', bind);
$('#card-form').addEventListener('submit', bindCard);
$('#get-code').addEventListener('click', getCode);
$('#program').addEventListener('change', refreshReferral);
refresh();
