// The operator console: every number comes from /api/ops (insights) with the operator token.
import { $, el, api, yuan, pct, barChart, progress, table } from './common.js';

const body = (id) => $(`#${id} .body`);
const show = (id, ...nodes) => { const b = body(id); b.className = 'body'; b.replaceChildren(...nodes); };
const fail = (id, r) => show(id, el('span', { class: 'bad', text: `${r.status} ${r.body?.code ?? ''} ${r.body?.detail ?? ''}` }));

function range() {
  const q = new URLSearchParams();
  if ($('#from').value) q.set('from', $('#from').value);
  if ($('#to').value) q.set('to', $('#to').value);
  const s = q.toString();
  return s ? `?${s}` : '';
}

async function funnel(token) {
  const r = await api('GET', `/api/ops/funnel${range()}`, { token });
  if (r.status !== 200) return fail('funnel', r);
  const steps = r.body.steps;
  show('funnel',
    barChart(steps.map((s) => ({ label: s.step, value: s.count, note: s.conversion_bp == null ? '' : pct(s.conversion_bp) }))),
    el('p', { 'data-test': 'funnel-summary' },
      `Overall conversion ${pct(r.body.overall_conversion_bp)} · median time to activate `,
      r.body.median_minutes_to_activate == null ? '-' : `${r.body.median_minutes_to_activate} min`));
  const registered = steps.find((s) => s.step === 'registered');
  $('#funnel').dataset.registered = String(registered?.count ?? 0);
}

async function lifecycle(token) {
  const r = await api('GET', `/api/ops/lifecycle${range()}`, { token });
  if (r.status !== 200) return fail('lifecycle', r);
  const rows = Object.entries(r.body.stages).map(([label, value]) => ({ label, value }));
  show('lifecycle', barChart(rows, { color: '#0e9f6e' }));
}

async function channels(token) {
  const r = await api('GET', `/api/ops/channels${range()}`, { token });
  if (r.status !== 200) return fail('channels', r);
  const items = r.body.items;
  show('channels', items.length === 0 ? el('span', { class: 'muted', text: 'No channel codes yet.' }) : table(
    ['Code', 'Channel', 'Branch', 'Staff', { label: 'Visits', num: true }, { label: 'Registrations', num: true }, { label: 'Activations', num: true }],
    items.map((c) => [c.code, c.channel, c.branch_id, c.staff_id, c.visits, c.registrations, c.activations])));
}

function budgetRows(list) {
  return list.map((c) => {
    const { total_fen: total, spent_fen: used, remaining_fen: left } = c.budget;
    const cell = el('div', {}, progress(total ? used / total : 0), el('span', { class: 'muted', text: `${yuan(used)} of ${yuan(total)}` }));
    return [c.campaign_id ?? c.program_id ?? c.budget_id, c.kind ?? c.scenario ?? '', c.issued ?? '', c.redeemed ?? '', cell, yuan(left)];
  });
}

async function campaigns(token) {
  const r = await api('GET', '/api/ops/campaigns', { token });
  if (r.status !== 200) { fail('campaigns', r); return []; }
  const head = ['Id', 'Kind', { label: 'Issued', num: true }, { label: 'Redeemed', num: true }, 'Budget used', { label: 'Left', num: true }];
  const parts = [];
  for (const [key, title] of [['coupon_campaigns', 'Coupon campaigns'], ['referral_programs', 'Referral programs'], ['scenario_budgets', 'Scenario budgets']]) {
    const list = r.body[key];
    parts.push(el('h3', { text: `${title} (${list.length})` }), list.length ? table(head, budgetRows(list)) : el('p', { class: 'muted', text: 'None.' }));
  }
  show('campaigns', ...parts);
  return r.body.referral_programs.map((p) => p.program_id);
}

async function leaderboard(token, programs) {
  const parts = [];
  for (const id of programs) {
    const r = await api('GET', `/api/referrals/programs/${encodeURIComponent(id)}/leaderboard?limit=10`, { token });
    if (r.status !== 200) continue;
    parts.push(el('h3', { text: id }), table(['Referrer', { label: 'Qualified', num: true }, 'Tier'],
      r.body.items.map((x) => [x.referrer_id, x.qualified, x.tier ?? '-'])));
  }
  show('leaderboard', ...(parts.length ? parts : [el('span', { class: 'muted', text: 'No referral programs yet.' })]));
}

async function ledger(token) {
  const r = await api('GET', `/api/ops/ledger/check${range()}`, { token });
  if (r.status !== 200) return fail('ledger', r);
  show('ledger', el('p', { 'data-test': 'ledger-status', class: r.body.balanced ? 'ok' : 'bad',
    text: r.body.balanced ? `Balanced: ${r.body.postings} postings, ${r.body.accounts.length} accounts` : 'NOT balanced' }),
  ...(r.body.discrepancies ?? []).map((d) => el('div', { class: 'bad', text: d })));
}

async function load(event) {
  event?.preventDefault();
  const token = $('#token').value.trim();
  if (!token) return;
  sessionStorage.setItem('scenefin.operator', token);
  $('#message').textContent = 'Loading…';
  const check = await api('GET', '/api/ops/ledger/check', { token });
  if (check.status === 401) { $('#message').textContent = 'The operator token was refused.'; return; }
  await Promise.all([funnel(token), lifecycle(token), channels(token), ledger(token)]);
  await leaderboard(token, await campaigns(token));
  $('#message').textContent = `Loaded at ${new Date().toLocaleTimeString()}`;
  document.body.dataset.loaded = String(Date.now());
}

$('#token-form').addEventListener('submit', load);
const saved = sessionStorage.getItem('scenefin.operator');
if (saved) { $('#token').value = saved; load(); }
