// Seeds demo data through the real APIs: a water biller with bills, a campus school with cards, coupon campaigns (a
// coffee shop's, one usable on bills, a check-in streak), a community with rooms and fee bills, and a referral
// programme. Used by `cargo xtask up --demo` and by the browser tests.
// Usage: node seed.mjs <base url> <operator token>. Safe to run again: what exists already is left alone.
import { createHash, createHmac, randomBytes } from 'node:crypto';

const [base, operatorToken] = process.argv.slice(2);
if (!base || !operatorToken) {
  console.error('usage: node seed.mjs <base url> <operator token>');
  process.exit(2);
}

async function call(method, path, body, headers = {}) {
  const text = body === undefined ? undefined : JSON.stringify(body);
  const res = await fetch(`${base}${path}`, { method, headers: { 'content-type': 'application/json', ...headers }, body: text });
  const reply = await res.text();
  return { status: res.status, body: reply ? JSON.parse(reply) : null };
}

const operator = (method, path, body) => call(method, path, body, { authorization: `Bearer ${operatorToken}` });

/// A partner call signed as the brief says: HMAC-SHA256 over METHOD, PATH_AND_QUERY, TIMESTAMP, NONCE, hex(SHA256(body)).
function partner(creds, method, path, body) {
  const text = body === undefined ? '' : JSON.stringify(body);
  const timestamp = String(Math.floor(Date.now() / 1000));
  const nonce = randomBytes(12).toString('hex');
  const digest = createHash('sha256').update(text).digest('hex');
  const signature = createHmac('sha256', creds.partner_secret)
    .update(`${method}\n${path}\n${timestamp}\n${nonce}\n${digest}`).digest('hex');
  return call(method, path, body, { 'x-partner-id': creds.partner_id, 'x-timestamp': timestamp, 'x-nonce': nonce, 'x-signature': signature });
}

function expect(r, what, ok = [200, 201]) {
  if (ok.includes(r.status)) return r.body;
  if (r.status === 409) { console.log(`${what}: exists already`); return null; }
  throw new Error(`${what}: ${r.status} ${JSON.stringify(r.body)}`);
}

const schedule = { starts_at: '2026-01-01T00:00:00+08:00', ends_at: '2028-01-01T00:00:00+08:00' };

const water = expect(await operator('POST', '/api/utility/billers', {
  id: 'demo_water', name: 'Demo Water', category: 'water', city: 'shenzhen',
  account_rule: { min_len: 10, max_len: 10, charset: 'digits' }, exactness: 'exact',
  settlement_account: '6222000012345678',
  discount: { percent_bp: 500, cap_fen: 1000, budget_id: 'demo_water_card', budget_fen: 100000 },
}), 'biller');
if (water) {
  const bills = ['8800112233', '8800112234', '8800112235', '8800112236'].map((account, i) => ({
    bill_id: `DW-2026-11-${i}`, account_no: account, period: '2026-11', amount_fen: 12500 + 1000 * i,
    due_date: '2027-01-31', holder_name: ['鲍勃', '爱丽丝', '卡罗尔', '戴夫'][i],
  }));
  expect(await partner(water, 'PUT', '/api/utility/billers/demo_water/bills', { bills }), 'bills');
}

const school = expect(await operator('POST', '/api/campus/schools', {
  id: 'demo_school', name: '示范大学', topup_bonus: { percent_bp: 200, cap_fen: 500, budget_id: 'demo_bonus', budget_fen: 100000 },
}), 'school');
if (school) {
  const members = ['D001', 'D002', 'D003', 'D004'].map((no, i) => ({
    member_no: no, kind: i < 3 ? 'student' : 'staff', name: ['Bob', 'Alice', 'Carol', 'Dave'][i],
    valid_until: '2027-07-31', activation_code: `11111${i + 1}`,
  }));
  expect(await partner(school, 'PUT', '/api/campus/schools/demo_school/members', { members }), 'members');
}

expect(await operator('POST', '/api/coupons/merchants', {
  merchant_id: 'demo_cafe', name: 'Demo Cafe', district: 'nanshan', stores: [{ store_id: 's1', name: 'Main' }],
}), 'merchant');
expect(await operator('POST', '/api/coupons/campaigns', {
  id: 'demo_coffee', title: '¥5 off coffee', kind: 'daily', merchant_ids: ['demo_cafe'],
  coupon: { type: 'fixed_off', amount_fen: 500, min_spend_fen: 1500 }, validity: { days_after_claim: 7 },
  schedule, stock_total: 100, budget_fen: 50000,
}), 'campaign');
expect(await operator('POST', '/api/coupons/campaigns', {
  id: 'demo_bill', title: '生活缴费立减 ¥3', kind: 'daily', merchant_ids: ['demo_cafe'],
  coupon: { type: 'fixed_off', amount_fen: 300, min_spend_fen: 5000 }, validity: { days_after_claim: 7 },
  schedule, stock_total: 1000, budget_fen: 100000, applies_to: ['merchant', 'utility', 'property'],
}), 'bill coupon campaign');
expect(await operator('POST', '/api/coupons/campaigns', {
  id: 'demo_checkin', title: '签到礼 ¥2 咖啡券', kind: 'checkin', merchant_ids: ['demo_cafe'],
  coupon: { type: 'fixed_off', amount_fen: 200, min_spend_fen: 1000 }, validity: { days_after_claim: 7 },
  schedule, stock_total: 1000, budget_fen: 50000, checkin_streaks: [1, 3, 7],
}), 'check-in campaign');

const garden = expect(await operator('POST', '/api/property/communities', {
  id: 'demo_garden', name: '示范花园', city: '深圳', property_company: '示范物业', settlement_account: '6222000099990001',
  owner_discount: { percent_bp: 200, cap_fen: 2000, budget_id: 'demo_garden_owner', budget_fen: 100000 },
  prepay: { months: 6, free_months: 1 }, late_fee: { late_fee_bp_per_day: 5, grace_days: 15, cap_bp: 1000 },
}), 'community');
if (garden) {
  const rooms = [['A1-1201', '1201', '王芳'], ['A1-1202', '1202', '张三丰'], ['A1-1203', '1203', '李娜']].map(([room_id, number, owner_name]) => ({
    room_id, building: 'A1', unit: '1', number, owner_name, area_m2: 89.5, monthly_fee_fen: 26850,
  }));
  expect(await partner(garden, 'PUT', '/api/property/communities/demo_garden/rooms', { rooms }), 'rooms');
  const bills = rooms.flatMap((r) => [
    { bill_id: `DG-2026-11-P-${r.number}`, room_id: r.room_id, cost_type: 'property', period: '2026-11', amount_fen: 26850, due_date: '2027-01-31' },
    { bill_id: `DG-2026-11-C-${r.number}`, room_id: r.room_id, cost_type: 'parking', period: '2026-11', amount_fen: 15000, due_date: '2027-01-31' },
  ]);
  expect(await partner(garden, 'PUT', '/api/property/communities/demo_garden/bills', { bills }), 'fee bills');
}

expect(await operator('POST', '/api/referrals/programs', {
  id: 'demo_friends', title: 'Bring a friend',
  qualifying: { event: 'first_payment', min_amount_fen: 1000, within_days: 30 }, holding_days: 7,
  tiers: [{ min_qualified: 1, reward_per_referral: { kind: 'cash_fen', amount: 500 } },
    { min_qualified: 3, reward_per_referral: { kind: 'cash_fen', amount: 800 }, tier_bonus: { kind: 'cash_fen', amount: 1000 } }],
  max_rewarded_per_referrer: 50, budget_fen: 100000, schedule,
}), 'referral program');

console.log('demo data seeded: water accounts 8800112233-36, campus cards D001-D004 (codes 111111-111114), community demo_garden rooms A1-1201..1203 (owners 王芳, 张三丰, 李娜), campaigns demo_coffee, demo_bill, demo_checkin, programme demo_friends');
