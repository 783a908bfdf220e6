// The customer's mini-program (H5): utility bills, coupons, campus card, property fees, referrals and the customer's
// privacy rights (profile-based offers on or off, a copy of their data, erasure) through the real APIs. Only the bank's login gateway and the payment gateway are simulated (POST /api/demo/identity and
// /api/demo/payments, demo mode only): the page delivers the signed notification as the gateway would.
//
// Paying is one intent, once: the Pay button is disabled while in flight, one Idempotency-Key per intent is kept in
// localStorage (keyed by the bill set / top-up) so a retry or a reload places no second order, and the receipt shows
// once the order is paid.
import { $, el, api, newKey, progress } from './common.js';
import { t, applyStatic, yuan, shanghaiTime, langSwitch, currentLang } from './i18n.js';
import './app-text.js';

const BANK_CARD_BIN = '62258801';
const TOKEN_KEY = 'scenefin.session';
const INTENT_PREFIX = 'scenefin.intent:';
// The schools and communities this mini-program serves (the bank's configuration of the deployment; the API has no
// public list of them).
const TOPUP_AMOUNTS = [5000, 10000, 20000];
const PREPAY_MONTHS = [0, 3, 6, 12];
const TABS = ['utility', 'coupons', 'campus', 'property', 'referrals', 'privacy'];

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  me: null,
  billers: [],
  accounts: [],
  orders: [],
  campaigns: [],
  wallet: [],
  checkin: null,
  cards: [],
  txns: {},
  rooms: [],
  schools: [],
  communities: [],
  programs: [],
  referral: null,
  payCode: null,
  notices: [],
  exported: null,
  erasure: null,
};
const inFlight = new Set();
const claimKeys = new Map();
let payCodeTimer = null;

// Plumbing ------------------------------------------------------------------------------------------------------

/// An API call that never throws: a network failure is status 0. A 401 on a customer call ends the session.
async function call(method, path, { auth = false, body, headers } = {}) {
  let r;
  try {
    r = await api(method, path, { token: auth ? state.token : undefined, body, headers });
  } catch {
    return { status: 0, body: null };
  }
  if (auth && r.status === 401) expireSession();
  return r;
}
const ok = (r) => r.status >= 200 && r.status < 300;

/// A problem in plain words: `err.<code>.<field>`, else `err.<code>`, else the generic message (never the code).
function problemText(r) {
  if (!r || r.status === 0) return t('err.network');
  const code = r.body?.code;
  const field = r.body?.field;
  for (const key of [code && field ? `err.${code}.${field}` : null, code ? `err.${code}` : null]) {
    if (key && t(key) !== key) return t(key);
  }
  return t('err.generic');
}

function say(node, text, kind = 'error') {
  if (!node) return;
  node.textContent = text ?? '';
  node.className = kind;
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });
const button = (text, attrs = {}, { needsLogin = true, disabled = false } = {}) => {
  const b = el('button', { type: 'button', ...attrs }, text);
  if (needsLogin) b.dataset.needsLogin = '';
  if (disabled) b.dataset.off = 'true';
  b.disabled = disabled || (needsLogin && !state.token);
  return b;
};
/// Runs `work` with `node` disabled, once at a time (a double tap starts it once).
async function guarded(node, work) {
  if (node.disabled) return;
  node.disabled = true;
  try { await work(); } finally { node.disabled = !state.token || node.dataset.off === 'true'; }
}
/// A form that posts to the API: its submit button disabled meanwhile, a problem shown beside it in plain words, its
/// text inputs cleared and `done(answer)` run on success.
function formAction(form, { error, okNode, path, body, done }) {
  $(form).addEventListener('submit', async (event) => {
    event.preventDefault();
    say($(error), '');
    if (okNode) say($(okNode), '', 'ok');
    await guarded($(`${form} button[type=submit]`), async () => {
      const r = await call('POST', path, { auth: true, body: body() });
      if (!ok(r)) return say($(error), problemText(r));
      for (const input of $(form).querySelectorAll('input')) input.value = '';
      await done(r.body);
    });
  });
}

/// Replaces a select's options with `[value, label]` pairs, keeping the chosen one.
function fillSelect(select, options) {
  const chosen = select.value;
  select.replaceChildren(...options.map(([value, text]) => el('option', { value, text })));
  if (chosen) select.value = chosen;
}
/// The text of `key`, or of `fallback` when the page has no words for it (a code the server added later).
const textOr = (key, fallback) => (t(key) === key ? t(fallback) : t(key));
const emptyNote = (key) => el('p', { class: 'muted empty', text: t(key) });

function loadIntent(sig) {
  try { return JSON.parse(localStorage.getItem(INTENT_PREFIX + sig)) ?? null; } catch { return null; }
}
function saveIntent(sig, record) {
  try { localStorage.setItem(INTENT_PREFIX + sig, JSON.stringify(record)); } catch { /* storage full: the key lives in memory only */ }
}
function dropIntent(sig) {
  try { localStorage.removeItem(INTENT_PREFIX + sig); } catch { /* nothing kept */ }
}

// Session and header ---------------------------------------------------------------------------------------------

function applyLoginState() {
  const inside = Boolean(state.token);
  document.body.dataset.auth = inside ? 'in' : 'out';
  $('#login').hidden = inside;
  for (const node of document.querySelectorAll('.login-needed')) node.hidden = inside;
  for (const node of document.querySelectorAll('[data-needs-login]')) node.disabled = !inside || node.dataset.off === 'true';
}

function renderWho() {
  const who = $('#who');
  if (!state.token || !state.me) { who.replaceChildren(); return; }
  const stage = state.me.lifecycle?.stage ?? 'new';
  who.replaceChildren(
    el('span', { 'data-test': 'customer', class: 'who-name', text: t('login.hello', { phone: state.me.phone_masked ?? state.me.customer_id }) }),
    el('span', { class: `stage stage-${stage}`, 'data-test': 'stage', 'data-stage': stage, title: t('stage.label'), text: t(`stage.${stage}`) }),
    button(t('login.logout'), { id: 'logout', class: 'link', onclick: logout }, { needsLogin: false }),
  );
}

function renderNotices() {
  $('#notice').replaceChildren(...state.notices.map((n) => el('p', { class: `notice ${n.kind}`, 'data-test': 'notice', text: t(n.key, n.vars) })),
    state.erasure ? erasureReport(state.erasure) : '');
}
function notify(key, vars = {}, kind = 'info') {
  state.notices = [{ key, vars, kind }];
  renderNotices();
}

async function loadMe() {
  if (!state.token) return;
  const me = await call('GET', '/api/me', { auth: true });
  if (ok(me)) state.me = me.body;
  renderWho();
  renderPrivacy();
}

/// Ends the session on this device: the token, and the copy of the customer's data made for a download.
function dropSession() {
  state.token = null;
  state.me = null;
  sessionStorage.removeItem(TOKEN_KEY);
  forgetExport();
  $('#erase-confirm').replaceChildren();
  say($('#marketing-ok'), '', 'ok');
}

function expireSession() {
  if (!state.token) return;
  dropSession();
  notify('login.session_expired', {}, 'error');
  applyLoginState();
  renderWho();
  renderPrivacy();
}

/// Signs out and forgets what the page showed of the customer; `key` says why (logged out, or erased).
function signOut(key, kind = 'info') {
  dropSession();
  for (const list of ['accounts', 'orders', 'wallet', 'cards', 'rooms']) state[list] = [];
  state.checkin = null;
  state.referral = null;
  stopPayCode();
  notify(key, {}, kind);
  $('#checkout').hidden = true;
  $('#property-checkout').hidden = true;
  for (const id of ['#receipt', '#campus-receipt', '#property-receipt']) $(id).replaceChildren();
  receipts.clear();
  applyLoginState();
  renderAll();
}
const logout = () => signOut('login.logged_out');

const CHANNEL = new URLSearchParams(location.search).get('ch');

async function login(event) {
  event.preventDefault();
  const submit = $('#login-button');
  const error = $('#login-error');
  if (submit.disabled) return;
  submit.disabled = true;
  submit.textContent = t('login.busy');
  say(error, '');
  try {
    const persona = $('#persona').value;
    const referral = $('#referral-code').value.trim().toUpperCase();
    const id = await call('POST', '/api/demo/identity', { body: { persona } });
    if (id.status !== 201) { say(error, problemText(id)); return; }
    const notes = [];
    let body = { assertion: id.body.assertion };
    if (referral) body.referral_code = referral;
    if (CHANNEL) body.channel_code = CHANNEL;
    let s = await call('POST', '/api/sessions', { body });
    // A stale channel code or a mistyped referral code never blocks the login: drop it, log in, say so.
    for (let attempt = 0; attempt < 2 && !ok(s); attempt += 1) {
      const field = s.body?.field;
      if (field === 'channel_code' && body.channel_code) {
        delete body.channel_code;
        notes.push({ key: 'login.channel_stale', kind: 'warn' });
      } else if (field === 'referral_code' && body.referral_code) {
        delete body.referral_code;
        notes.push({ key: 'login.referral_malformed', vars: { code: referral }, kind: 'warn' });
        $('#attach-code').value = referral;
      } else break;
      body = { ...body };
      s = await call('POST', '/api/sessions', { body });
    }
    if (!ok(s)) { say(error, problemText(s)); return; }
    state.erasure = null;
    state.token = s.body.token;
    sessionStorage.setItem(TOKEN_KEY, state.token);
    if (s.body.is_new) notes.unshift({ key: 'login.new_customer', kind: 'ok' });
    if (body.referral_code) {
      // Whether the code took: attaching again is idempotent for the code given at registration.
      const attached = await call('POST', '/api/referrals/attach', { auth: true, body: { code: body.referral_code } });
      if (ok(attached)) notes.push({ key: 'login.referral_ok', vars: { code: referral }, kind: 'ok' });
      else {
        notes.push({ key: 'login.referral_failed', vars: { code: referral, reason: problemText(attached) }, kind: 'warn' });
        $('#attach-code').value = referral;
      }
    }
    state.notices = notes;
    renderNotices();
    applyLoginState();
    await refresh();
  } finally {
    submit.disabled = false;
    submit.textContent = t('login.submit');
  }
}

// Tabs ----------------------------------------------------------------------------------------------------------

function selectTab(name, focus = false) {
  const tab = TABS.includes(name) ? name : 'utility';
  for (const b of document.querySelectorAll('[role=tab]')) {
    const selected = b.dataset.tab === tab;
    b.setAttribute('aria-selected', String(selected));
    b.tabIndex = selected ? 0 : -1;
    if (selected && focus) b.focus();
  }
  for (const p of document.querySelectorAll('[role=tabpanel]')) p.hidden = p.id !== `panel-${tab}`;
  if (location.hash !== `#${tab}`) history.replaceState(null, '', `#${tab}`);
  if (tab !== 'campus') stopPayCode();
}

function tabKeys(event) {
  const i = TABS.indexOf(event.target.dataset.tab);
  if (i < 0) return;
  const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
  if (step) { event.preventDefault(); selectTab(TABS[(i + step + TABS.length) % TABS.length], true); }
}

// Payments (utility, property, campus top-up) -------------------------------------------------------------------

function lineLabel(line) {
  const d = line.description ?? '';
  switch (line.kind) {
    case 'fee': {
      const [cost, period] = d.split(' ');
      return t('line.fee', { cost: textOr(`cost.${cost}`, 'cost.other'), period: period ?? '' });
    }
    case 'prepay': return t('line.prepay', { months: (d.match(/^\d+/) ?? [''])[0] });
    case 'coupon': return t('line.coupon', { title: d });
    default: return textOr(`line.${line.kind}`, 'line.other');
  }
}

function linesList(lines) {
  return el('dl', { class: 'lines' }, lines.flatMap((l) => [
    el('dt', { text: lineLabel(l) }),
    el('dd', { class: l.amount_fen < 0 ? 'discount' : '', text: yuan(l.amount_fen) }),
  ]));
}

/// Places the order of an intent once: the same Idempotency-Key on every attempt (a lost answer, a 409 in flight or
/// a 503 are retried with it), so the server creates at most one order.
async function placeOnce(place, key) {
  let r;
  for (let attempt = 0; attempt < 4; attempt += 1) {
    r = await place(key);
    const retry = r.status === 0 || r.status === 503 || (r.status === 409 && r.body?.code === 'idempotency_request_in_flight');
    if (!retry) return r;
    await sleep(400 * (attempt + 1));
  }
  return r;
}

/// The payment gateway's part (simulated in demo mode): it signs one notification per intent, kept with the intent so
/// a retry delivers the same event again (the server dedupes it by event id) instead of paying twice; then the page
/// reads the order until it is no longer pending.
async function settle(scenario, sig, record) {
  let notification = record.notification;
  if (!notification) {
    const gw = await call('POST', '/api/demo/payments', { body: { scenario, order_id: record.order_id, amount_fen: record.amount_fen, card_bin: BANK_CARD_BIN } });
    if (gw.status !== 201) return gw;
    notification = gw.body;
    saveIntent(sig, { ...record, notification });
  }
  const delivered = await call('POST', notification.notify_path, { body: notification.body, headers: notification.headers });
  if (!ok(delivered) && delivered.status !== 409) return delivered;
  let order;
  for (let i = 0; i < 10; i += 1) {
    order = await call('GET', `/api/${scenario}/orders/${encodeURIComponent(record.order_id)}`, { auth: true });
    if (!ok(order) || order.body.state !== 'pending_payment') return order;
    await sleep(500);
  }
  return order;
}

const receipts = new Map();
function renderReceipt(container, order) {
  receipts.set(container.id, order);
  container.replaceChildren(el('div', { class: 'card receipt', 'data-test': 'receipt', role: 'status' },
    el('h3', { class: 'ok', text: t('receipt.heading') }),
    el('p', { class: 'big', 'data-test': 'receipt-amount', text: t('receipt.paid', { amount: yuan(order.total_fen) }) }),
    linesList(order.lines ?? []),
    el('p', { class: 'muted', text: t('receipt.at', { time: shanghaiTime(order.paid_at) }) }),
    order.paid_with_bank_card ? el('p', { class: 'muted', text: t('receipt.bank_card') }) : '',
    el('p', { class: 'muted small', text: t('receipt.no', { no: order.receipt_no ?? order.order_id }) }),
    button(t('receipt.close'), { class: 'secondary', onclick: () => { receipts.delete(container.id); container.replaceChildren(); } }, { needsLogin: false })));
}

/// The checkout of one intent: its lines, total and one Pay button. `intent`: {sig, scenario, lines, total_fen,
/// expires_at, bankCardOnly, place(key) → placed order, extra?: Node (a coupon choice), receiptBox, after()}.
function renderCheckout(box, intent) {
  const error = el('p', { class: 'error', role: 'alert', 'data-test': 'pay-error' });
  const status = el('p', { class: 'pending', role: 'status', 'data-test': 'pay-status' });
  const record = loadIntent(intent.sig);
  const resuming = Boolean(record?.order_id);
  const pay = el('button', { type: 'button', class: 'primary wide', 'data-test': 'confirm-pay' },
    resuming ? t('checkout.resume') : t('checkout.pay', { amount: yuan(intent.total_fen) }));
  // A quote that ran out (or an order that failed) is not paid again: the button starts a fresh quote instead.
  pay.addEventListener('click', () => (intent.stale && intent.restart ? intent.restart() : confirmPay(intent, pay, error, status)));
  box.hidden = false;
  box.replaceChildren(el('div', { class: 'card', 'data-test': 'checkout' },
    el('h3', { text: t('checkout.heading') }),
    linesList(intent.lines),
    intent.extra ?? '',
    el('p', { class: 'total', 'data-test': 'checkout-total', text: t('checkout.total', { amount: yuan(intent.total_fen) }) }),
    el('p', { class: 'muted small', text: t('checkout.pay_with') }),
    intent.bankCardOnly ? el('p', { class: 'muted small', text: t('checkout.bank_card_only') }) : '',
    intent.expires_at ? el('p', { class: 'muted small', text: t('checkout.expires', { time: shanghaiTime(intent.expires_at) }) }) : '',
    resuming ? el('p', { class: 'pending', text: t('checkout.pending') }) : '',
    pay, status, error,
    button(t('checkout.cancel'), { class: 'link', onclick: () => { box.hidden = true; box.replaceChildren(); } }, { needsLogin: false })));
}

async function confirmPay(intent, pay, error, status) {
  if (inFlight.has(intent.sig) || pay.disabled) return;
  inFlight.add(intent.sig);
  pay.disabled = true;
  pay.textContent = t('checkout.paying');
  say(error, '');
  try {
    let record = loadIntent(intent.sig);
    if (!record || (!record.order_id && record.ref !== intent.ref)) {
      record = { key: newKey(), ref: intent.ref, at: Date.now() };
      saveIntent(intent.sig, record);
    }
    if (!record.order_id) {
      const placed = await placeOnce(intent.place, record.key);
      if (!ok(placed)) {
        intent.stale = ['quote_expired', 'quote_not_found', 'idempotency_key_reused', 'order_not_payable'].includes(placed.body?.code);
        if (intent.stale) dropIntent(intent.sig);
        say(error, problemText(placed));
        pay.disabled = false;
        pay.textContent = intent.stale && intent.restart ? t('checkout.restart') : t('checkout.retry');
        return;
      }
      record = { ...record, order_id: placed.body.order.order_id, amount_fen: placed.body.payment.amount_fen };
      saveIntent(intent.sig, record);
    }
    say(status, t('checkout.pending'), 'pending');
    const order = await settle(intent.scenario, intent.sig, record);
    if (!ok(order) || order.body?.state !== 'paid') {
      const state = ok(order) ? order.body.state : null;
      intent.stale = ['failed', 'expired'].includes(state);
      if (intent.stale) dropIntent(intent.sig);
      say(status, '');
      say(error, state ? textOr(`checkout.order_${state}`, 'err.generic') : problemText(order));
      pay.disabled = false;
      pay.textContent = intent.stale && intent.restart ? t('checkout.restart') : t('checkout.retry');
      return;
    }
    dropIntent(intent.sig);
    const box = pay.closest('.checkout');
    if (box) { box.hidden = true; box.replaceChildren(); }
    renderReceipt(intent.receiptBox, order.body);
    intent.receiptBox.scrollIntoView?.({ block: 'nearest' });
    await Promise.all([intent.after?.(), loadMe()]);
  } finally {
    inFlight.delete(intent.sig);
  }
}

// Utility bills --------------------------------------------------------------------------------------------------

async function loadUtility() {
  const billers = await call('GET', '/api/utility/billers');
  state.billers = billers.body?.items ?? [];
  if (state.token) {
    const [accounts, orders] = await Promise.all([
      call('GET', '/api/utility/accounts', { auth: true }),
      call('GET', '/api/utility/orders?limit=10', { auth: true }),
    ]);
    state.accounts = accounts.body?.items ?? [];
    state.orders = orders.body?.items ?? [];
  }
  renderUtility();
}

function renderUtility() {
  fillSelect($('#biller'), state.billers.map((b) => [b.id, b.name]));
  $('#accounts').replaceChildren(...(state.accounts.length ? state.accounts.map(accountCard) : [emptyNote(state.token ? 'utility.no_accounts' : 'login.needed')]));
  $('#orders').replaceChildren(...(state.orders.length ? [el('ul', { class: 'list' }, state.orders.map((o) => el('li', { 'data-test': 'order' },
    el('span', {}, el('strong', { text: yuan(o.total_fen) }), ' ', el('span', { class: 'muted small', text: o.details?.account_no ?? '' })),
    el('span', { class: `state state-${o.state}`, text: t(`order.${o.state}`) }),
    el('span', { class: 'muted small', text: shanghaiTime(o.paid_at ?? o.created_at) }))))] : [emptyNote(state.token ? 'utility.no_orders' : 'login.needed')]));
}

function accountCard(a) {
  const error = el('p', { class: 'error', role: 'alert' });
  return el('div', { class: 'card', 'data-test': 'account' },
    el('div', { class: 'row spread' }, el('strong', { text: a.alias ?? a.biller_name ?? a.biller_id }), el('span', { class: 'muted', text: a.account_no })),
    el('div', { class: 'muted', 'data-test': 'holder', text: t('utility.holder', { holder: a.holder_masked }) }),
    el('div', { class: 'row spread' },
      a.outstanding_fen > 0
        ? el('span', {}, el('strong', { class: 'due', 'data-test': 'due', text: t('utility.due', { amount: yuan(a.outstanding_fen) }) }), ' ', el('span', { class: 'muted small', text: t('utility.open_bills', { n: a.open_bills }) }))
        : el('span', { class: 'ok', 'data-test': 'nothing-due', text: t('utility.nothing_due') }),
      a.outstanding_fen > 0 ? button(t('utility.pay'), { class: 'primary', 'data-test': 'pay', onclick: (e) => guarded(e.currentTarget, () => startUtility(a, null, error)) }) : ''),
    error);
}

const usableCoupons = (scenario) => state.wallet.filter((c) => c.status === 'active' && (c.applies_to ?? []).includes(scenario));

async function startUtility(account, couponId, error) {
  say(error, '');
  $('#receipt').replaceChildren();
  receipts.delete('receipt');
  const q = new URLSearchParams({ biller_id: account.biller_id, account_no: account.account_no });
  const [bills] = await Promise.all([call('GET', `/api/utility/bills?${q}`, { auth: true }), loadWallet()]);
  if (!ok(bills)) return say(error, problemText(bills));
  const billIds = (bills.body.items ?? []).map((b) => b.bill_id).sort();
  return quoteCheckout({
    scenario: 'utility',
    sig: `utility:${account.biller_id}:${account.account_no}:${billIds.join(',')}`,
    body: { biller_id: account.biller_id, account_no: account.account_no, bill_ids: billIds },
    couponId,
    box: $('#checkout'),
    receiptBox: $('#receipt'),
    error,
    restart: (coupon) => startUtility(account, coupon, error),
    after: () => Promise.all([loadUtility(), loadWallet().then(renderCoupons), loadReferral()]),
  });
}

/// Prices and shows one payment intent of a quoted scenario (utility, property): an order placed before (a reload,
/// a lost answer, another tab) is resumed rather than placed again, the intent's unexpired quote is reused, else a
/// quote is asked for; the wallet's coupons for the scenario can be chosen (choosing one re-prices).
async function quoteCheckout({ scenario, sig, body, couponId, box, receiptBox, error, restart, after }) {
  const orderPath = (id) => `/api/${scenario}/orders/${encodeURIComponent(id)}`;
  const record = loadIntent(sig);
  let quote = null;
  if (record?.order_id) {
    const order = await call('GET', orderPath(record.order_id), { auth: true });
    if (ok(order) && order.body.state === 'pending_payment') quote = { ...order.body, quote_id: record.ref };
    else dropIntent(sig);
  } else if (record?.quote && (record.quote.coupon_id ?? null) === couponId && Date.parse(record.quote.expires_at) > Date.now() + 30000) {
    quote = record.quote;
  }
  if (!quote) {
    const r = await call('POST', `/api/${scenario}/quotes`, { auth: true, body: { ...body, pay_with: 'bank_card', card_bin: BANK_CARD_BIN, coupon_id: couponId } });
    if (r.status === 409 && r.body?.code === 'bill_in_payment' && r.body.open_order_id) {
      const order = await call('GET', orderPath(r.body.open_order_id), { auth: true });
      if (ok(order) && order.body.state === 'pending_payment') {
        saveIntent(sig, { key: newKey(), ref: 'open', order_id: order.body.order_id, amount_fen: order.body.total_fen });
        quote = { ...order.body, quote_id: 'open' };
      }
    }
    if (!quote) {
      if (!ok(r)) return say(error, problemText(r));
      quote = { ...r.body, coupon_id: couponId };
      saveIntent(sig, { key: newKey(), ref: quote.quote_id, quote, at: Date.now() });
    }
  }
  const coupons = usableCoupons(scenario);
  const choice = el('select', { id: `${scenario}-coupon`, 'data-test': 'coupon-choice' },
    el('option', { value: '', text: t('checkout.no_coupon') }),
    coupons.map((c) => el('option', { value: c.coupon_id, text: `${c.title} · ${discountText(c.discount)}` })));
  choice.value = couponId ?? '';
  choice.disabled = Boolean(loadIntent(sig)?.order_id);
  choice.addEventListener('change', () => restart(choice.value || null));
  renderCheckout(box, {
    sig,
    ref: quote.quote_id,
    scenario,
    lines: quote.lines,
    total_fen: quote.total_fen,
    expires_at: quote.expires_at,
    bankCardOnly: quote.lines.some((l) => l.kind === 'cardholder_discount'),
    extra: coupons.length ? el('div', { class: 'field' }, el('label', { for: choice.id, text: t('checkout.coupon') }), choice) : null,
    place: (key) => call('POST', `/api/${scenario}/orders`, { auth: true, body: { quote_id: quote.quote_id }, headers: { 'idempotency-key': key } }),
    receiptBox,
    restart: () => restart(couponId),
    after,
  });
  box.scrollIntoView?.({ block: 'nearest' });
}


// Coupons --------------------------------------------------------------------------------------------------------

function discountText(d) {
  if (!d) return '';
  if (d.type === 'percent_off') {
    const rate = currentLang() === 'zh-CN' ? `${(10 - d.percent_bp / 1000).toFixed(1).replace(/\.0$/, '')}` : `${d.percent_bp / 100}%`;
    return t('discount.percent', { rate, max: yuan(d.max_off_fen) });
  }
  return d.min_spend_fen ? t('discount.fixed', { min: yuan(d.min_spend_fen), off: yuan(d.amount_fen) }) : t('discount.fixed_nomin', { off: yuan(d.amount_fen) });
}

async function loadWallet() {
  if (!state.token) { state.wallet = []; return; }
  const r = await call('GET', '/api/coupons/wallet', { auth: true });
  state.wallet = r.body?.items ?? [];
}

async function loadCoupons() {
  const [campaigns, checkin] = await Promise.all([
    call('GET', '/api/coupons/campaigns'),
    state.token ? call('GET', '/api/coupons/checkin', { auth: true }) : null,
    loadWallet(),
  ]);
  state.campaigns = (campaigns.body?.items ?? []).filter((c) => !['checkin', 'referral_reward', 'community_perk'].includes(c.kind));
  state.checkin = checkin && ok(checkin) ? checkin.body : null;
  renderCoupons();
}

function renderCoupons() {
  const c = state.checkin;
  const message = $('#checkin-message')?.textContent ?? '';
  const checkinButton = button(c?.checked_in_today ? t('coupons.checked_in') : t('coupons.checkin'), { class: 'primary', 'data-test': 'checkin', onclick: checkIn }, { disabled: Boolean(c?.checked_in_today) });
  $('#checkin').replaceChildren(
    el('div', { class: 'row spread' }, el('strong', { 'data-test': 'streak', text: t('coupons.streak', { n: c?.streak ?? 0 }) }), checkinButton),
    el('p', { id: 'checkin-message', class: 'ok', role: 'status', text: message }));
  $('#campaigns').replaceChildren(...(state.campaigns.length ? state.campaigns.map((k) => {
    const error = el('p', { class: 'error', role: 'alert' });
    // As many as a customer may hold are in the wallet already: say so rather than offer a claim that is refused.
    const full = state.wallet.filter((w) => w.campaign_id === k.id).length >= (k.per_customer_limit ?? 1);
    return el('div', { class: 'card', 'data-test': 'campaign', 'data-campaign': k.id },
      el('div', { class: 'row spread' }, el('strong', { text: k.title }), el('span', { class: 'muted small', text: t('coupons.left', { n: k.remaining_stock }) })),
      el('div', { class: 'row spread' }, el('span', { class: 'offer', text: discountText(k.coupon) }),
        button(full ? t('coupons.claimed_short') : t('coupons.claim'), { class: 'primary', 'data-test': 'claim', onclick: (e) => claim(k, e.currentTarget, error) }, { disabled: full || k.remaining_stock <= 0 })),
      error);
  }) : [emptyNote('coupons.none')]));
  $('#wallet').replaceChildren(...(state.wallet.length ? state.wallet.map((w) => el('div', { class: `card coupon coupon-${w.status}`, 'data-test': 'coupon' },
    el('div', { class: 'row spread' }, el('strong', { text: w.title }), el('span', { class: `state state-${w.status}`, 'data-test': 'coupon-status', text: t(`coupon.${w.status}`) })),
    el('div', { class: 'offer', text: discountText(w.discount) }),
    el('div', {}, el('span', { class: 'muted small', text: `${t('coupons.code')} ` }), el('span', { class: 'code', text: w.code })),
    el('div', { class: 'muted small', text: t('coupons.until', { date: shanghaiTime(w.expires_at, { time: false }) }) }),
    (w.applies_to ?? []).includes('utility') ? el('div', { class: 'tag', text: t('coupons.for_bills') }) : '',
    (w.applies_to ?? []).includes('property') ? el('div', { class: 'tag', text: t('coupons.for_property') }) : ''))
    : [emptyNote(state.token ? 'coupons.wallet_empty' : 'login.needed')]));
}

async function claim(campaign, node, error) {
  if (node.disabled) return;
  node.disabled = true;
  say(error, '');
  const key = claimKeys.get(campaign.id) ?? newKey();
  claimKeys.set(campaign.id, key);
  const r = await call('POST', `/api/coupons/campaigns/${encodeURIComponent(campaign.id)}/claim`, { auth: true, headers: { 'idempotency-key': key } });
  if (r.status !== 0 && r.status < 500) claimKeys.delete(campaign.id);
  if (!ok(r)) { node.disabled = !state.token; return say(error, problemText(r)); }
  await loadCoupons();
  say($(`[data-campaign="${CSS.escape(campaign.id)}"] .error`), t('coupons.claimed', { code: r.body.code }), 'ok');
}

async function checkIn() {
  const b = $('[data-test=checkin]');
  b.disabled = true;
  const r = await call('POST', '/api/coupons/checkin', { auth: true });
  if (!ok(r)) { b.disabled = false; return say($('#checkin-message'), problemText(r)); }
  const earned = (r.body.coupons ?? []).map((c) => t('coupons.checkin_coupon', { title: c.title })).join(' ');
  await loadCoupons();
  say($('#checkin-message'), `${t('coupons.checkin_done', { n: r.body.streak })} ${earned}`.trim(), 'ok');
}

// Campus card ----------------------------------------------------------------------------------------------------

async function loadCampus() {
  // The schools to bind a card of: the public directory (names as each school registered them).
  const schools = await call('GET', '/api/campus/schools');
  state.schools = schools.body?.items ?? state.schools;
  if (state.token) {
    const r = await call('GET', '/api/campus/cards/me', { auth: true });
    state.cards = (r.body?.items ?? []).filter((c) => c.status !== 'replaced');
    const txns = await Promise.all(state.cards.map((c) => call('GET', `/api/campus/cards/${encodeURIComponent(c.card_id)}/transactions?limit=10`, { auth: true })));
    state.txns = Object.fromEntries(state.cards.map((c, i) => [c.card_id, txns[i].body?.items ?? []]));
  }
  renderCampus();
}

function renderCampus() {
  fillSelect($('#school-id'), state.schools.map((s) => [s.id, s.name]));
  $('#card-bind').hidden = state.cards.length > 0;
  $('#cards').replaceChildren(...state.cards.map(campusCard));
  if (state.payCode) renderPayCode();
}

function campusCard(k) {
  const error = el('p', { class: 'error', role: 'alert', 'data-test': 'card-error' });
  const schoolName = state.schools.find((s) => s.id === k.school_id)?.name ?? k.school_id;
  const amount = el('select', { id: `topup-${k.card_id}`, 'data-test': 'topup-amount' }, TOPUP_AMOUNTS.map((a) => el('option', { value: String(a), text: yuan(a) })));
  const topup = button(t('campus.topup', { amount: yuan(TOPUP_AMOUNTS[0]) }), { class: 'primary', 'data-test': 'topup' }, { disabled: k.status !== 'active' });
  amount.addEventListener('change', () => { topup.textContent = t('campus.topup', { amount: yuan(Number(amount.value)) }); });
  topup.addEventListener('click', () => startTopup(k, Number(amount.value), error));
  const active = k.status === 'active';
  const txns = state.txns[k.card_id] ?? [];
  return el('div', { class: 'card campus', 'data-test': 'campus-card' },
    el('div', { class: 'row spread' }, el('strong', { text: schoolName }), el('span', { class: `state state-${k.status}`, 'data-test': 'card-status', text: t(`card.${k.status}`) })),
    el('div', { class: 'muted small', text: t('campus.balance') }),
    el('div', { class: 'big', 'data-test': 'balance', text: yuan(k.balance_fen) }),
    el('div', { class: 'muted', text: t('campus.holder', { holder: k.holder_masked, member: k.member_no }) }),
    el('div', { class: 'muted small', text: t('campus.today', { spent: yuan(k.spent_today_fen), limit: yuan(k.daily_limit_fen) }) }),
    el('h3', { text: t('campus.topup_heading') }),
    el('div', { class: 'row' }, el('label', { for: `topup-${k.card_id}`, class: 'inline', text: t('campus.topup_amount') }), amount, topup),
    el('div', { class: 'row' },
      button(t('campus.paycode'), { class: 'secondary', 'data-test': 'paycode', onclick: () => showPayCode(k, error) }, { disabled: !active }),
      active ? button(t('campus.report_lost'), { class: 'danger', 'data-test': 'report-lost', onclick: (e) => confirmLost(k, e.currentTarget, error) })
        : (k.status === 'lost' ? button(t('campus.unfreeze'), { class: 'secondary', 'data-test': 'unfreeze', onclick: () => cardAction(k, 'unfreeze', 'campus.unfrozen', error) }) : '')),
    el('div', { id: 'paycode-box' }),
    error,
    el('h3', { text: t('campus.txns_heading') }),
    txns.length ? el('ul', { class: 'list' }, txns.map((x) => el('li', { 'data-test': 'txn' },
      el('span', { text: t(`txn.${x.kind}`) }),
      el('strong', { class: x.amount_fen < 0 ? '' : 'ok', text: `${x.amount_fen > 0 ? '+' : ''}${yuan(x.amount_fen)}` }),
      el('span', { class: 'muted small', text: shanghaiTime(x.at) })))) : emptyNote('campus.no_txns'));
}

function startTopup(card, amountFen, error) {
  say(error, '');
  $('#campus-receipt').replaceChildren();
  receipts.delete('campus-receipt');
  const sig = `campus:${card.card_id}:${amountFen}`;
  const body = { card_id: card.card_id, amount_fen: amountFen, pay_with: 'bank_card', card_bin: BANK_CARD_BIN };
  const box = el('div', { class: 'checkout' });
  $('#campus-receipt').replaceChildren(box);
  renderCheckout(box, {
    sig,
    ref: String(amountFen),
    scenario: 'campus',
    lines: [{ kind: 'top_up', description: '', amount_fen: amountFen }],
    total_fen: amountFen,
    place: (key) => call('POST', '/api/campus/topups', { auth: true, body, headers: { 'idempotency-key': key } }),
    receiptBox: $('#campus-receipt'),
    after: loadCampus,
  });
}

function confirmLost(card, node, error) {
  const box = el('div', { class: 'confirm', role: 'alertdialog', 'aria-label': t('campus.report_lost') },
    el('p', { text: t('campus.report_confirm') }),
    el('div', { class: 'row' },
      button(t('campus.report_yes'), { class: 'danger', 'data-test': 'confirm-lost', onclick: () => cardAction(card, 'report-lost', 'campus.reported', error) }),
      button(t('common.cancel'), { class: 'secondary', onclick: () => box.remove() })));
  node.after(box);
  box.querySelector('button').focus();
}

async function cardAction(card, action, doneKey, error) {
  stopPayCode();
  const r = await call('POST', `/api/campus/cards/${encodeURIComponent(card.card_id)}/${action}`, { auth: true });
  if (!ok(r)) return say(error, problemText(r));
  await loadCampus();
  say($('[data-test=card-error]'), t(doneKey), 'ok');
}

function stopPayCode() {
  if (payCodeTimer) clearInterval(payCodeTimer);
  payCodeTimer = null;
  state.payCode = null;
}

async function showPayCode(card, error) {
  stopPayCode();
  say(error, '');
  const r = await call('POST', `/api/campus/cards/${encodeURIComponent(card.card_id)}/pay-code`, { auth: true });
  if (!ok(r)) return say(error, problemText(r));
  state.payCode = { ...r.body, card };
  renderPayCode();
  payCodeTimer = setInterval(renderPayCode, 1000);
}

function renderPayCode() {
  const box = $('#paycode-box');
  const p = state.payCode;
  if (!box || !p) return;
  const left = Math.max(0, Math.ceil((Date.parse(p.expires_at) - Date.now()) / 1000));
  const digits = p.pay_code.replace(/(\d{4})(?=\d)/g, '$1 ');
  if (left <= 0 && payCodeTimer) { clearInterval(payCodeTimer); payCodeTimer = null; }
  box.replaceChildren(el('div', { class: `paycode ${left ? '' : 'expired'}`, 'data-test': 'paycode-box' },
    el('h3', { text: t('campus.paycode_heading') }),
    el('p', { class: 'paycode-digits', 'data-test': 'paycode-digits', 'aria-label': p.pay_code, text: left ? digits : '•••• •••• •••• •••• ••' }),
    el('p', { class: left ? 'muted' : 'error', 'data-test': 'paycode-left', 'aria-live': 'off', text: left ? t('campus.paycode_left', { s: left }) : t('campus.paycode_expired') }),
    left ? '' : button(t('campus.paycode_refresh'), { class: 'secondary', onclick: () => showPayCode(p.card, $('[data-test=card-error]')) })));
}


// Property fees --------------------------------------------------------------------------------------------------

async function loadProperty() {
  // The communities to claim a room in: the public directory.
  const communities = await call('GET', '/api/property/communities');
  state.communities = communities.body?.items ?? state.communities;
  if (state.token) {
    const r = await call('GET', '/api/property/households', { auth: true });
    state.rooms = r.body?.items ?? [];
  }
  renderProperty();
}

function renderProperty() {
  fillSelect($('#community'), state.communities.map((c) => [c.id, c.name]));
  $('#rooms').replaceChildren(...(state.rooms.length ? state.rooms.map(roomCard) : [emptyNote(state.token ? 'property.no_rooms' : 'login.needed')]));
}

function roomCard(h) {
  const error = el('p', { class: 'error', role: 'alert' });
  const id = `prepay-${h.community_id}-${h.room_id}`;
  const prepay = el('select', { id, 'data-test': 'prepay' }, PREPAY_MONTHS.map((m) => el('option', { value: String(m), text: m ? t('property.prepay_n', { n: m }) : t('property.prepay_none') })));
  return el('div', { class: 'card', 'data-test': 'room' },
    el('div', { class: 'row spread' }, el('strong', { text: h.community_name }), el('span', { class: 'muted', text: h.address })),
    el('div', { class: 'muted', 'data-test': 'owner', text: t('property.owner_masked', { owner: h.owner_masked }) }),
    el('div', { class: 'muted small', text: `${t('property.monthly', { amount: yuan(h.monthly_fee_fen) })} · ${t('property.prepaid', { n: h.prepaid_months })}` }),
    h.arrears_fen > 0 ? el('div', { class: 'due', 'data-test': 'arrears', text: t('property.arrears', { amount: yuan(h.arrears_fen) }) })
      : el('div', { class: 'ok', 'data-test': 'arrears', text: t('property.no_arrears') }),
    h.bills.length ? el('ul', { class: 'list' }, h.bills.map((b) => el('li', { 'data-test': 'fee' },
      el('span', { text: `${textOr(`cost.${b.cost_type}`, 'cost.other')} ${b.period}` }),
      el('strong', { text: yuan(b.amount_fen + b.late_fee_fen) }),
      b.late_fee_fen ? el('span', { class: 'muted small', text: t('property.late_fee', { amount: yuan(b.late_fee_fen) }) }) : ''))) : '',
    el('div', { class: 'row' }, el('label', { for: id, class: 'inline', text: t('property.prepay') }), prepay,
      button(t('property.pay'), { class: 'primary', 'data-test': 'property-pay', onclick: (e) => guarded(e.currentTarget, () => startProperty(h, Number(prepay.value), error)) })),
    error);
}

async function startProperty(h, months, error, couponId = null) {
  say(error, '');
  $('#property-receipt').replaceChildren();
  receipts.delete('property-receipt');
  await loadWallet();
  const billIds = h.bills.map((b) => b.bill_id).sort();
  return quoteCheckout({
    scenario: 'property',
    sig: `property:${h.community_id}:${h.room_id}:${billIds.join(',')}:${months}`,
    body: { community_id: h.community_id, room_id: h.room_id, bill_ids: billIds, prepay_months: months },
    couponId,
    box: $('#property-checkout'),
    receiptBox: $('#property-receipt'),
    error,
    restart: (coupon) => startProperty(h, months, error, coupon),
    after: () => Promise.all([loadProperty(), loadWallet().then(renderCoupons), loadReferral()]),
  });
}


// Referrals ------------------------------------------------------------------------------------------------------

async function loadReferral() {
  if (!state.programs.length) {
    const r = await call('GET', '/api/referrals/programs');
    state.programs = r.body?.items ?? [];
    $('#program').replaceChildren(...state.programs.map((p) => el('option', { value: p.id, text: p.title })));
    $('#program-field').hidden = state.programs.length < 2;
  }
  const id = $('#program').value;
  state.referral = null;
  if (id && state.token) {
    const r = await call('GET', `/api/referrals/me?program_id=${encodeURIComponent(id)}`, { auth: true });
    if (ok(r)) state.referral = r.body;
  }
  renderReferral();
}

function rewardText(r) {
  if (!r) return '';
  if (r.kind === 'cash_fen') return t('reward.cash_fen', { amount: yuan(r.amount) });
  if (r.kind === 'points') return t('reward.points', { amount: r.amount });
  return t('reward.coupon_campaign');
}

/// A masked id shortened for a phone screen (`c**********0` → `c***0`).
const shortMask = (s) => (s && s.length > 6 ? `${s[0]}***${s.at(-1)}` : s ?? '');

function renderReferral() {
  const program = state.programs.find((p) => p.id === $('#program').value);
  const box = $('#referral');
  if (!program) { box.replaceChildren(emptyNote('referrals.none')); return; }
  const ladder = el('div', { class: 'card' }, el('h3', { text: t('referrals.ladder') }), el('ol', { class: 'ladder' }, program.tiers.map((tier) => el('li', {},
    t('referrals.ladder_row', { n: tier.min_qualified, reward: rewardText(tier.reward_per_referral) }),
    tier.tier_bonus ? t('referrals.ladder_bonus', { reward: rewardText(tier.tier_bonus) }) : ''))));
  const me = state.referral;
  if (!me) { box.replaceChildren(el('h2', { text: program.title }), ladder); return; }
  const parts = [el('h2', { text: program.title })];
  if (me.code) {
    const link = `${location.origin}/app?ref=${me.code}`;
    const share = t('referrals.share_text', { code: me.code, link });
    const copied = el('p', { class: 'ok', role: 'status' });
    parts.push(el('div', { class: 'card share' },
      el('div', { class: 'muted small', text: t('referrals.my_code') }),
      el('div', { class: 'code big', 'data-test': 'referral-code', text: me.code }),
      el('p', { class: 'share-text', 'data-test': 'share-text', text: share }),
      button(t('referrals.copy'), { class: 'secondary', 'data-test': 'copy-share', onclick: async () => {
        try { await navigator.clipboard.writeText(share); say(copied, t('referrals.copied'), 'ok'); } catch { say(copied, t('referrals.copy_manual'), 'muted'); }
      } }),
      copied));
  } else {
    parts.push(button(t('referrals.get_code'), { id: 'get-code', class: 'primary wide', 'data-test': 'get-code', onclick: getCode }));
  }
  const next = me.next_tier;
  const tier = me.current_tier?.tier;
  parts.push(el('div', { class: 'card' },
    el('div', { class: 'row spread' }, el('strong', { 'data-test': 'referral-progress', text: t('referrals.progress', { n: me.qualified_count }) }),
      el('span', { class: 'muted', 'data-test': 'tier', text: tier ? t('referrals.tier', { tier }) : t('referrals.tier_none') })),
    // No nudge to invite more for a customer who turned marketing off (next.message is null then).
    next ? el('div', {}, progress(me.qualified_count / next.min_qualified), next.message === null ? '' : el('p', { 'data-test': 'next-tier', text: t('referrals.next', { n: next.remaining, tier: next.tier }) }))
      : el('p', { class: 'ok', 'data-test': 'next-tier', text: t('referrals.top') }),
    el('p', { 'data-test': 'rewards', text: t('referrals.rewards', { cash: yuan(me.rewards.cash_fen), points: me.rewards.points, coupons: me.rewards.coupons }) })));
  parts.push(ladder);
  parts.push(el('h3', { text: t('referrals.friends') }));
  parts.push(me.referrals.length ? el('ul', { class: 'list' }, me.referrals.map((x) => el('li', { 'data-test': 'referral' },
    el('span', {}, el('span', { text: shortMask(x.referee_masked) }), ' ', el('span', { class: 'muted small', text: t('referrals.friend_since', { date: shanghaiTime(x.attached_at, { time: false }) }) })),
    el('span', { class: `state state-${x.status}`, text: t(`referral.${x.status}`) }),
    x.reason ? el('span', { class: 'muted small', text: textOr(`err.${x.reason}`, 'err.referral_rejected') }) : ''))) : emptyNote('referrals.no_friends'));
  box.replaceChildren(...parts);
}

async function getCode() {
  const b = $('#get-code');
  b.disabled = true;
  const r = await call('POST', '/api/referrals/codes', { auth: true, body: { program_id: $('#program').value } });
  if (!ok(r)) { b.disabled = false; b.after(el('p', { class: 'error', role: 'alert', text: problemText(r) })); return; }
  await loadReferral();
}


// Privacy --------------------------------------------------------------------------------------------------------

/// The erasure's fixed confirmation, in so many words (the API refuses anything else).
const ERASE_PHRASE = 'erase my personal information';
/// What an erasure deletes (docs/openapi.yaml, POST /api/me/erasure), said in the page's language.
const ERASED = ['identities', 'phone', 'cards', 'tags', 'journal', 'access', 'consent'];
/// The server's English sentences of what the bank keeps, recognised by their subject and said in the page's language;
/// one it does not know yet is said in general words rather than in English on a Chinese page.
const KEPT = [[/ledger|order/i, 'ledger'], [/settlement/i, 'settlements'], [/lifecycle|stage/i, 'stages'], [/channel/i, 'channel']];
const erasedList = () => el('ul', {}, ERASED.map((k) => el('li', { text: t(`privacy.deleted.${k}`) })));
const keptKey = (sentence) => `privacy.kept.${KEPT.find(([re]) => re.test(sentence))?.[1] ?? 'other'}`;

function renderPrivacy() {
  const me = state.token ? state.me : null;
  const box = $('#marketing');
  box.checked = Boolean(me?.marketing_allowed);
  const consent = me?.marketing_consent;
  let status = '';
  if (me) status = consent ? t(consent.granted ? 'privacy.consent_on_since' : 'privacy.consent_off_since', { time: shanghaiTime(consent.at) }) : t('privacy.consent_default');
  $('#marketing-state').textContent = status;
  renderExport();
}

async function setConsent(event) {
  const box = event.currentTarget;
  const want = box.checked;
  say($('#marketing-error'), '');
  say($('#marketing-ok'), '', 'ok');
  await guarded(box, async () => {
    const r = await call('PUT', '/api/me/consent', { auth: true, body: { marketing: want } });
    if (!ok(r)) { box.checked = !want; return say($('#marketing-error'), problemText(r)); }
    state.me = r.body;
    renderPrivacy();
    say($('#marketing-ok'), t(want ? 'privacy.consent_saved_on' : 'privacy.consent_saved_off'), 'ok');
    await loadReferral();
  });
}

/// Drops the copy of the customer's data the page holds for a download.
function forgetExport() {
  if (state.exported) URL.revokeObjectURL(state.exported.url);
  state.exported = null;
}

async function exportData(event) {
  say($('#export-error'), '');
  await guarded(event.currentTarget, async () => {
    const r = await call('GET', '/api/me/export', { auth: true });
    if (!ok(r)) return say($('#export-error'), problemText(r));
    forgetExport();
    const blob = new Blob([JSON.stringify(r.body, null, 2)], { type: 'application/json' });
    state.exported = { data: r.body, url: URL.createObjectURL(blob), name: `scenefin-${r.body.customer_id}.json` };
    renderExport();
    $('[data-test=export-download]')?.focus();
  });
}

/// The export's summary (the phone number masked on screen; it is in the clear in the file) and every time bank staff
/// read the customer's masked information, with their reason.
function renderExport() {
  const x = state.exported;
  if (!x) { $('#export-result').replaceChildren(); return; }
  const access = x.data.staff_access ?? [];
  $('#export-result').replaceChildren(el('div', { class: 'card', 'data-test': 'export-summary' },
    el('h3', { text: t('privacy.export_ready') }),
    el('dl', { class: 'lines' },
      el('dt', { text: t('privacy.export_phone') }), el('dd', { 'data-test': 'export-phone', text: state.me?.phone_masked ?? '-' }),
      el('dt', { text: t('privacy.export_payments') }), el('dd', { 'data-test': 'export-payments', text: String((x.data.payments ?? []).length) }),
      el('dt', { text: t('privacy.export_access') }), el('dd', { 'data-test': 'export-access', text: String(access.length) })),
    el('a', { class: 'download', href: x.url, download: x.name, 'data-test': 'export-download', text: t('privacy.export_save', { file: x.name }) }),
    el('h3', { text: t('privacy.access_heading') }),
    access.length ? el('ul', { class: 'list' }, access.map((a) => el('li', { 'data-test': 'staff-access' },
      el('span', { class: 'muted small', text: shanghaiTime(a.at) }),
      el('span', { text: t('privacy.access_row', { by: a.by, field: textOr(`privacy.field.${a.field}`, 'privacy.field.other') }) }),
      el('span', { class: 'reason', text: t('privacy.access_reason', { reason: a.reason }) })))) : emptyNote('privacy.no_access')));
}

/// Erasure asks first: what goes and what the bank keeps, and a box to tick before the button works.
function confirmErase() {
  const holder = $('#erase-confirm');
  if (holder.firstChild) return;
  const tick = el('input', { type: 'checkbox', id: 'erase-tick', 'data-test': 'erase-tick' });
  const go = button(t('privacy.erase_yes'), { class: 'danger', 'data-test': 'confirm-erase', onclick: (e) => erase(e.currentTarget, error) }, { disabled: true });
  const error = el('p', { class: 'error', role: 'alert' });
  tick.addEventListener('change', () => { go.dataset.off = String(!tick.checked); go.disabled = !tick.checked || !state.token; });
  holder.replaceChildren(el('div', { class: 'confirm', role: 'alertdialog', 'aria-labelledby': 'erase-q', 'data-test': 'erase-dialog' },
    el('p', { id: 'erase-q', text: t('privacy.erase_confirm') }),
    erasedList(),
    el('p', { text: t('privacy.erase_keeps') }),
    el('div', { class: 'tick' }, tick, el('label', { for: 'erase-tick', text: t('privacy.erase_tick') })),
    el('div', { class: 'row' }, go, button(t('common.cancel'), { class: 'secondary', onclick: () => holder.replaceChildren() })),
    error));
  tick.focus();
}

async function erase(node, error) {
  say(error, '');
  await guarded(node, async () => {
    const r = await call('POST', '/api/me/erasure', { auth: true, body: { confirm: ERASE_PHRASE } });
    if (!ok(r)) return say(error, problemText(r));
    $('#erase-confirm').replaceChildren();
    state.erasure = r.body;
    signOut('privacy.erased', 'ok');
    window.scrollTo(0, 0);
  });
}

/// What the erasure did, in the page's language: what was deleted, and what the bank keeps under a pseudonym.
function erasureReport(e) {
  const kept = [...new Set((e.kept ?? []).map(keptKey))];
  return el('div', { class: 'card', 'data-test': 'erasure-report', role: 'status' },
    el('p', { text: t('privacy.erased_at', { time: shanghaiTime(e.erased_at) }) }),
    el('h3', { text: t('privacy.deleted_heading') }),
    erasedList(),
    el('h3', { text: t('privacy.kept_heading') }),
    el('ul', { 'data-test': 'erasure-kept' }, kept.map((k) => el('li', { text: t(k) }))),
    el('p', { class: 'muted small', text: t('privacy.erased_again') }),
    button(t('privacy.report_close'), { class: 'link', onclick: () => { state.erasure = null; renderNotices(); } }, { needsLogin: false }));
}


// Start ----------------------------------------------------------------------------------------------------------

function renderAll() {
  applyStatic();
  document.title = t('app.title');
  renderWho();
  renderNotices();
  renderUtility();
  renderCoupons();
  renderCampus();
  renderProperty();
  renderReferral();
  renderPrivacy();
  applyLoginState();
}

async function refresh() {
  if (state.token) await loadMe();
  await Promise.all([loadUtility(), loadCoupons(), loadCampus(), loadProperty(), loadReferral()]);
  applyLoginState();
  document.body.dataset.ready = 'true';
}

$('#lang').append(langSwitch());
document.addEventListener('langchange', () => {
  renderAll();
  // An open checkout re-renders on its next action; close it rather than show it half in the old language.
  for (const id of ['#checkout', '#property-checkout']) { $(id).hidden = true; $(id).replaceChildren(); }
  $('#erase-confirm').replaceChildren();
  for (const [id, order] of receipts) renderReceipt(document.getElementById(id), order);
});
$('#login-form').addEventListener('submit', login);
formAction('#bind-form', {
  error: '#bind-error',
  okNode: '#bind-ok',
  path: '/api/utility/accounts',
  body: () => ({ biller_id: $('#biller').value, account_no: $('#account-no').value.trim() }),
  done: async (binding) => {
    await loadUtility();
    say($('#bind-ok'), t('utility.bound', { account: binding.account_no, holder: binding.holder_masked }), 'ok');
  },
});
formAction('#card-form', {
  error: '#card-error',
  path: '/api/campus/cards/bind',
  body: () => ({ school_id: $('#school-id').value, member_no: $('#member-no').value.trim(), activation_code: $('#activation').value.trim() }),
  done: async () => { await loadCampus(); say($('[data-test=card-error]'), t('campus.bound'), 'ok'); },
});
formAction('#claim-form', {
  error: '#claim-error',
  path: '/api/property/households',
  body: () => ({ community_id: $('#community').value, room_id: $('#room-id').value.trim(), owner_name: $('#owner-name').value.trim() }),
  done: async () => { await loadProperty(); say($('#claim-error'), t('property.claimed'), 'ok'); },
});
formAction('#attach-form', {
  error: '#attach-error',
  okNode: '#attach-ok',
  path: '/api/referrals/attach',
  body: () => ({ code: $('#attach-code').value.trim().toUpperCase() }),
  done: () => say($('#attach-ok'), t('referrals.attached'), 'ok'),
});
$('#program').addEventListener('change', loadReferral);
$('#marketing').addEventListener('change', setConsent);
$('#export').addEventListener('click', exportData);
$('#erase').addEventListener('click', confirmErase);
for (const b of document.querySelectorAll('[role=tab]')) b.addEventListener('click', () => selectTab(b.dataset.tab));
$('.tabs').addEventListener('keydown', tabKeys);
const ref = new URLSearchParams(location.search).get('ref');
if (ref) $('#referral-code').value = ref;
applyStatic();
document.title = t('app.title');
selectTab(location.hash.slice(1));
applyLoginState();
refresh();
