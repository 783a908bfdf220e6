// The operator console: every number comes from the operator routes (/api/ops/..., coupon campaigns, referral
// programmes, settlement statements, maker-checker approvals, a customer's profile, partners' event feeds) with the operator token, kept in this tab's session
// storage. Simplified Chinese first with an English switch (i18n.js); money as ¥1,234.50; days and times in
// Asia/Shanghai.
import { $, el, api, pct, barChart, progress, table } from './common.js';
import { register, t, applyStatic, yuan, shanghaiTime, langSwitch, currentLang } from './i18n.js';
import { TEXTS } from './console-texts.js';

register(TEXTS);

const TOKEN_KEY = 'scenefin.operator';
const MAX_DAYS = 366;
const STAGES = ['new', 'activated', 'engaged', 'high_value', 'dormant'];
const SCENARIOS = ['utility', 'property', 'campus', 'coupons', 'referrals'];
const VIEWS = ['overview', 'channels', 'campaigns', 'exceptions', 'ledger', 'audit', 'approvals', 'customers', 'partners'];
/// Customer ids and operator tags as the API accepts them; an unmasked phone number is hidden again after this long.
const CUSTOMER_ID = /^[A-Za-z0-9_-]{1,64}$/;
const OPERATOR_TAG = /^[a-z0-9_]{1,32}$/;
const UNMASK_REASON_MIN = 5;
const UNMASK_SHOWN_MS = 60000;
/// Where each scope lists its proposals awaiting a checker (`?state=pending`); `ap.kind.<scope>` names the kind of
/// partner a scope registers.
const APPROVAL_SCOPES = [
  { scope: 'utility', path: '/api/utility/approvals' },
  { scope: 'property', path: '/api/property/approvals' },
  { scope: 'campus', path: '/api/campus/approvals' },
  { scope: 'coupons', path: '/api/coupons/approvals' },
  { scope: 'customers', path: '/api/ops/customers/approvals' },
];
/// The scenarios whose partners read an event feed (`GET /api/{scenario}/partners/feeds`).
const FEED_SCENARIOS = ['utility', 'property', 'campus', 'coupons'];

/// What the last load fetched, so a language switch re-renders without asking the server again.
const state = { token: null, data: {}, view: 'overview' };

// ---------------------------------------------------------------------------------------------- small helpers

const body = (id) => $(`#${id} .body`);
const show = (id, ...nodes) => body(id).replaceChildren(...nodes.flat());
const note = (text, cls = 'help') => el('p', { class: cls, text });
const num = (label) => ({ label, num: true });
const count = (n) => (n === null || n === undefined ? '-' : Number(n).toLocaleString('en-US'));
const label = (prefix, value) => (value === null || value === undefined || value === '' ? '-' : t(`${prefix}.${value}`) === `${prefix}.${value}` ? String(value) : t(`${prefix}.${value}`));

/// A table that scrolls sideways on a narrow screen (a focusable region, so it scrolls by keyboard too).
function scroller(caption, node) {
  return el('div', { class: 'scroll', role: 'region', tabindex: '0', 'aria-label': caption }, node);
}

function captioned(caption, headers, rows, attrs = {}) {
  const tbl = table(headers, rows);
  tbl.prepend(el('caption', { class: 'sr-only', text: caption }));
  for (const [k, v] of Object.entries(attrs)) tbl.setAttribute(k, v);
  return scroller(caption, tbl);
}

function chart(rows, caption, options) {
  const svg = barChart(rows, options);
  svg.setAttribute('aria-label', caption);
  const figure = el('figure', { class: 'chart' }, svg, el('figcaption', { class: 'help', text: caption }));
  return figure;
}

// ---------------------------------------------------------------------------------------------- days

/// Today's Asia/Shanghai day, `YYYY-MM-DD`.
function shanghaiToday() {
  return new Intl.DateTimeFormat('en-CA', { timeZone: 'Asia/Shanghai', year: 'numeric', month: '2-digit', day: '2-digit' }).format(new Date());
}
const dayNumber = (iso) => Math.round(Date.parse(`${iso}T00:00:00Z`) / 86400000);
const dayOf = (n) => new Date(n * 86400000).toISOString().slice(0, 10);
const validDay = (v) => /^\d{4}-\d{2}-\d{2}$/.test(v) && !Number.isNaN(Date.parse(`${v}T00:00:00Z`));

/// Checks the range as the API does; `{field, key, vars}` for the first problem, or null.
export function rangeProblem(from, to, today = shanghaiToday()) {
  if (from && !validDay(from)) return { field: 'from', key: 'range.err.format' };
  if (to && !validDay(to)) return { field: 'to', key: 'range.err.format' };
  const last = to ? dayNumber(to) : dayNumber(today);
  if (last > dayNumber(today) + 1) return { field: 'to', key: 'range.err.future', vars: { tomorrow: dayOf(dayNumber(today) + 1) } };
  if (!from) return null;
  const first = dayNumber(from);
  if (first > last) return { field: 'from', key: 'range.err.order' };
  if (last - first + 1 > MAX_DAYS) return { field: 'from', key: 'range.err.long', vars: { days: last - first + 1, max: MAX_DAYS } };
  return null;
}

function fieldError(field, text) {
  const box = $(`#${field}-error`);
  box.textContent = text ?? '';
  $(`#${field}`).setAttribute('aria-invalid', text ? 'true' : 'false');
}

function clearRangeErrors() {
  fieldError('from');
  fieldError('to');
}

function rangeQuery() {
  const q = new URLSearchParams();
  if ($('#from').value) q.set('from', $('#from').value);
  if ($('#to').value) q.set('to', $('#to').value);
  return q;
}

// ---------------------------------------------------------------------------------------------- errors

/// A problem response (or a network failure) in plain words, never the raw code; `prefix` names texts of the
/// action at hand that say it better than the general ones (e.g. `ap.err.forbidden_role`).
function explain(r, prefix) {
  if (!r || r.status === 0) return t('err.network');
  const code = r.body?.code;
  for (const p of [prefix, 'err']) if (p && code && t(`${p}.${code}`) !== `${p}.${code}`) return t(`${p}.${code}`);
  if (r.status === 401) return t('err.invalid_operator_token');
  if (r.status >= 500) return t('err.server');
  return t('err.generic');
}

async function call(path, { auth = true, method = 'GET', body } = {}) {
  try {
    return await api(method, path, { ...(auth ? { token: state.token } : {}), body });
  } catch {
    return { status: 0, body: null };
  }
}

/// A server's 400 about the range goes beside its field, not into the panel.
function rangeRefusal(r) {
  if (r.status === 400 && ['from', 'to'].includes(r.body?.field)) {
    fieldError(r.body.field, t('range.err.server', { field: t(`range.${r.body.field}`) }));
    return true;
  }
  return false;
}

function failed(id, r) {
  if (rangeRefusal(r)) return show(id, note(t('range.see'), 'warn'));
  show(id, el('p', { class: 'bad', role: 'alert', text: explain(r) }));
}

// ---------------------------------------------------------------------------------------------- funnel

const MINUTES_PER_HOUR = 60;
const MINUTES_PER_DAY = 1440;

/// Minutes in sensible units: minutes under an hour, hours under two days, then days.
export function duration(minutes) {
  const round = (n) => (n < 10 ? Math.round(n * 10) / 10 : Math.round(n));
  if (minutes < MINUTES_PER_HOUR) return t('unit.minutes', { n: minutes });
  if (minutes < 2 * MINUTES_PER_DAY) return t('unit.hours', { n: round(minutes / MINUTES_PER_HOUR) });
  return t('unit.days', { n: round(minutes / MINUTES_PER_DAY) });
}

function medianText(report) {
  const tta = report.time_to_activate;
  const b = tta?.median_bucket;
  if (!b) return t('funnel.median.none');
  if (b.from_minutes === 0) return t('funnel.median.under', { n: tta.activations });
  if (b.to_minutes === null) return t('funnel.median.over', { from: duration(b.from_minutes), n: tta.activations });
  return t('funnel.median.between', { from: duration(b.from_minutes), to: duration(b.to_minutes), n: tta.activations });
}

function renderFunnel() {
  const r = state.data.funnel;
  if (!r) return;
  if (r.status !== 200) return failed('funnel', r);
  const steps = r.body.steps;
  const over = steps.filter((s) => s.conversion_bp !== null && s.conversion_bp > 10000);
  // A step per the one before, starred when over 100% (explained under the table).
  const conversion = (s) => (s.conversion_bp === null ? '' : `${pct(s.conversion_bp)}${s.conversion_bp > 10000 ? ' *' : ''}`);
  const rows = steps.map((s) => ({ label: t(`step.${s.step}`), value: s.count, note: conversion(s) }));
  const registered = steps.find((s) => s.step === 'registered');
  $('#funnel').dataset.registered = String(registered?.count ?? 0);
  const stepsTable = captioned(t('funnel.title'), [t('funnel.col.step'), num(t('funnel.col.count')), num(t('funnel.col.conversion'))],
    steps.map((s) => [t(`step.${s.step}`), count(s.count), conversion(s) || '-']),
    { 'data-test': 'funnel-table' });
  const why = over.map((s) => el('li', { text: `${t(`step.${s.step}`)} ${pct(s.conversion_bp)}: ${t(`funnel.over.${s.step}`)}` }));
  show('funnel',
    note(t('funnel.scope', { from: r.body.from, to: r.body.to, dimension: dimensionText(r.body.dimension) })),
    chart(rows, t('funnel.chart')),
    stepsTable,
    over.length ? el('div', { class: 'callout', 'data-test': 'funnel-why' }, el('p', { text: t('funnel.over.title') }), el('ul', {}, why)) : [],
    el('p', { 'data-test': 'funnel-summary' }, t('funnel.overall', { rate: pct(r.body.overall_conversion_bp) })),
    el('p', { 'data-test': 'funnel-median' }, medianText(r.body)),
    note(t('funnel.how')));
}

function dimensionText(dimension) {
  if (!dimension || dimension === 'all') return t('funnel.by.all');
  const [kind, value] = [dimension.slice(0, 2), dimension.slice(3)];
  const key = { ch: 'funnel.by.channel', cp: 'funnel.by.campaign', sc: 'funnel.by.scenario' }[kind];
  return `${key ? t(key) : kind} ${kind === 'sc' ? label('scenario', value) : value}`;
}

/// The values of the funnel's second picker for the chosen dimension.
function funnelOptions() {
  const by = $('#funnel-by').value;
  const select = $('#funnel-value');
  const keep = select.value;
  let values = [];
  if (by === 'channel') values = (state.data.channels?.body?.items ?? []).map((c) => [c.code, `${c.code} · ${label('channel', c.channel)}`]);
  if (by === 'campaign') {
    const titles = new Map();
    for (const c of state.data.campaigns?.body?.coupon_campaigns ?? []) titles.set(c.campaign_id, c.title);
    for (const c of state.data.channels?.body?.items ?? []) if (c.campaign_id && !titles.has(c.campaign_id)) titles.set(c.campaign_id, '');
    values = [...titles].map(([id, title]) => [id, title ? `${title} (${id})` : id]);
  }
  if (by === 'scenario') values = SCENARIOS.map((s) => [s, label('scenario', s)]);
  select.disabled = by === 'all';
  select.replaceChildren(...(by === 'all' ? [el('option', { value: '', text: t('funnel.value.none') })]
    : values.length ? values.map(([v, text]) => el('option', { value: v, text })) : [el('option', { value: '', text: t('funnel.value.empty') })]));
  if (values.some(([v]) => v === keep)) select.value = keep;
}

let funnelAsked = 0;

async function loadFunnel() {
  const asked = ++funnelAsked;
  const q = rangeQuery();
  const by = $('#funnel-by').value;
  const value = $('#funnel-value').value;
  if (by !== 'all' && value) q.set(by, value);
  const r = await call(`/api/ops/funnel?${q}`);
  if (asked !== funnelAsked) return; // a later choice is on its way
  state.data.funnel = r;
  renderFunnel();
}

// ---------------------------------------------------------------------------------------------- lifecycle

function renderLifecycle() {
  const r = state.data.lifecycle;
  if (!r) return;
  if (r.status !== 200) return failed('lifecycle', r);
  const b = r.body;
  const rows = STAGES.map((s) => ({ label: t(`stage.${s}`), value: b.stages[s] ?? 0 }));
  const days = (/(\d+) days/.exec(b.note ?? '') ?? [])[1] ?? '60';
  show('lifecycle',
    el('p', { text: t('lifecycle.summary', { customers: count(b.customers), registered: count(b.registered), from: b.from, to: b.to }) }),
    chart(rows, t('lifecycle.chart'), { color: '#0b7a4b' }),
    captioned(t('lifecycle.title'), [t('lifecycle.col.stage'), num(t('lifecycle.col.customers'))],
      STAGES.map((s) => [t(`stage.${s}`), count(b.stages[s] ?? 0)]), { 'data-test': 'stages' }),
    b.transitions.length ? captioned(t('lifecycle.transitions'), [t('lifecycle.col.from'), t('lifecycle.col.to'), num(t('lifecycle.col.count'))],
      b.transitions.map((x) => [t(`stage.${x.from}`), t(`stage.${x.to}`), count(x.count)])) : note(t('lifecycle.no_transitions')),
    el('div', { class: 'callout', 'data-test': 'dormant-note' },
      el('p', { text: t('lifecycle.dormant', { days }) }),
      currentLang() === 'en' ? el('p', { class: 'help', text: `${t('lifecycle.api_note')}: ${b.note}` }) : []));
}

// ---------------------------------------------------------------------------------------------- channels

function countsRow(c) {
  return [count(c.visits), count(c.registrations), pct(c.registration_rate_bp), count(c.activations), pct(c.activation_rate_bp)];
}

const countHeads = () => [num(t('ch.visits')), num(t('ch.registrations')), num(t('ch.reg_rate')), num(t('ch.activations')), num(t('ch.act_rate'))];

function renderChannels() {
  const r = state.data.channels;
  if (!r) return;
  if (r.status !== 200) return failed('channels', r);
  const b = r.body;
  if (!b.items.length) return show('channels', note(t('channels.none')));
  const group = (list, kind) => captioned(t(`channels.by_${kind}`), [t(`ch.${kind}`), t('ch.codes'), ...countHeads()],
    list.map((g) => [g.id ?? t('ch.unassigned'), g.codes.join(', '), ...countsRow(g)]), { 'data-test': `by-${kind}` });
  const groupChart = (list, kind) => chart(list.map((g) => ({ label: g.id ?? t('ch.unassigned'), value: g.registrations, note: pct(g.registration_rate_bp) })),
    t('channels.chart', { by: t(`ch.${kind}`) }), { color: '#1a5fd0' });
  show('channels',
    note(t('channels.scope', { from: b.from, to: b.to })),
    el('p', { 'data-test': 'channel-totals', text: t('channels.totals', { visits: count(b.totals.visits), registrations: count(b.totals.registrations), activations: count(b.totals.activations), reg: pct(b.totals.registration_rate_bp), act: pct(b.totals.activation_rate_bp) }) }),
    el('h3', { text: t('channels.by_branch') }), groupChart(b.by_branch, 'branch'), group(b.by_branch, 'branch'),
    el('h3', { text: t('channels.by_staff') }), groupChart(b.by_staff, 'staff'), group(b.by_staff, 'staff'),
    el('h3', { text: t('channels.codes') }),
    captioned(t('channels.codes'), [t('ch.code'), t('ch.channel'), t('ch.branch'), t('ch.staff'), t('ch.campaign'), t('ch.scenario'), ...countHeads()],
      b.items.map((c) => [c.code, label('channel', c.channel), c.branch_id ?? '-', c.staff_id ?? '-', c.campaign_id ?? '-', label('scenario', c.scenario), ...countsRow(c)]),
      { 'data-test': 'channel-codes' }),
    note(t('channels.how')));
}

// ---------------------------------------------------------------------------------------------- campaigns

/// Spent + reserved + left must make the total; the difference (0 when it adds up).
const budgetGap = (b) => b.total_fen - (b.spent_fen + b.reserved_fen + b.remaining_fen);

function budgetCells(b) {
  const gap = budgetGap(b);
  const bar = el('div', { class: 'budget' }, progress(b.total_fen ? b.spent_fen / b.total_fen : 0), el('span', { text: pct(b.progress_bp) }));
  const check = gap === 0 ? el('span', { class: 'ok', text: t('budget.adds_up') })
    : el('span', { class: 'bad', text: t('budget.gap', { gap: yuan(gap) }) });
  return [yuan(b.total_fen), yuan(b.spent_fen), yuan(b.reserved_fen), yuan(b.remaining_fen), bar, check];
}

const budgetHeads = () => [num(t('budget.total')), num(t('budget.spent')), num(t('budget.reserved')), num(t('budget.left')), t('budget.progress'), t('budget.check')];

function flagRows(wrapper, list) {
  const rows = wrapper.querySelectorAll('tbody tr');
  list.forEach((item, i) => { if (budgetGap(item.budget) !== 0) { rows[i].classList.add('flagged'); rows[i].dataset.flag = 'budget'; } });
  return wrapper;
}

function renderCampaigns() {
  const r = state.data.campaigns;
  if (!r) return;
  if (r.status !== 200) return failed('campaigns', r);
  const b = r.body;
  const coupons = b.coupon_campaigns;
  const programs = b.referral_programs;
  const budgets = b.scenario_budgets;
  const stats = state.data.programStats ?? {};
  const parts = [note(t('campaigns.as_of', { at: shanghaiTime(b.as_of) })), note(t('budget.how'))];
  parts.push(el('h3', { text: t('campaigns.coupons', { n: coupons.length }) }));
  parts.push(coupons.length ? flagRows(captioned(t('campaigns.coupons', { n: coupons.length }),
    [t('cp.title'), t('cp.kind'), t('cp.status'), num(t('cp.issued')), num(t('cp.redeemed')), num(t('cp.rate')), num(t('cp.discount')), num(t('cp.stock')), ...budgetHeads()],
    coupons.map((c) => [el('span', {}, c.title, el('br'), el('small', { class: 'help', text: c.campaign_id })), label('kind', c.kind), label('status', c.status),
      count(c.issued), count(c.redeemed), pct(c.redemption_rate_bp), yuan(c.discount_spent_fen), count(c.remaining_stock), ...budgetCells(c.budget)]),
    { 'data-test': 'coupon-campaigns' }), coupons) : note(t('none')));
  parts.push(el('h3', { text: t('campaigns.programs', { n: programs.length }) }));
  parts.push(programs.length ? flagRows(captioned(t('campaigns.programs', { n: programs.length }),
    [t('rp.title'), t('rp.running'), num(t('rp.referrals')), num(t('rp.qualified_gross')), num(t('rp.clawed_back')), num(t('rp.qualified_net')), num(t('rp.rate')),
      num(t('rp.rewarded')), num(t('rp.paid')), num(t('rp.points')), num(t('rp.coupons')), t('rp.rejections'), ...budgetHeads()],
    programs.map((p) => {
      const s = stats[p.program_id];
      const rejections = s?.rejections ? Object.entries(s.rejections).filter(([, n]) => n > 0).map(([k, n]) => `${label('reject', k)} ${n}`).join('; ') : '';
      return [el('span', {}, p.title, el('br'), el('small', { class: 'help', text: p.program_id })), p.running ? t('yes') : t('no'),
        count(p.referrals), count(p.qualified_gross), count(p.clawed_back), count(p.qualified_net), s ? pct(s.qualification_rate_bp) : '-',
        count(p.rewarded), yuan(p.rewards_paid_fen), count(p.points_awarded), count(p.coupons_issued), rejections || t('none.short'), ...budgetCells(p.budget)];
    }), { 'data-test': 'referral-programs' }), programs) : note(t('none')));
  parts.push(el('h3', { text: t('campaigns.budgets', { n: budgets.length }) }));
  parts.push(budgets.length ? flagRows(captioned(t('campaigns.budgets', { n: budgets.length }),
    [t('sb.scenario'), t('sb.kind'), t('sb.id'), t('sb.funds'), ...budgetHeads()],
    budgets.map((s) => [label('scenario', s.scenario), label('bkind', s.kind), s.budget_id, s.funds.join(', '), ...budgetCells(s.budget)]),
    { 'data-test': 'scenario-budgets' }), budgets) : note(t('none')));
  parts.push(note(t('campaigns.note')));
  show('campaigns', ...parts);
}

function renderLeaderboard() {
  const boards = state.data.leaderboards;
  if (!boards) return;
  const parts = [];
  for (const { id, title, r } of boards) {
    parts.push(el('h3', { text: title ? `${title} (${id})` : id }));
    if (r.status !== 200) { parts.push(el('p', { class: 'bad', text: explain(r) })); continue; }
    parts.push(r.body.items.length ? captioned(t('leaderboard.title'), [num(t('lb.rank')), t('lb.referrer'), num(t('lb.qualified')), num(t('lb.tier'))],
      r.body.items.map((x, i) => [String(i + 1), x.referrer_id, count(x.qualified), x.tier ?? '-']), { 'data-test': 'leaderboard' }) : note(t('leaderboard.empty')));
  }
  show('leaderboard', ...(parts.length ? parts : [note(t('leaderboard.none'))]));
}

async function loadCampaigns() {
  const first = await call('/api/ops/campaigns');
  const programs = first.status === 200 ? first.body.referral_programs : [];
  const results = await Promise.all(programs.map(async (p) => {
    const path = `/api/referrals/programs/${encodeURIComponent(p.program_id)}`;
    const [board, stats] = await Promise.all([call(`${path}/leaderboard?limit=10`), call(`${path}/stats`)]);
    return { id: p.program_id, title: p.title, r: board, stats };
  }));
  // Referral rewards settle when a programme's stats or leaderboard is read: read the review again after them.
  state.data.campaigns = programs.length ? await call('/api/ops/campaigns') : first;
  state.data.leaderboards = results;
  state.data.programStats = Object.fromEntries(results.filter((x) => x.stats.status === 200).map((x) => [x.id, x.stats.body]));
}

// ---------------------------------------------------------------------------------------------- exceptions

function renderExceptions() {
  const r = state.data.exceptions;
  if (!r) return;
  if (r.status !== 200) return failed('exceptions', r);
  const items = r.body.items;
  const due = items.filter((x) => x.refund === 'due');
  const dueFen = due.reduce((sum, x) => sum + x.amount_fen, 0);
  const q = rangeQuery();
  show('exceptions',
    note(t('exceptions.scope', { from: q.get('from') ?? '', to: q.get('to') ?? '' })),
    el('p', { 'data-test': 'exceptions-total', class: due.length ? 'warn' : 'ok',
      text: items.length ? t('exceptions.total', { n: items.length, total: yuan(r.body.total_fen), due: due.length, dueTotal: yuan(dueFen) }) : t('exceptions.none') }),
    items.length ? captioned(t('exceptions.title'),
      [t('ex.recorded'), t('ex.scenario'), t('ex.order'), t('ex.customer'), t('ex.reason'), num(t('ex.amount')), t('ex.state'), t('ex.instruction')],
      items.map((x) => [shanghaiTime(x.recorded_at), label('scenario', x.scenario), x.order_id, x.customer_id, label('reason', x.reason), yuan(x.amount_fen),
        x.refund === 'refunded' ? t('ex.refunded', { at: shanghaiTime(x.refunded_at) }) : el('span', { class: 'bad', text: t('ex.due') }),
        x.refund === 'refunded' ? '-' : t('ex.instruction.text', { amount: yuan(x.amount_fen), event: x.event_id, scenario: x.scenario })]),
      { 'data-test': 'exceptions', class: 'wrap-last' }) : [],
    note(t('exceptions.how')));
}

function renderExpired() {
  const r = state.data.exceptions;
  if (!r) return;
  if (r.status !== 200) return failed('expired', r);
  const x = r.body.expired_reservations;
  const held = x.items.filter((i) => i.state === 'held');
  const released = x.items.length - held.length;
  const q = rangeQuery();
  const button = el('button', { type: 'button', 'data-test': 'release-expired', text: t('expired.release') });
  const result = el('p', { 'data-test': 'release-result', role: 'status', 'aria-live': 'polite', class: 'help', text: state.data.releaseResult ?? '' });
  button.addEventListener('click', () => releaseExpired(button, result));
  show('expired',
    note(t('expired.scope', { from: q.get('from') ?? '', to: q.get('to') ?? '' })),
    el('p', { 'data-test': 'expired-total', class: held.length ? 'warn' : 'ok',
      text: x.items.length ? t('expired.total', { held: held.length, heldTotal: yuan(x.held_fen), released, releasedTotal: yuan(x.released_fen) }) : t('expired.none') }),
    x.items.length ? captioned(t('expired.title'), [t('xp.budget'), t('xp.reservation'), num(t('xp.amount')), t('xp.expired'), t('xp.state')],
      x.items.map((i) => [`${label('bk', i.budget_kind)}: ${i.budget_title}`, i.reservation_id, yuan(i.amount_fen), shanghaiTime(i.expired_at),
        i.state === 'held' ? el('span', { class: 'warn', text: t('xp.held') }) : t('xp.released', { day: i.released_on })]),
      { 'data-test': 'expired', class: 'wrap-first' }) : [],
    el('div', { class: 'actions' }, button), result,
    note(t('expired.how')));
}

/// Gives every budget back what its expired reservations hold, then reloads the view.
async function releaseExpired(button, result) {
  button.disabled = true;
  result.textContent = t('expired.releasing');
  const r = await call('/api/ops/reservations/release-expired', { method: 'POST' });
  state.data.releaseResult = r.status === 200 ? t('expired.released', { n: r.body.released, budgets: r.body.budgets }) : explain(r);
  if (r.status !== 200) {
    result.textContent = state.data.releaseResult;
    button.disabled = false;
    return;
  }
  await loadAll();
}

function renderSettlements() {
  const s = state.data.settlements;
  if (!s) return;
  const rows = s.items.map(({ kind, id, r }) => {
    if (r.status !== 200) return [label('res', kind), id, '-', '-', '-', '-', '-', el('span', { class: 'bad', text: explain(r) })];
    const b = r.body;
    return [label('res', kind), id, count(b.lines.length), yuan(b.total_gross_fen), yuan(b.total_discount_fen), yuan(b.total_customer_paid_fen), yuan(b.ledger_total_fen),
      b.reconciled ? el('span', { class: 'ok', text: t('st.reconciled') }) : el('span', { class: 'bad', text: t('st.not_reconciled') })];
  });
  const wrapper = rows.length ? captioned(t('settlements.title'), [t('st.kind'), t('st.id'), num(t('st.lines')), num(t('st.gross')), num(t('st.discount')), num(t('st.paid')), num(t('st.ledger')), t('st.state')], rows,
    { 'data-test': 'settlements' }) : note(t('settlements.none'));
  if (rows.length) {
    const trs = wrapper.querySelectorAll('tbody tr');
    s.items.forEach((x, i) => { if (x.r.status === 200 && !x.r.body.reconciled) trs[i].classList.add('flagged'); });
  }
  show('settlements', note(t('settlements.scope', { day: s.day })), wrapper, note(t('settlements.not_shown')));
}

async function loadExceptions() {
  state.data.exceptions = await call(`/api/ops/exceptions?${rangeQuery()}`);
  // Statements of the range's last day: every biller (listed publicly) and every community with an owner discount
  // (named by the campaign review); the API lists no other communities nor campus merchants.
  const day = $('#to').value || shanghaiToday();
  const billers = await call('/api/utility/billers', { auth: false });
  const communities = (state.data.campaigns?.body?.scenario_budgets ?? []).filter((b) => b.scenario === 'property').flatMap((b) => b.funds);
  const targets = [...(billers.body?.items ?? []).map((b) => ['biller', b.id, `/api/utility/billers/${encodeURIComponent(b.id)}/settlement`]),
    ...[...new Set(communities)].map((id) => ['community', id, `/api/property/communities/${encodeURIComponent(id)}/settlement`])];
  const items = await Promise.all(targets.map(async ([kind, id, path]) => ({ kind, id, r: await call(`${path}?date=${day}`) })));
  state.data.settlements = { day, items };
}

// ---------------------------------------------------------------------------------------------- ledger

function renderLedger() {
  const r = state.data.ledger;
  if (!r) return;
  if (r.status !== 200) return failed('ledger', r);
  const b = r.body;
  show('ledger',
    el('p', { 'data-test': 'ledger-status', 'data-balanced': String(b.balanced), class: b.balanced ? 'ok' : 'bad',
      text: b.balanced ? t('ledger.balanced', { postings: count(b.postings), accounts: count(b.accounts.length) }) : t('ledger.unbalanced', { n: b.discrepancies.length }) }),
    note(t('ledger.scope', { from: b.from, to: b.to, closed: b.closed_through ?? t('ledger.never'), days: b.days_closed })),
    b.discrepancies.length ? [note(t('ledger.discrepancies')), el('ul', { class: 'bad', lang: 'en' }, b.discrepancies.map((d) => el('li', { text: d })))] : [],
    b.reopened.length ? note(t('ledger.reopened', { days: b.reopened.map((x) => x.day).join(', ') }), 'warn') : [],
    captioned(t('ledger.accounts'), [t('lg.account'), num(t('lg.opening')), num(t('lg.movement')), num(t('lg.stored')), num(t('lg.recomputed'))],
      b.accounts.map((a) => [a.account, yuan(a.opening_fen), yuan(a.movement_fen), yuan(a.stored_fen), yuan(a.recomputed_fen)]), { 'data-test': 'ledger-accounts' }),
    note(t('ledger.how')));
}

// ---------------------------------------------------------------------------------------------- audit

/// The request, and under it what it changed when the server said (e.g. the reason given for unmasking a phone number).
const auditWhat = (e) => (e.summary
  ? el('span', {}, `${e.method} ${e.path}`, el('br'), el('span', { class: 'muted', 'data-test': 'audit-summary', text: t('au.summary', { summary: e.summary }) }))
  : `${e.method} ${e.path}`);

function renderAudit() {
  const r = state.data.audit;
  if (!r) return;
  if (r.status !== 200) return failed('audit-log', r);
  const b = r.body;
  const status = b.intact
    ? el('p', { 'data-test': 'audit-status', class: 'ok', text: t('audit.intact', { n: count(b.total), sealed: b.sealed ? t('audit.sealed') : '' }) })
    : el('div', { 'data-test': 'audit-status', class: 'bad', role: 'alert' }, el('p', { text: t('audit.broken') }),
      el('ul', { lang: 'en' }, b.problems.map((p) => el('li', { text: p }))));
  show('audit-log',
    note(t('audit.scope', { day: b.day })),
    status,
    b.entries.length ? captioned(t('audit.title'), [t('au.time'), t('au.actor'), t('au.what'), num(t('au.status')), t('au.from'), t('xp.state')],
      b.entries.map((e) => [shanghaiTime(e.at), `${e.actor} (${label('akind', e.actor_kind)})`, auditWhat(e), String(e.status), e.from ?? '-',
        e.intact ? t('au.ok') : el('span', { class: 'bad', text: t('au.bad') })]),
      { 'data-test': 'audit', class: 'wrap-first' }) : note(t('audit.none')),
    note(t('audit.how')));
}

// ---------------------------------------------------------------------------------------------- approvals

/// Every scope's pending proposals together, oldest first, each knowing its scope; the scopes that could not be read.
async function loadApprovals() {
  const answers = await Promise.all(APPROVAL_SCOPES.map(async (s) => ({ s, r: await call(`${s.path}?state=pending`) })));
  const items = answers.filter((a) => a.r.status === 200).flatMap(({ s, r }) => r.body.items.map((p) => ({ ...p, scope: s })));
  items.sort((a, b) => Date.parse(a.created_at) - Date.parse(b.created_at));
  state.data.approvals = { items, failed: answers.filter((a) => a.r.status !== 200) };
}

const scopeName = (s) => (s.scope === 'customers' ? t('ap.scope.customers') : label('scenario', s.scope));

/// A coupon campaign by id from the campaign review (when this staff member may read it), its title beside the id.
function campaignOf(id) {
  const c = (state.data.campaigns?.body?.coupon_campaigns ?? []).find((x) => x.campaign_id === id);
  return { name: c?.title ? `${c.title} · ${id}` : id, total: c ? c.issued + c.remaining_stock : null };
}

/// What a proposal would do, in plain words.
function describe(p) {
  const payload = p.payload ?? {};
  switch (p.action) {
    case 'increase_stock': {
      const c = campaignOf(p.resource);
      return t('ap.what.increase_stock', { campaign: c.name, total: count(payload.stock_total), from: c.total === null ? '' : t('ap.what.from', { n: count(c.total) }) });
    }
    case 'register_partner':
      return t('ap.what.register_partner', { kind: t(`ap.kind.${p.scope.scope}`), id: p.resource, name: payload.name ? t('ap.what.name', { name: payload.name }) : '' });
    case 'rotate_secret':
      return t('ap.what.rotate_secret', { scope: scopeName(p.scope), id: p.resource, overlap: duration(Math.round((payload.overlap_secs ?? 86400) / 60)) });
    case 'refund':
      return t('ap.what.refund', { scope: scopeName(p.scope), order: p.resource, amount: yuan(p.value_fen || p.amount_fen) });
    case 'bulk_tags':
      return t(`ap.what.bulk_tags.${payload.action === 'remove' ? 'remove' : 'add'}`, { tag: payload.tag ?? p.resource, n: count(payload.customer_ids?.length) });
    default:
      return t('ap.what.other', { action: label('ap.action', p.action), resource: p.resource });
  }
}

/// What an approved proposal did, from the action's own answer.
function outcome(p, result) {
  const r = result ?? {};
  switch (p.action) {
    case 'increase_stock':
      return t('ap.done.increase_stock', { campaign: campaignOf(p.resource).name, total: count(r.stock_total ?? p.payload?.stock_total), left: count(r.remaining_stock) });
    case 'register_partner': return t('ap.done.register_partner', { kind: t(`ap.kind.${p.scope.scope}`), id: p.resource });
    case 'rotate_secret': return t('ap.done.rotate_secret', { id: p.resource, until: shanghaiTime(r.previous_secret_expires_at) });
    case 'refund': return t('ap.done.refund', { order: p.resource, amount: yuan(p.value_fen || p.amount_fen) });
    case 'bulk_tags': return t('ap.done.bulk_tags', { tag: r.tag ?? p.resource, applied: count(r.applied), skipped: count(r.skipped) });
    default: return describe(p);
  }
}

/// Why this staff member may not approve (or decide at all) a proposal: `{approve, decide}` texts, empty when allowed.
function refusal(p) {
  const me = state.data.me ?? { roles: [] };
  const role = label('role', p.role);
  if (!me.roles.includes(p.role)) {
    const why = t('ap.why.role', { role, roles: rolesText(me) });
    return { approve: why, decide: why };
  }
  return { approve: me.staff_id === p.maker ? t('ap.why.maker', { role }) : '', decide: '' };
}

/// The one-time partner credentials of an approval's answer, with the warning; hidden for good once handed over.
function credentials(o) {
  const hide = el('button', { type: 'button', class: 'secondary', 'data-test': 'credentials-done', text: t('ap.creds.done') });
  hide.addEventListener('click', () => {
    delete o.result.partner_secret;
    renderApprovals();
    $('[data-test=approval-outcome]')?.focus();
  });
  return el('div', { class: 'credentials', 'data-test': 'credentials' },
    el('p', { class: 'warn', text: t('ap.creds.title') }),
    el('p', { text: t('ap.creds.warn') }),
    el('dl', { class: 'facts' },
      el('dt', { text: t('ap.creds.id') }), el('dd', {}, el('code', { 'data-test': 'partner-id', text: o.result.partner_id ?? o.p.resource })),
      el('dt', { text: t('ap.creds.secret') }), el('dd', {}, el('code', { 'data-test': 'partner-secret', text: o.result.partner_secret }))),
    hide);
}

/// The last decision's answer, above the list: what was done (credentials once), or why it was refused.
function outcomeNode() {
  const o = state.data.approvalOutcome;
  if (!o) return [];
  const attrs = { tabindex: '-1', 'data-test': 'approval-outcome' };
  if (o.error) return el('div', { ...attrs, class: 'outcome bad-box', role: 'alert' }, el('p', { text: `${describe(o.p)} ${explain(o.error, 'ap.err')}` }));
  const text = o.verb === 'approve' ? t('ap.done', { what: outcome(o.p, o.result) }) : t(o.withdrawn ? 'ap.withdrawn' : 'ap.rejected', { what: describe(o.p) });
  return el('div', { ...attrs, class: 'outcome ok-box', role: 'status' }, el('p', { text }), o.result?.partner_secret ? credentials(o) : []);
}

/// Approves or rejects a proposal, then reads the lists again; the answer is shown above them.
async function decide(p, verb, buttons) {
  for (const b of buttons) b.disabled = true;
  $('#approvals-message').textContent = t('ap.working');
  const r = await call(`${p.scope.path}/${encodeURIComponent(p.id)}/${verb}`, { method: 'POST' });
  state.data.approvalOutcome = r.status === 200
    ? { p, verb, result: r.body.result, withdrawn: p.maker === state.data.me?.staff_id }
    : { p, verb, error: r };
  await loadApprovals();
  $('#approvals-message').textContent = '';
  renderApprovals();
  $('[data-test=approval-outcome]')?.focus();
}

function approvalCard(p) {
  const why = refusal(p);
  const mine = p.maker === state.data.me?.staff_id;
  const whyId = `why-${p.id}`;
  const approve = el('button', { type: 'button', 'data-test': 'approve', text: t('ap.approve') });
  const reject = el('button', { type: 'button', class: 'secondary', 'data-test': 'reject', text: t(mine ? 'ap.withdraw' : 'ap.reject') });
  const buttons = [approve, reject];
  approve.disabled = Boolean(why.approve);
  reject.disabled = Boolean(why.decide);
  for (const b of buttons) {
    if (b.disabled) b.setAttribute('aria-describedby', whyId);
    b.addEventListener('click', () => decide(p, b === approve ? 'approve' : 'reject', buttons));
  }
  const fact = (name, value) => [el('dt', { text: t(name) }), el('dd', { text: value })];
  return el('article', { class: 'approval', 'data-test': 'approval', 'data-id': p.id, 'aria-labelledby': `title-${p.id}` },
    el('h3', { id: `title-${p.id}`, text: `${label('ap.action', p.action)} · ${scopeName(p.scope)}` }),
    el('p', { 'data-test': 'approval-what', text: describe(p) }),
    el('dl', { class: 'facts' },
      fact('ap.maker', `${p.maker}${mine ? t('ap.you') : ''}`), fact('ap.created', shanghaiTime(p.created_at)),
      fact('ap.expires', shanghaiTime(p.expires_at)), fact('ap.role', label('role', p.role))),
    el('div', { class: 'actions' }, buttons),
    why.approve ? el('p', { id: whyId, class: 'help', 'data-test': 'approval-why', text: why.approve }) : []);
}

function renderApprovals() {
  const a = state.data.approvals;
  if (!a) return;
  show('approvals-list',
    note(t('approvals.how')),
    outcomeNode(),
    a.failed.map(({ s, r }) => el('p', { class: 'bad', role: 'alert', text: t('approvals.failed', { scope: scopeName(s), why: explain(r) }) })),
    el('p', { 'data-test': 'approvals-count', class: a.items.length ? 'warn' : 'ok', text: a.items.length ? t('approvals.count', { n: a.items.length }) : t('approvals.none') }),
    el('div', { class: 'approvals' }, a.items.map(approvalCard)));
}

// ---------------------------------------------------------------------------------------------- customers

/// Whether the signed-in staff member holds `role` (the break-glass token holds every role).
const holds = (role) => Boolean(state.data.me?.roles.includes(role));
/// The signed-in staff member's roles in words.
const rolesText = (me = state.data.me) => (me?.roles ?? []).map((r) => label('role', r)).join(t('list.sep')) || '-';
/// Why this staff member may not do something that needs `role` ('' when they may).
const lacking = (role, action) => (holds(role) ? '' : t('cu.why.role', { action: t(action), role: label('role', role), roles: rolesText() }));

/// The customer on screen: `{id, r}` of the last look-up, the drafts typed, the unmasked number while shown.
const customer = () => state.data.customer;

/// Hides an unmasked phone number (leaving the view, 60 s after it was shown, a new look-up, signing out).
function hideUnmasked() {
  const c = customer();
  if (!c?.unmasked) return;
  clearTimeout(c.unmasked.timer);
  delete c.unmasked;
  renderCustomer();
}

async function lookUpCustomer(event) {
  event?.preventDefault();
  const id = $('#customer-id').value.trim();
  const problem = !id ? 'cu.id.empty' : CUSTOMER_ID.test(id) ? '' : 'cu.id.invalid';
  fieldError('customer-id', problem ? t(problem) : '');
  if (problem) { $('#customer-id').focus(); return; }
  hideUnmasked();
  $('#customer-message').textContent = t('loading');
  const r = await call(`/api/ops/customers/${encodeURIComponent(id)}`);
  state.data.customer = { id, r, reason: '', tag: '' };
  $('#customer-message').textContent = '';
  renderCustomer();
}

/// Adds or removes an operator tag; the answer is the profile as it now is.
async function changeTag(tag, add) {
  const c = customer();
  const path = `/api/ops/customers/${encodeURIComponent(c.id)}/tags`;
  $('#customer-message').textContent = t('ap.working');
  const r = add ? await call(path, { method: 'POST', body: { tag } }) : await call(`${path}/${encodeURIComponent(tag)}`, { method: 'DELETE' });
  $('#customer-message').textContent = r.status === 200 ? t(add ? 'cu.tags.added' : 'cu.tags.removed', { tag }) : '';
  if (r.status === 200) Object.assign(c, { r, tag: add ? '' : c.tag, tagError: null });
  else c.tagError = explain(r, 'cu.tags.err');
  renderCustomer();
  $(add ? '#tag-new' : '[data-test=customer-tags]')?.focus();
}

async function unmask() {
  const c = customer();
  const reason = c.reason.trim();
  $('#customer-message').textContent = t('ap.working');
  const r = await call(`/api/ops/customers/${encodeURIComponent(c.id)}/unmask`, { method: 'POST', body: { field: 'phone', reason } });
  $('#customer-message').textContent = '';
  if (r.status === 200) {
    clearTimeout(c.unmasked?.timer);
    c.unmasked = { ...r.body, timer: setTimeout(hideUnmasked, UNMASK_SHOWN_MS) };
    c.reason = '';
    c.unmaskError = null;
  } else c.unmaskError = explain(r, 'cu.unmask.err');
  renderCustomer();
  $('[data-test=unmask-result], [data-test=unmask-error]')?.focus();
}

/// Where the customer came from: channel, code and when.
const touchText = (touch) => (touch
  ? t('cu.touch', { channel: label('channel', touch.channel), code: touch.code, at: shanghaiTime(touch.at) })
  : t('none.short'));

/// Whether profile-based offers may reach the customer, and the choice they made.
function consentText(p) {
  if (p.erased_at) return t('cu.consent.erased');
  const choice = p.marketing_consent;
  if (!choice) return t('cu.consent.never');
  return t(choice.granted ? 'cu.consent.granted' : 'cu.consent.withdrawn', { at: shanghaiTime(choice.at) });
}

/// Operator tags, each removable, and a field to add one (marketing); automatic tags are only shown.
function tagsNode(p) {
  const c = customer();
  const why = lacking('marketing', 'cu.tags.action');
  const describedBy = why ? { 'aria-describedby': 'tags-why' } : {};
  const chips = p.operator_tags.map((tag) => {
    const remove = el('button', { type: 'button', class: 'secondary', 'data-test': 'remove-tag', 'data-tag': tag,
      'aria-label': t('cu.tags.remove', { tag }), text: '×', ...describedBy });
    remove.disabled = Boolean(why);
    remove.addEventListener('click', () => changeTag(tag, false));
    return el('li', { class: 'tag' }, el('span', { text: tag }), remove);
  });
  const input = el('input', { id: 'tag-new', type: 'text', autocomplete: 'off', spellcheck: 'false', maxlength: '32', size: '20',
    'aria-describedby': `tag-help tag-error${why ? ' tags-why' : ''}`, 'aria-invalid': c.tagError ? 'true' : 'false' });
  input.value = c.tag;
  input.disabled = Boolean(why);
  input.addEventListener('input', () => { c.tag = input.value; });
  const add = el('button', { type: 'submit', 'data-test': 'add-tag', text: t('cu.tags.add'), ...describedBy });
  add.disabled = Boolean(why);
  const form = el('form', { class: 'filters', novalidate: '' },
    el('div', { class: 'field' }, el('label', { for: 'tag-new', text: t('cu.tags.new') }), input,
      el('p', { id: 'tag-error', class: 'field-error', role: 'alert', 'data-test': 'tag-error', text: c.tagError ?? '' })),
    el('div', { class: 'field actions' }, add),
    el('p', { id: 'tag-help', class: 'help full', text: t('cu.tags.help') }));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const tag = input.value.trim();
    if (!OPERATOR_TAG.test(tag)) {
      c.tagError = t('cu.tags.invalid');
      renderCustomer();
      $('#tag-new').focus();
      return;
    }
    changeTag(tag, true);
  });
  return [
    el('h3', { text: t('cu.tags') }),
    el('dl', { class: 'facts' },
      el('dt', { text: t('cu.tags.auto') }),
      el('dd', { 'data-test': 'auto-tags', text: p.tags.length ? p.tags.map((tag) => label('autotag', tag)).join(t('list.sep')) : t('none.short') }),
      el('dt', { text: t('cu.tags.operator') }),
      el('dd', {}, chips.length ? el('ul', { class: 'tags', 'data-test': 'customer-tags', tabindex: '-1' }, chips)
        : el('span', { 'data-test': 'customer-tags', tabindex: '-1', text: t('cu.tags.none') }))),
    form,
    why ? el('p', { id: 'tags-why', class: 'help', 'data-test': 'tags-why', text: why }) : [],
  ];
}

/// The full phone number for a reason that is logged (finance), or the number as shown once given, with the reason.
function unmaskNode(p) {
  const c = customer();
  if (!p.phone_masked) return [el('h3', { text: t('cu.unmask.title') }), note(t('cu.unmask.no_phone'))];
  if (c.unmasked) {
    const u = c.unmasked;
    const hide = el('button', { type: 'button', class: 'secondary', 'data-test': 'unmask-hide', text: t('cu.unmask.hide') });
    hide.addEventListener('click', () => { hideUnmasked(); $('#unmask-reason')?.focus(); });
    return [el('h3', { text: t('cu.unmask.title') }),
      el('div', { class: 'credentials', 'data-test': 'unmask-result', tabindex: '-1', role: 'status' },
        el('dl', { class: 'facts' },
          el('dt', { text: t('cu.phone.full') }), el('dd', {}, el('code', { 'data-test': 'unmask-value', text: u.value })),
          el('dt', { text: t('cu.unmask.reason.logged') }), el('dd', { 'data-test': 'unmask-reason-logged', text: u.reason }),
          el('dt', { text: t('cu.unmask.logged_at') }), el('dd', { 'data-test': 'unmask-logged-at', text: shanghaiTime(u.logged_at) })),
        el('p', { class: 'help', text: t('cu.unmask.hides', { s: UNMASK_SHOWN_MS / 1000 }) }),
        hide)];
  }
  const why = lacking('finance', 'cu.unmask.action');
  const field = el('input', { id: 'unmask-reason', type: 'text', autocomplete: 'off', maxlength: '200', size: '40',
    'aria-describedby': `unmask-help${why ? ' unmask-why' : ''}` });
  field.value = c.reason;
  field.disabled = Boolean(why);
  const button = el('button', { type: 'submit', 'data-test': 'unmask', text: t('cu.unmask.button'), 'aria-describedby': why ? 'unmask-why' : 'unmask-help' });
  const ready = () => { button.disabled = Boolean(why) || c.reason.trim().length < UNMASK_REASON_MIN; };
  ready();
  field.addEventListener('input', () => { c.reason = field.value; ready(); });
  const form = el('form', { class: 'filters', novalidate: '' },
    el('div', { class: 'field grow' }, el('label', { for: 'unmask-reason', text: t('cu.unmask.reason') }), field),
    el('div', { class: 'field actions' }, button),
    el('p', { id: 'unmask-help', class: 'help full', text: t('cu.unmask.help', { min: UNMASK_REASON_MIN }) }));
  form.addEventListener('submit', (e) => { e.preventDefault(); if (!button.disabled) unmask(); });
  return [el('h3', { text: t('cu.unmask.title') }), form,
    why ? el('p', { id: 'unmask-why', class: 'help', 'data-test': 'unmask-why', text: why }) : [],
    c.unmaskError ? el('p', { class: 'bad', role: 'alert', tabindex: '-1', 'data-test': 'unmask-error', text: c.unmaskError }) : []];
}

function renderCustomer() {
  const c = customer();
  if (!c) return show('customer');
  if (c.r.status !== 200) return show('customer', el('p', { class: 'bad', role: 'alert', 'data-test': 'customer-error', text: explain(c.r, 'cu.err') }));
  const p = c.r.body;
  const fact = (name, value, test) => [el('dt', { text: t(name) }), el('dd', { ...(test ? { 'data-test': test } : {}) }, value)];
  const identities = p.identities.length
    ? el('ul', { class: 'plain' }, p.identities.map((i) => el('li', { text: t('cu.identity', { provider: label('provider', i.provider), subject: i.subject_masked, at: shanghaiTime(i.linked_at) }) })))
    : t('none.short');
  show('customer',
    p.erased_at ? el('p', { class: 'outcome bad-box', 'data-test': 'customer-erased', text: t('cu.erased', { at: shanghaiTime(p.erased_at) }) }) : [],
    el('dl', { class: 'facts', 'data-test': 'customer-facts' },
      fact('cu.id', el('code', { text: p.customer_id })),
      fact('cu.created', shanghaiTime(p.created_at)),
      fact('cu.phone', p.phone_masked ?? t('none.short'), 'customer-phone'),
      fact('cu.identities', identities, 'customer-identities'),
      fact('cu.stage', label('stage', p.lifecycle.stage), 'customer-stage'),
      fact('cu.first_touch', touchText(p.first_touch)),
      fact('cu.last_touch', touchText(p.last_touch)),
      fact('cu.activated', p.activated_at ? shanghaiTime(p.activated_at) : t('none.short')),
      fact('cu.last_activity', p.last_activity_at ? shanghaiTime(p.last_activity_at) : t('none.short')),
      fact('cu.referral_code', p.referral_code ?? t('none.short')),
      fact('cu.consent', consentText(p), 'customer-consent')),
    el('h3', { text: t('cu.history') }),
    p.lifecycle.history.length ? captioned(t('cu.history'), [t('cu.history.stage'), t('cu.history.at')],
      p.lifecycle.history.map((h) => [label('stage', h.stage), shanghaiTime(h.at)]), { 'data-test': 'stage-history' }) : note(t('cu.history.none')),
    tagsNode(p),
    unmaskNode(p),
    note(t('cu.how')));
}

// ---------------------------------------------------------------------------------------------- partner events

/// Every scenario's partner feeds together, each knowing its scenario; the scenarios that could not be read.
async function loadFeeds() {
  const answers = await Promise.all(FEED_SCENARIOS.map(async (scenario) => ({ scenario, r: await call(`/api/${scenario}/partners/feeds`) })));
  const items = answers.filter((a) => a.r.status === 200).flatMap(({ scenario, r }) => r.body.items.map((f) => ({ ...f, scenario })));
  state.data.feeds = { items, failed: answers.filter((a) => a.r.status !== 200) };
}

/// How long ago an instant was, in words ("3 分钟前").
const ago = (iso) => t('fd.ago', { age: duration(Math.max(0, Math.floor((Date.now() - Date.parse(iso)) / 60000))) });

/// How far the partner has read: how many events behind and since when it last read (or never), or all of it.
function lagNode(f) {
  const read = f.acknowledged_at ? t('fd.read_at', { at: shanghaiTime(f.acknowledged_at), age: ago(f.acknowledged_at) }) : t('fd.never');
  if (f.lag > 0) return el('span', { class: 'warn', text: t('fd.behind', { n: count(f.lag), read }) });
  return f.acknowledged_at ? el('span', { class: 'ok', text: `${t('fd.caught_up')} · ${read}` }) : el('span', { class: 'muted', text: read });
}

/// The webhook: none, removed, failing since when (next attempt, last error) or healthy (events still to push).
function webhookNode(w) {
  if (!w) return el('span', { class: 'muted', text: t('fd.wh.none') });
  if (!w.active) return el('span', { class: 'muted', text: t('fd.wh.removed') });
  if (w.failing_since) {
    return el('span', {}, el('span', { class: 'bad', text: t('fd.wh.failing', { since: shanghaiTime(w.failing_since) }) }), el('br'),
      el('small', { class: 'help', text: w.next_attempt_at ? t('fd.wh.next', { at: shanghaiTime(w.next_attempt_at), attempts: count(w.attempts) }) : t('fd.wh.no_next') }),
      w.last_error ? [el('br'), el('small', { class: 'help', text: t('fd.wh.error', { error: w.last_error }) })] : []);
  }
  return el('span', {}, el('span', { class: 'ok', text: w.lag > 0 ? t('fd.wh.pending', { n: count(w.lag) }) : t('fd.wh.healthy') }), el('br'),
    el('small', { class: 'help', text: w.url }));
}

const partnerName = (f) => `${label('pk', f.kind)} ${f.resource_id}`;
const unreplayed = (w) => (w?.failed ?? []).filter((d) => !d.replayed_at).length;

/// A webhook's deliveries given up on and its latest attempts, folded away under the table.
function deliveriesNode(f) {
  const w = f.webhook;
  const name = partnerName(f);
  return el('details', { class: 'deliveries', 'data-test': 'deliveries', 'data-resource': f.resource_id },
    el('summary', { text: t('fd.deliveries', { partner: name, failed: count(w.failed.length), recent: count(w.recent.length) }) }),
    el('h3', { text: t('fd.failed.title') }),
    w.failed.length ? captioned(t('fd.failed.caption', { partner: name }),
      [t('fd.event'), num(t('fd.attempts')), t('fd.last_error'), t('fd.gave_up'), t('fd.replayed')],
      w.failed.map((d) => [d.event_id, count(d.attempts), d.last_error ?? '-', shanghaiTime(d.gave_up_at),
        d.replayed_at ? t('fd.replayed.at', { at: shanghaiTime(d.replayed_at) }) : el('span', { class: 'warn', text: t('fd.replayed.no') })]),
      { 'data-test': 'failed-deliveries', class: 'wrap-last' }) : note(t('fd.failed.none')),
    el('h3', { text: t('fd.recent.title') }),
    w.recent.length ? captioned(t('fd.recent.caption', { partner: name }),
      [t('fd.at'), t('fd.event'), num(t('fd.attempt')), t('fd.result')],
      w.recent.map((a) => [shanghaiTime(a.at), `${a.event_id}${a.replay ? t('fd.replay') : ''}`, count(a.attempt),
        a.ok ? el('span', { class: 'ok', text: t('fd.ok', { status: a.status }) })
          : el('span', { class: 'bad', text: a.error ?? t('fd.status', { status: a.status }) })]),
      { 'data-test': 'recent-attempts', class: 'wrap-last' }) : note(t('fd.recent.none')));
}

function renderFeeds() {
  const f = state.data.feeds;
  if (!f) return;
  const failing = f.items.filter((x) => x.webhook?.failing_since || unreplayed(x.webhook) > 0);
  const lagging = f.items.filter((x) => x.lag > 0);
  const wrapper = f.items.length ? captioned(t('feeds.title'),
    [t('fd.scenario'), t('fd.partner'), num(t('fd.appended')), num(t('fd.acknowledged')), t('fd.lag'), t('fd.webhook'), num(t('fd.failed'))],
    f.items.map((x) => [label('scenario', x.scenario), el('span', {}, partnerName(x), el('br'), el('small', { class: 'help', text: x.partner_id })),
      count(x.appended), count(x.acknowledged), lagNode(x), webhookNode(x.webhook),
      x.webhook ? el('span', { class: unreplayed(x.webhook) ? 'bad' : '', text: count(x.webhook.failed.length) }) : '-']),
    { 'data-test': 'feeds' }) : note(f.failed.length ? '' : t('feeds.none'));
  if (f.items.length) {
    const trs = wrapper.querySelectorAll('tbody tr');
    f.items.forEach((x, i) => {
      trs[i].dataset.resource = x.resource_id;
      if (failing.includes(x)) trs[i].classList.add('flagged');
    });
  }
  const withWebhook = f.items.filter((x) => x.webhook);
  show('feeds',
    note(t('feeds.how')),
    f.failed.map(({ scenario, r }) => el('p', { class: 'bad', role: 'alert', text: t('feeds.failed', { scope: label('scenario', scenario), why: explain(r) }) })),
    f.items.length ? el('p', { 'data-test': 'feeds-count', class: lagging.length || failing.length ? 'warn' : 'ok',
      text: t('feeds.count', { n: f.items.length, lagging: lagging.length, failing: failing.length }) }) : [],
    wrapper,
    withWebhook.length ? [el('h3', { text: t('fd.deliveries.title') }), ...withWebhook.map(deliveriesNode)] : []);
}

// ---------------------------------------------------------------------------------------------- page

/// Who is signed in, beside the sign-out button: a staff member's name and roles, or the break-glass warning.
function renderWho() {
  const me = state.data.me;
  const who = $('#who');
  who.hidden = !me;
  if (!me) return;
  who.textContent = me.kind === 'break_glass' ? t('who.break_glass') : t('who.staff', { name: me.name, roles: rolesText(me) });
  who.className = me.kind === 'break_glass' ? 'who warn-box' : 'who';
}

function renderAll() {
  renderWho();
  renderFunnel(); renderLifecycle(); renderChannels(); renderCampaigns(); renderLeaderboard(); renderExceptions(); renderExpired(); renderSettlements(); renderLedger(); renderAudit(); renderApprovals(); renderCustomer(); renderFeeds();
  if (state.data.loadedAt) $('#message').textContent = t('loaded', { at: shanghaiTime(state.data.loadedAt) });
}

function showView(view) {
  state.view = VIEWS.includes(view) ? view : 'overview';
  if (state.view !== 'customers') hideUnmasked();
  for (const v of VIEWS) {
    $(`#${v}`).hidden = v !== state.view;
    const tab = $(`#tab-${v}`);
    tab.setAttribute('aria-selected', String(v === state.view));
    tab.tabIndex = v === state.view ? 0 : -1;
  }
}

function signedIn(on) {
  $('#login').hidden = on;
  $('#app').hidden = !on;
  $('#sign-out').hidden = !on;
}

async function loadAll() {
  clearRangeErrors();
  const problem = rangeProblem($('#from').value, $('#to').value);
  if (problem) {
    fieldError(problem.field, t(problem.key, problem.vars));
    $('#message').textContent = t('range.fix');
    $(`#${problem.field}`).focus();
    return;
  }
  $('#message').textContent = t('loading');
  const q = rangeQuery();
  const auditDay = $('#to').value || shanghaiToday();
  const [channels, lifecycle, ledger, audit] = await Promise.all([
    call(`/api/ops/channels?${q}`), call(`/api/ops/lifecycle?${q}`), call(`/api/ops/ledger/check?${q}`),
    call(`/api/ops/audit?day=${auditDay}`), loadCampaigns(), loadApprovals(), loadFeeds()]);
  Object.assign(state.data, { channels, lifecycle, ledger, audit });
  funnelOptions();
  await Promise.all([loadFunnel(), loadExceptions()]);
  state.data.loadedAt = new Date().toISOString();
  renderAll();
  document.body.dataset.loaded = String(Date.now());
}

async function signIn(event) {
  event?.preventDefault();
  const token = $('#token').value.trim();
  $('#token-error').textContent = '';
  if (!token) { $('#token-error').textContent = t('login.empty'); $('#token').focus(); return; }
  state.token = token;
  // Who the token acts as (any staff role, or break-glass): a staff member without the viewer role still signs in.
  const check = await call('/api/staff/me');
  if (check.status !== 200) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    $('#token-error').textContent = explain(check);
    $('#token').setAttribute('aria-invalid', 'true');
    signedIn(false);
    return;
  }
  $('#token').setAttribute('aria-invalid', 'false');
  state.data.me = check.body;
  renderWho();
  sessionStorage.setItem(TOKEN_KEY, token);
  $('#token').value = '';
  signedIn(true);
  await loadAll();
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  hideUnmasked();
  state.data = {};
  renderWho();
  for (const id of ['funnel', 'lifecycle', 'channels', 'campaigns', 'leaderboard', 'exceptions', 'expired', 'settlements', 'ledger', 'audit-log', 'approvals-list', 'customer', 'feeds']) show(id);
  $('#customer-id').value = '';
  fieldError('customer-id');
  delete document.body.dataset.loaded;
  signedIn(false);
  $('#token-error').textContent = '';
  $('#message').textContent = '';
  $('#token').focus();
}

function init() {
  $('#lang').replaceChildren(langSwitch());
  applyStatic();
  const today = shanghaiToday();
  $('#to').value = today;
  $('#from').value = dayOf(dayNumber(today) - 29);
  $('#to').max = dayOf(dayNumber(today) + 1);
  $('#token-form').addEventListener('submit', signIn);
  $('#range-form').addEventListener('submit', (e) => { e.preventDefault(); loadAll(); });
  for (const f of ['from', 'to']) $(`#${f}`).addEventListener('change', () => {
    clearRangeErrors();
    const problem = rangeProblem($('#from').value, $('#to').value);
    if (problem) fieldError(problem.field, t(problem.key, problem.vars));
  });
  $('#sign-out').addEventListener('click', signOut);
  $('#customer-form').addEventListener('submit', lookUpCustomer);
  $('#funnel-by').addEventListener('change', async () => { funnelOptions(); await loadFunnel(); });
  $('#funnel-value').addEventListener('change', loadFunnel);
  const tabs = [...document.querySelectorAll('[role=tab]')];
  for (const tab of tabs) {
    tab.addEventListener('click', () => showView(tab.dataset.view));
    tab.addEventListener('keydown', (e) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
      if (!step) return;
      const next = tabs[(tabs.indexOf(tab) + step + tabs.length) % tabs.length];
      showView(next.dataset.view);
      next.focus();
    });
  }
  document.addEventListener('langchange', () => {
    document.title = t('page.title');
    funnelOptions();
    renderAll();
    const problem = rangeProblem($('#from').value, $('#to').value);
    clearRangeErrors();
    if (problem) fieldError(problem.field, t(problem.key, problem.vars));
  });
  document.title = t('page.title');
  showView('overview');
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) { $('#token').value = saved; signIn(); } else signedIn(false);
}

init();
