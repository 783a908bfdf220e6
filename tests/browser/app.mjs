// The customer's mini-program (/app) as a customer uses it on a phone (390×844) in headless Chromium (Debian's,
// through playwright-core), in Chinese and in English: log in (a friend's code, a stale promotion link, a mistyped
// code), pay a water bill with a coupon (a double tap places one order), coupons and check-in, the campus card (bind,
// top-up, pay code, report lost, transactions), privacy (profile-based offers off and on, a download of one's data
// with the staff look-ups, erasure after a confirmation), property fees (claim, prepay, an order whose answer is lost
// and a reload), referral progress; coupons and the campus card again in English by a new customer, every screen checked
// for Chinese page text, untranslated keys and raw problem codes. Asserts what the person sees; fails on any page error
// and any console error but the API's own 4xx answers the page explains; saves screenshots.
// Usage: node app.mjs <base url> <operator token> <artefact dir>
// Every request outside the app's origin is aborted, so the page is proven to work with the network off.
import { args, harness } from './harness.mjs';

const { base, operatorToken, out } = args('app.mjs');
const { check, newPage: harnessPage, run, failures } = await harness(base);
let lostAnswers = false; // while true, the page is expected to see failed requests (the lost-answer test)

/// A phone-sized page in `lang`. Chromium logs every 4xx fetch; those are the API's answers the page turns into plain
/// words (checked below), so they are excused, and failed requests only while answers are being lost on purpose.
function newPage(lang) {
  return harnessPage({
    viewport: { width: 390, height: 844 },
    // The language a person chose before: set once per tab, so a reload keeps what the page switched to.
    init: (context) => context.addInitScript((code) => {
      if (!sessionStorage.getItem('test.lang')) { localStorage.setItem('scenefin.lang', code); sessionStorage.setItem('test.lang', code); }
    }, lang),
    allow: (text) => /^Failed to load resource: the server responded with a status of 4\d\d/.test(text)
      || (lostAnswers && /^Failed to load resource: net::ERR_FAILED/.test(text)),
  });
}

const squash = (s) => (s ?? '').replace(/\s+/g, ' ').trim();
const text = async (page, selector) => squash(await page.locator(selector).first().textContent());
/// GET `path` with the page's own customer session (or `token`): {status, body}.
const asCustomer = (page, path, token) => page.evaluate(async ([p, tk]) => {
  const r = await fetch(p, { headers: { authorization: `Bearer ${tk ?? sessionStorage.getItem('scenefin.session')}` } });
  return { status: r.status, body: await r.json() };
}, [path, token]);

/// Waits until the element's text contains `want`, then records the check (with what was there if it never did).
async function sees(page, selector, want, what) {
  try {
    await page.waitForFunction(([s, w]) => [...document.querySelectorAll(s)].some((n) => n.textContent.includes(w)), [selector, want], { timeout: 10000 });
    check(true, `${what}: "${want}"`);
  } catch {
    const all = await page.locator(selector).allTextContents().catch(() => []);
    check(false, `${what}: "${want}" not in ${selector} (${all.map(squash).join(' | ') || 'nothing'})`);
  }
}

/// Every visible field has a label, nothing goes sideways at 390 px, and the keyboard focus is drawn.
async function usable(page, what) {
  const r = await page.evaluate(() => ({
    unlabeled: [...document.querySelectorAll('input, select, textarea')]
      .filter((n) => n.checkVisibility() && !n.labels?.length && !n.getAttribute('aria-label')).map((n) => n.id || n.outerHTML.slice(0, 40)),
    overflow: document.documentElement.scrollWidth - window.innerWidth,
  }));
  check(r.unlabeled.length === 0, `${what}: every field has a label (${r.unlabeled.join(', ')})`);
  check(r.overflow <= 1, `${what}: nothing goes sideways at 390 px (${r.overflow}px)`);
  await page.keyboard.press('Shift+Tab');
  const outline = await page.evaluate(() => {
    const s = getComputedStyle(document.activeElement);
    return document.activeElement === document.body || s.outlineStyle === 'none' ? 0 : parseFloat(s.outlineWidth);
  });
  check(outline >= 2, `${what}: the focused control shows an outline (${outline}px)`);
}

async function shot(page, name) {
  await page.screenshot({ path: `${out}/app-${name}.png`, fullPage: true });
}

async function login(page, persona, { path = '/app', referral } = {}) {
  await page.goto(`${base}${path}`);
  await page.waitForSelector('body[data-ready]');
  await page.selectOption('#persona', persona);
  if (referral !== undefined) await page.fill('#referral-code', referral);
  await page.click('#login-button');
  await page.waitForSelector('[data-test=customer]');
  await page.waitForSelector('body[data-ready]');
}

async function tab(page, name) {
  await page.click(`#tab-${name}`);
  await page.waitForSelector(`#panel-${name}:not([hidden])`);
}

/// The customer's orders of a scenario as the server has them (through the page's own session).
const serverOrders = async (page, scenario) => (await asCustomer(page, `/api/${scenario}/orders`)).body.items;

/// The Idempotency-Key of every POST to `path` the page sends from now on.
function countPosts(page, path) {
  const posts = [];
  page.on('request', (r) => {
    if (r.method() === 'POST' && new URL(r.url()).pathname === path) posts.push(r.headers()['idempotency-key']);
  });
  return posts;
}

/// Binds the demo school's card `memberNo`, first with a wrong activation code (explained beside the form in `wrong`,
/// no raw problem code; `explained()` then looks on), then with its `code`.
async function bindCard(page, memberNo, code, wrong, explained = async () => {}) {
  await page.fill('#member-no', memberNo);
  await page.fill('#activation', '999999');
  await page.click('#card-form button[type=submit]');
  await sees(page, '#card-error', wrong, 'a wrong activation code is explained beside the form');
  check(!/[a-z]+_[a-z_]+/.test(await text(page, '#card-error')), 'the explanation shows no raw problem code');
  await explained();
  await page.fill('#activation', code);
  await page.click('#card-form button[type=submit]');
  await page.waitForSelector('[data-test=campus-card]');
}

/// The ¥50.00 top-up is paid once: one POST /api/campus/topups (`topups`), one paid order on the server, and the
/// balance shows it with the 2% bank-card bonus.
async function oneTopUpPaid(page, topups) {
  check(topups.length === 1, `one top-up order was placed (${topups.length} POST /api/campus/topups)`);
  const orders = await serverOrders(page, 'campus');
  check(orders.length === 1 && orders[0].state === 'paid', `the server has one paid top-up (${orders.map((o) => o.state).join(', ')})`);
  await sees(page, '[data-test=balance]', '¥51.00', 'the balance includes the ¥50.00 top-up and the 2% bank-card bonus');
}

/// Shows the card's pay code: 18 digits in groups and a countdown that runs.
async function payCodeCountsDown(page) {
  await page.click('[data-test=paycode]');
  await page.waitForSelector('[data-test=paycode-digits]');
  check(/^\d{4} \d{4} \d{4} \d{4} \d{2}$/.test(await text(page, '[data-test=paycode-digits]')), 'the pay code shows 18 digits in groups');
  const left = async () => Number((await text(page, '[data-test=paycode-left]')).match(/\d+/)?.[0]);
  const first = await left();
  await page.waitForTimeout(2100);
  const later = await left();
  check(first > 0 && later < first, `the pay code counts down (${first} s → ${later} s)`);
}

/// Reports the card lost (asked first) and unblocks it, seeing the words `w` of each step in the page's language.
async function lostAndBack(page, w) {
  await page.click('[data-test=report-lost]');
  await sees(page, '[role=alertdialog]', w.confirm, 'reporting the card lost asks first');
  await page.click('[data-test=confirm-lost]');
  await sees(page, '[data-test=card-status]', w.lost, 'reporting the card lost shows at once');
  await sees(page, '[data-test=card-error]', w.reported, 'and says what it means');
  check(await page.isDisabled('[data-test=topup]'), 'a lost card cannot be topped up');
  check(await page.isDisabled('[data-test=paycode]'), 'nor show a pay code');
  await page.click('[data-test=unfreeze]');
  await sees(page, '[data-test=card-status]', w.active, 'unblocking brings it back');
  await sees(page, '[data-test=card-error]', w.back, 'and says so');
}

/// The names the bank and its partners registered (schools, billers, communities, campaigns and the titles of the
/// coupons in the customer's wallet, a check-in reward's included): shown as registered, in whatever language that was.
const registeredNames = (page) => page.evaluate(async () => {
  const headers = { authorization: `Bearer ${sessionStorage.getItem('scenefin.session')}` };
  const names = async (path, field) => ((await (await fetch(path, { headers })).json()).items ?? []).map((x) => x[field]);
  return (await Promise.all([names('/api/campus/schools', 'name'), names('/api/utility/billers', 'name'),
    names('/api/property/communities', 'name'), names('/api/coupons/campaigns', 'title'), names('/api/coupons/wallet', 'title')]))
    .flat().filter(Boolean);
});

/// Everything on the screen reads in English: no Chinese but registered names and the language switch's 中文, no text
/// key left untranslated, and no raw problem code in a message.
async function readsEnglish(page, what) {
  const seen = await page.evaluate(() => ({
    all: document.body.innerText,
    said: [...document.querySelectorAll('[role=alert], [role=status]:not(.receipt), [data-test=notice]')].map((n) => n.innerText).join(' '),
  }));
  const rest = [...await registeredNames(page), '中文'].reduce((s, n) => s.replaceAll(n, ' '), seen.all);
  const chinese = rest.match(/[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]+/g) ?? [];
  const keys = rest.match(/\b(?:app|nav|tab|login|stage|utility|checkout|line|receipt|order|coupons?|discount|campus|card|txn|property|cost|referrals?|reward|privacy|common|err)\.[a-z_.]+/g) ?? [];
  const codes = seen.said.match(/\b[a-z]+(?:_[a-z]+)+\b/g) ?? [];
  const found = [...chinese, ...keys, ...codes];
  check(found.length === 0, `${what}: reads in English (${found.join(', ') || 'no Chinese, text key or problem code'})`);
}

/// Flips the profile-based offers switch on the privacy page: the page says what the choice means (`said`), and after
/// a reload the switch and its state (`shown`) still say the same.
async function flipOffers(page, { said, shown, on }) {
  await page.click('#marketing');
  await sees(page, '#marketing-ok', said, `turning profile-based offers ${on ? 'on' : 'off'} says what it means`);
  await page.reload();
  await page.waitForSelector('body[data-ready] #panel-privacy:not([hidden])');
  await sees(page, '[data-test=marketing-state]', shown, 'the choice and when it was made survive a reload');
  check(await page.isChecked('#marketing') === on, `the switch shows ${on ? 'on' : 'off'} after the reload`);
}

async function journey(name, body) {
  try {
    await body();
  } catch (e) {
    failures.push(`${name}: ${e.stack ?? e}`);
    console.log(`FAIL ${name}: ${e.message}`);
  }
}

let code = '';

await run(async () => {
  // 1. Before login every action is disabled and says why; Alice logs in (Chinese) and shares her referral code.
  await journey('alice shares her code', async () => {
    const alice = await newPage('zh-CN');
    await alice.goto(`${base}/app`);
    await alice.waitForSelector('body[data-ready]');
    check(await alice.getAttribute('html', 'lang') === 'zh-CN', 'the page opens in Simplified Chinese');
    check(await alice.isDisabled('#bind-form button[type=submit]'), 'before login the bind button is disabled');
    await sees(alice, '#panel-utility .login-needed', '请先登录', 'before login the page says why');
    await tab(alice, 'coupons');
    await alice.waitForSelector('[data-test=campaign] [data-test=claim]');
    check(await alice.isDisabled('[data-test=campaign] [data-test=claim]'), 'before login the claim button is disabled');
    await usable(alice, 'before login');
    await shot(alice, '01-before-login');
    await tab(alice, 'utility');
    await login(alice, 'alice');
    await sees(alice, '[data-test=stage]', '新客户', 'the header shows the lifecycle stage');
    await tab(alice, 'referrals');
    await alice.click('[data-test=get-code]');
    await alice.waitForSelector('[data-test=referral-code]');
    code = await text(alice, '[data-test=referral-code]');
    check(/^[A-Z0-9]{8}$/.test(code), `alice has a referral code (${code})`);
    await sees(alice, '[data-test=share-text]', `/app?ref=${code}`, 'the share text carries her link');
    await sees(alice, '[data-test=referral-progress]', '已成功邀请 0 位好友', 'her progress starts at zero');
    await sees(alice, '[data-test=next-tier]', '再邀请 1 位即可升至第 1 档', 'and says what the next tier needs');
    await shot(alice, '02-alice-referral-code');
    await alice.context().close();
  });

  // 2. Bob opens Alice's link, binds his water account, claims a bill coupon, checks in and pays with a double tap.
  await journey('bob pays his water bill', async () => {
    const bob = await newPage('zh-CN');
    await login(bob, 'bob', { path: `/app?ref=${code}` });
    await sees(bob, '[data-test=notice]', `已关联好友的邀请码 ${code}`, "bob is told his friend's code took");
    const stageBefore = await bob.getAttribute('[data-test=stage]', 'data-stage');
    await bob.waitForSelector('#biller option', { state: 'attached' });
    await bob.fill('#account-no', '12');
    await bob.click('#bind-form button[type=submit]');
    await sees(bob, '#bind-error', '户号', 'a mistyped account number is explained beside the form');
    check(!/[a-z]+_[a-z_]+/.test(await text(bob, '#bind-error')), 'the explanation shows no raw problem code');
    await bob.fill('#account-no', '8800112233');
    await bob.click('#bind-form button[type=submit]');
    await sees(bob, '#bind-ok', '鲍*', "the holder's two-character name is masked as 鲍*");
    await sees(bob, '[data-test=account] [data-test=due]', '应缴 ¥125.00', 'the bound account shows ¥125.00 due');

    await tab(bob, 'coupons');
    await bob.click('[data-test=checkin]');
    await sees(bob, '[data-test=streak]', '已连续签到 1 天', 'check-in starts a streak');
    await sees(bob, '#checkin-message', '签到奖励', 'the streak earns the check-in coupon');
    check(await bob.isDisabled('[data-test=checkin]'), 'checking in twice a day is not offered');
    await bob.click('[data-campaign=demo_bill] [data-test=claim]');
    await sees(bob, '[data-campaign=demo_bill] .ok', '已放入卡包', 'the claimed coupon is in the wallet');
    await sees(bob, '[data-test=coupon]', '可用于生活缴费', 'the wallet says the coupon works on bills');
    await sees(bob, '[data-campaign=demo_bill] [data-test=claim]', '已领取', 'a coupon held already is not offered again');
    check(await bob.isDisabled('[data-campaign=demo_bill] [data-test=claim]'), 'its claim button is disabled');
    await shot(bob, '03-bob-coupons');

    await tab(bob, 'utility');
    await bob.click('[data-test=account] [data-test=pay]');
    await bob.waitForSelector('[data-test=checkout] [data-test=coupon-choice]');
    await sees(bob, '[data-test=checkout]', '本行持卡优惠', 'the checkout shows the cardholder discount');
    const couponValue = await bob.$eval('[data-test=coupon-choice]', (s) => [...s.options].find((o) => o.text.includes('生活缴费立减'))?.value);
    await bob.selectOption('[data-test=coupon-choice]', couponValue);
    await sees(bob, '[data-test=checkout]', '优惠券：生活缴费立减 ¥3', 'the coupon is priced into the bill');
    await sees(bob, '[data-test=checkout-total]', '¥115.90', 'the total is ¥125.00 less the coupon and 5%');
    await shot(bob, '04-bob-checkout');

    const posts = countPosts(bob, '/api/utility/orders');
    // The gateway takes a moment, so the pending state shows.
    await bob.route('**/api/demo/payments', async (route) => { await new Promise((r) => { setTimeout(r, 1500); }); await route.continue(); });
    await bob.dblclick('[data-test=confirm-pay]');
    await sees(bob, '[data-test=pay-status]', '等待银行确认', 'a pending state shows while the bank confirms');
    check(await bob.isDisabled('[data-test=confirm-pay]'), 'the Pay button is disabled while the payment is in flight');
    await shot(bob, '05-bob-pending');
    await bob.waitForSelector('[data-test=receipt]');
    await sees(bob, '[data-test=receipt]', '支付成功', 'the receipt says the payment succeeded');
    await sees(bob, '[data-test=receipt-amount]', '已支付 ¥115.90', 'the receipt shows what was paid');
    check(posts.length === 1, `a double tap sent exactly one POST /api/utility/orders (${posts.length})`);
    const orders = await serverOrders(bob, 'utility');
    check(orders.length === 1 && orders[0].state === 'paid', `the server has one paid order (${orders.map((o) => o.state).join(', ')})`);
    await sees(bob, '[data-test=account] [data-test=nothing-due]', '暂无欠费', 'nothing is due after paying');
    await sees(bob, '[data-test=order]', '已支付', 'the payment history lists the paid order');
    await bob.waitForFunction((before) => document.querySelector('[data-test=stage]')?.dataset.stage !== before, stageBefore);
    check(true, `the header's lifecycle stage moved on after paying (${stageBefore} → ${await bob.getAttribute('[data-test=stage]', 'data-stage')})`);
    await shot(bob, '06-bob-receipt');

    // 3. Campus card: a wrong code explained, then bound; top-up, pay code countdown, report lost and back.
    await tab(bob, 'campus');
    await bindCard(bob, 'D001', '111111', '学号或激活码不正确');
    await sees(bob, '[data-test=balance]', '¥0.00', 'the new card shows its balance');
    await sees(bob, '[data-test=card-status]', '正常', 'and its status');
    // The gateway cannot be reached after the top-up order is placed; after a reload the same order is paid.
    const topups = countPosts(bob, '/api/campus/topups');
    const unreachable = (route) => route.abort('failed');
    lostAnswers = true;
    await bob.route('**/api/demo/payments', unreachable);
    await bob.selectOption('[data-test=topup-amount]', '5000');
    await bob.click('[data-test=topup]');
    await bob.click('[data-test=confirm-pay]');
    await sees(bob, '[data-test=pay-error]', '网络不稳定', 'an unreachable gateway is explained');
    await bob.unroute('**/api/demo/payments', unreachable);
    lostAnswers = false;
    await bob.reload();
    await bob.waitForSelector('body[data-ready] [data-test=campus-card]');
    await bob.click('[data-test=topup]');
    await sees(bob, '[data-test=confirm-pay]', '继续完成支付', 'after a reload the placed top-up is resumed, not placed again');
    await bob.click('[data-test=confirm-pay]');
    await sees(bob, '#campus-receipt [data-test=receipt]', '支付成功', 'the top-up gets a receipt');
    await oneTopUpPaid(bob, topups);
    await sees(bob, '[data-test=txn]', '充值', 'the transactions list the top-up');
    await payCodeCountsDown(bob);
    await shot(bob, '07-bob-campus-paycode');
    await lostAndBack(bob, { confirm: '确定挂失吗', lost: '已挂失', reported: '卡片已停止消费', active: '正常', back: '已解除挂失' });
    await usable(bob, 'the campus card');
    await shot(bob, '08-bob-campus');
    await tab(bob, 'utility');
    await bob.click('#logout');
    await sees(bob, '[data-test=notice]', '已退出登录', 'logging out says so');
    check(await bob.isVisible('#login'), 'and shows the login form again');
    await bob.context().close();
  });

  // 4. Carol, in English: a stale promotion link and a mistyped code do not block her; she enters Alice's code
  //    later on the Invite page and pays her bill; switching to Chinese re-renders what she sees.
  await journey('carol in English', async () => {
    const carol = await newPage('en');
    await login(carol, 'carol', { path: '/app?ch=STALE9', referral: 'NOPE1234' });
    check(await carol.getAttribute('html', 'lang') === 'en', 'the page is in English');
    await sees(carol, '[data-test=notice]', 'promotion link you opened has expired', 'a stale channel code is explained, and she is logged in');
    await sees(carol, '[data-test=notice]', 'There is no such referral code', 'a mistyped referral code is explained');
    await sees(carol, '[data-test=notice]', 'Invite page', 'and she is told where to enter one later');
    await shot(carol, '09-carol-login-notices');
    await tab(carol, 'referrals');
    check(await carol.inputValue('#attach-code') === 'NOPE1234', 'the Invite page keeps the code she typed to correct');
    await carol.fill('#attach-code', code);
    await carol.click('#attach-form button[type=submit]');
    await sees(carol, '#attach-ok', "Linked to your friend's code", "she attaches Alice's code afterwards");
    // A problem code the page does not know yet gets the generic words, never the code or the server's detail.
    await tab(carol, 'coupons');
    await carol.route('**/api/coupons/campaigns/demo_coffee/claim', (route) => route.fulfill({
      status: 422, contentType: 'application/problem+json',
      body: JSON.stringify({ type: '/problems/brand_new_rule', title: 'Unprocessable Content', status: 422, code: 'brand_new_rule', detail: 'rule 7b tripped' }),
    }));
    await carol.click('[data-campaign=demo_coffee] [data-test=claim]');
    await sees(carol, '[data-campaign=demo_coffee] .error', 'This could not be done right now', 'an unknown problem code gets the generic message beside the button');
    const shown = await text(carol, '[data-campaign=demo_coffee] .error');
    check(!shown.includes('brand_new_rule') && !shown.includes('rule 7b') && !shown.includes('422'), `and shows neither the code, the detail nor the status (${shown})`);
    await carol.unroute('**/api/coupons/campaigns/demo_coffee/claim');
    await tab(carol, 'utility');
    await carol.fill('#account-no', '8800112235');
    await carol.click('#bind-form button[type=submit]');
    await sees(carol, '#bind-ok', 'holder 卡*尔', 'the holder name is masked');
    await sees(carol, '[data-test=due]', '¥145.00 due', 'the bill shows in English');
    await carol.click('[data-test=account] [data-test=pay]');
    await sees(carol, '[data-test=checkout-total]', 'You pay ¥137.75', 'the English checkout shows the total');
    // The bank declines the first attempt: explained, nothing charged, and the next tap starts a fresh payment.
    let declined = false;
    await carol.route('**/api/demo/payments', (route) => {
      if (declined) return route.continue();
      declined = true;
      return route.continue({ postData: JSON.stringify({ ...route.request().postDataJSON(), status: 'failed' }) });
    });
    await carol.click('[data-test=confirm-pay]');
    await sees(carol, '[data-test=pay-error]', 'nothing was charged', 'a declined payment is explained');
    await sees(carol, '[data-test=confirm-pay]', 'Start the payment again', 'and the button offers a fresh start');
    await carol.click('[data-test=confirm-pay]');
    await carol.waitForSelector('[data-test=confirm-pay]:has-text("Pay ¥137.75")');
    await carol.click('[data-test=confirm-pay]');
    await sees(carol, '[data-test=receipt]', 'Payment successful', 'the English receipt');
    await sees(carol, '[data-test=receipt-amount]', 'Paid ¥137.75', 'with the amount paid');
    const states = (await serverOrders(carol, 'utility')).map((o) => o.state).sort().join(', ');
    check(states === 'failed, paid', `the server has the declined order and one paid order (${states})`);
    await usable(carol, 'bills in English');
    await shot(carol, '10-carol-receipt-en');
    await carol.click('.lang-switch button[lang=zh-CN]');
    await sees(carol, '[data-test=receipt]', '支付成功', 'switching to Chinese re-renders the receipt');
    await sees(carol, '#tab-utility', '生活缴费', 'and the tabs');
    check(await carol.getAttribute('html', 'lang') === 'zh-CN', 'and the document language');
    await shot(carol, '11-carol-receipt-zh');
    await carol.context().close();
  });


  // 5. Dave, a new customer, on the privacy page: profile-based offers off (no invite nudge) and on again, each
  //    surviving a reload; a finance look-up of his phone number, then his data downloaded (the file has his id and
  //    number, the screen masks it and lists the look-up with its time and reason), also in English; erasure only
  //    after ticking the confirmation: logged out, told what went and what the bank keeps in the page's language,
  //    the erased session refused, and logging in again makes him a new customer.
  await journey('dave guards his privacy', async () => {
    const dave = await newPage('zh-CN');
    await login(dave, 'dave');
    await sees(dave, '[data-test=notice]', '欢迎新用户', 'dave starts as a new customer');
    const before = (await asCustomer(dave, '/api/me')).body;
    await tab(dave, 'privacy');
    await sees(dave, '#panel-privacy', '个性化推荐', 'the privacy page offers the choice of profile-based offers');
    await sees(dave, '#marketing-hint', '邀请好友', 'and says what it changes');
    await sees(dave, '[data-test=marketing-state]', '默认开启', 'a customer who never chose has it on');
    check(await dave.isChecked('#marketing'), 'the switch shows on');
    await usable(dave, 'the privacy page');
    await shot(dave, 'privacy-1-dave');
    await flipOffers(dave, { said: '已关闭个性化推荐', shown: '已关闭', on: false });
    await tab(dave, 'referrals');
    const noNudge = await dave.waitForFunction(() => document.querySelector('[data-test=referral-progress]') && !document.querySelector('[data-test=next-tier]'), null, { timeout: 10000 })
      .then(() => true, () => false);
    check(noNudge, 'with offers off the invite page carries no nudge to invite more');
    await tab(dave, 'privacy');
    await flipOffers(dave, { said: '已开启个性化推荐', shown: '已开启', on: true });
    await tab(dave, 'referrals');
    await sees(dave, '[data-test=next-tier]', '再邀请 1 位', 'with offers on the invite page nudges again');
    await tab(dave, 'privacy');

    const reason = 'customer called about a refund, ticket CS-2041';
    const unmasked = await fetch(`${base}/api/ops/customers/${before.customer_id}/unmask`, {
      method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${operatorToken}` },
      body: JSON.stringify({ field: 'phone', reason }),
    });
    check(unmasked.status === 200, `the bank unmasks his phone number for a reason (${unmasked.status})`);
    await dave.click('[data-test=export]');
    await dave.waitForSelector('[data-test=export-download]');
    const [download] = await Promise.all([dave.waitForEvent('download'), dave.click('[data-test=export-download]')]);
    const { readFile } = await import('node:fs/promises');
    const file = JSON.parse(await readFile(await download.path(), 'utf8'));
    check(file.customer_id === before.customer_id && file.phone === '13800000004',
      `the downloaded file has his customer id and phone number (${download.suggestedFilename()}: ${file.customer_id}, ${file.phone})`);
    await sees(dave, '[data-test=export-phone]', '138****0004', 'the screen shows his number masked');
    check(!(await dave.innerText('body')).includes('13800000004'), 'and never in the clear');
    check(await text(dave, '[data-test=export-access]') === '1', 'the summary counts one staff look-up');
    const at = new Intl.DateTimeFormat('zh-CN', { timeZone: 'Asia/Shanghai', hour12: false, year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit' })
      .format(new Date(file.staff_access?.[0]?.at));
    await sees(dave, '[data-test=staff-access]', at, 'the look-up is listed at its Beijing time');
    await sees(dave, '[data-test=staff-access]', `原因：${reason}`, 'with the reason staff gave');
    await usable(dave, 'the data download');
    await shot(dave, 'privacy-2-dave-export');
    await dave.click('.lang-switch button[lang=en]');
    await sees(dave, '[data-test=export-summary]', 'Your data is ready', 'the download summary in English');
    await sees(dave, '[data-test=staff-access]', `Reason: ${reason}`, 'and the look-up');
    await sees(dave, '[data-test=marketing-state]', 'On (set', 'and the choice');
    await readsEnglish(dave, 'the privacy page');
    await dave.focus('#marketing');
    await usable(dave, 'the privacy page in English');
    await shot(dave, 'privacy-3-dave-en');
    await dave.click('.lang-switch button[lang=zh-CN]');

    await dave.click('[data-test=erase]');
    await sees(dave, '[data-test=erase-dialog]', '确定要删除您的个人信息吗', 'erasing asks first, saying what is deleted');
    check(await dave.isDisabled('[data-test=confirm-erase]'), 'the erase button waits for the confirmation to be ticked');
    await usable(dave, 'the erasure confirmation');
    await shot(dave, 'privacy-4-dave-erase-confirm');
    const token = await dave.evaluate(() => sessionStorage.getItem('scenefin.session'));
    await dave.check('[data-test=erase-tick]');
    await dave.click('[data-test=confirm-erase]');
    await dave.waitForSelector('#login:not([hidden])');
    await sees(dave, '[data-test=notice]', '您的个人信息已删除', 'after erasing he is logged out and told so');
    await sees(dave, '[data-test=erasure-report]', '手机号', 'the report says what was deleted');
    await sees(dave, '[data-test=erasure-kept]', '记账分录和订单', 'and what the bank keeps, in Chinese');
    const kept = await text(dave, '[data-test=erasure-kept]');
    check(!/[A-Za-z]{3,}/.test(kept), `the server's English sentences are not shown on the Chinese page (${kept})`);
    check(await dave.evaluate(() => !sessionStorage.getItem('scenefin.session')), 'the page forgot the session');
    const gone = await asCustomer(dave, '/api/me', token);
    check(gone.status === 401 && gone.body?.code === 'customer_erased', `the erased session is refused (${gone.status} ${gone.body?.code})`);
    await shot(dave, 'privacy-5-dave-erased');
    await dave.click('.lang-switch button[lang=en]');
    await sees(dave, '[data-test=erasure-kept]', 'Ledger postings and orders', 'the report in English');
    await readsEnglish(dave, 'the erasure report');
    await dave.click('.lang-switch button[lang=zh-CN]');
    await dave.selectOption('#persona', 'dave');
    await dave.click('#login-button');
    await dave.waitForSelector('[data-test=customer]');
    await sees(dave, '[data-test=notice]', '欢迎新用户', 'logging in again registers him afresh');
    await sees(dave, '[data-test=customer]', '138****0004', 'the same person (his phone number)');
    await sees(dave, '[data-test=marketing-state]', '默认开启', 'with no choice carried over');
    const after = (await asCustomer(dave, '/api/me')).body;
    check(after.customer_id && after.customer_id !== before.customer_id, `as a new customer (${before.customer_id} → ${after.customer_id})`);
    check((await dave.locator('[data-test=erasure-report]').count()) === 0, 'the erasure report is gone once he is back');
    await dave.context().close();
  });

  // 6. Dave claims his room (a wrong owner name explained), pays fees and six months ahead; the first order's answer
  //    is lost and the page reloaded: the retry carries the same Idempotency-Key and the server has one order.
  await journey('dave pays property fees', async () => {
    const dave = await newPage('zh-CN');
    await login(dave, 'dave');
    await tab(dave, 'property');
    await dave.fill('#room-id', 'A1-1201');
    await dave.fill('#owner-name', '王小明');
    await dave.click('#claim-form button[type=submit]');
    await sees(dave, '#claim-error', '业主姓名与物业登记不一致', 'a wrong owner name is explained beside the form');
    await dave.fill('#owner-name', '王芳');
    await dave.click('#claim-form button[type=submit]');
    await dave.waitForSelector('[data-test=room]');
    await sees(dave, '[data-test=owner]', '业主 王*', 'the owner shows masked as 王*');
    await sees(dave, '[data-test=arrears]', '欠费 ¥418.50', 'the fees due show');
    await tab(dave, 'coupons');
    await dave.click('[data-campaign=demo_bill] [data-test=claim]');
    await sees(dave, '[data-campaign=demo_bill] .ok', '已放入卡包', 'dave claims a coupon usable on property fees');
    await tab(dave, 'property');
    await dave.selectOption('[data-test=prepay]', '6');
    await dave.click('[data-test=property-pay]');
    await dave.waitForSelector('[data-test=checkout] [data-test=coupon-choice]');
    const coupon = await dave.$eval('[data-test=coupon-choice]', (s) => s.options[1]?.value);
    await dave.selectOption('[data-test=coupon-choice]', coupon);
    await sees(dave, '[data-test=checkout]', '优惠券：生活缴费立减 ¥3', 'the coupon is priced into the property fees');
    await sees(dave, '[data-test=checkout]', '预缴 6 个月', 'the checkout prices six months ahead');
    await sees(dave, '[data-test=checkout]', '预缴赠送月份', 'with the free month');
    const total = await text(dave, '[data-test=checkout-total]');
    await usable(dave, 'the property checkout');
    await shot(dave, '12-dave-checkout');

    const posts = countPosts(dave, '/api/property/orders');
    lostAnswers = true;
    // The order reaches the server, its answer never reaches the page.
    await dave.route('**/api/property/orders', async (route) => {
      if (route.request().method() !== 'POST') return route.continue();
      await route.fetch();
      return route.abort('failed');
    });
    await dave.click('[data-test=confirm-pay]');
    await sees(dave, '[data-test=pay-error]', '网络不稳定', 'a lost answer is explained in plain words');
    await dave.unroute('**/api/property/orders');
    lostAnswers = false;
    await dave.reload();
    await dave.waitForSelector('body[data-ready]');
    await dave.waitForSelector('#panel-property:not([hidden]) [data-test=room]');
    await dave.selectOption('[data-test=prepay]', '6');
    await dave.click('[data-test=property-pay]');
    await dave.waitForSelector('[data-test=confirm-pay]');
    await dave.click('[data-test=confirm-pay]');
    await sees(dave, '#property-receipt [data-test=receipt]', '支付成功', 'after the reload the payment completes');
    check(posts.length >= 2 && new Set(posts).size === 1, `every attempt carried the same Idempotency-Key (${posts.length} POSTs, ${new Set(posts).size} key)`);
    const orders = await serverOrders(dave, 'property');
    check(orders.length === 1 && orders[0].state === 'paid', `the server has exactly one paid property order (${orders.map((o) => o.state).join(', ')})`);
    await sees(dave, '#property-receipt [data-test=receipt-amount]', total.replace(/^实付 /, '已支付 '), 'the receipt shows the checkout total');
    await sees(dave, '[data-test=arrears]', '暂无欠费', 'nothing is due afterwards');
    await sees(dave, '[data-test=room]', '已预缴 7 个月', 'six months paid ahead plus one free');
    await shot(dave, '13-dave-receipt');
    await dave.click('.lang-switch button[lang=en]');
    await sees(dave, '[data-test=arrears]', 'Nothing due', 'switching to English re-renders the room');
    await sees(dave, '[data-test=room]', '7 month(s) prepaid', 'in English');
    await shot(dave, '14-dave-en');
    await dave.context().close();
  });

  // 7. Alice sees both friends qualified and what the next tier needs.
  await journey('alice sees her progress', async () => {
    const alice = await newPage('zh-CN');
    await login(alice, 'alice');
    await tab(alice, 'referrals');
    await sees(alice, '[data-test=referral-progress]', '已成功邀请 2 位好友', 'both friends who paid count');
    await sees(alice, '[data-test=tier]', '当前第 1 档', 'she is on tier 1');
    await sees(alice, '[data-test=next-tier]', '再邀请 1 位即可升至第 2 档', 'one more reaches tier 2');
    check((await alice.locator('[data-test=referral]').count()) === 2, 'her friends are listed');
    await sees(alice, '[data-test=referral]', '已达标', 'as qualified');
    await usable(alice, 'referrals');
    await shot(alice, '15-alice-progress');
    await alice.context().close();
  });

  // 8. Alice, still a new customer, now in English: the offers nearby, a claim and her wallet, a check-in streak; her
  //    campus card bound from the school list (a wrong code first), ¥0.00, topped up, the pay code counting down,
  //    reported lost and back, the transactions. Every screen reads in English, amounts in ¥.
  await journey('alice in English: coupons and the campus card', async () => {
    const alice = await newPage('en');
    await login(alice, 'alice');
    check(await alice.getAttribute('html', 'lang') === 'en', 'the page is in English');
    await sees(alice, '[data-test=stage]', 'New customer', 'the header says she is a new customer');

    await tab(alice, 'coupons');
    await sees(alice, '#panel-coupons h2', 'Offers nearby', 'the coupons page lists the offers nearby');
    await sees(alice, '[data-campaign=demo_coffee]', '¥5 off coffee', "the coffee shop's campaign is listed");
    await sees(alice, '[data-campaign=demo_coffee] .offer', '¥5.00 off ¥15.00 or more', 'its offer is said in ¥');
    check(/^\d+ left$/.test(await text(alice, '[data-campaign=demo_coffee] .muted')), 'with how many are left');
    check(await text(alice, '[data-campaign=demo_coffee] [data-test=claim]') === 'Claim', 'and a Claim button');
    await sees(alice, '[data-test=streak]', '0-day streak', 'her check-in streak starts at zero');
    await sees(alice, '#wallet', 'Your wallet is empty', 'her wallet is empty');
    await readsEnglish(alice, 'the offers nearby');
    await alice.click('[data-campaign=demo_coffee] [data-test=claim]');
    await sees(alice, '[data-campaign=demo_coffee] .ok', 'is in your wallet', 'the claim says the coupon is in her wallet');
    check(await text(alice, '[data-campaign=demo_coffee] [data-test=claim]') === 'Claimed', 'a coupon held already says Claimed');
    check(await alice.isDisabled('[data-campaign=demo_coffee] [data-test=claim]'), 'and is not offered again');
    const coffee = alice.locator('[data-test=coupon]', { hasText: '¥5 off coffee' });
    await coffee.waitFor();
    const held = squash(await coffee.textContent());
    check(held.includes('Ready to use') && held.includes('¥5.00 off ¥15.00 or more') && /Valid until \d{1,2} [A-Z][a-z]{2} \d{4}/.test(held),
      `the wallet shows the coupon ready to use, its offer and until when (${held})`);
    await alice.click('[data-test=checkin]');
    await sees(alice, '[data-test=streak]', '1-day streak', 'checking in starts her streak');
    await sees(alice, '#checkin-message', 'Your streak is 1 day(s)', 'and says so');
    await sees(alice, '#checkin-message', 'Check-in reward', 'the streak earns the check-in coupon');
    await sees(alice, '[data-test=checkin]', 'Checked in today', 'the button says she checked in today');
    check(await alice.isDisabled('[data-test=checkin]'), 'and is not offered twice a day');
    check((await alice.locator('[data-test=coupon]').count()) === 2, 'her wallet holds the claimed and the check-in coupon');
    await readsEnglish(alice, 'coupons after a claim and a check-in');
    await usable(alice, 'coupons in English');
    await shot(alice, '16-alice-coupons-en');

    await tab(alice, 'campus');
    const schools = await alice.$$eval('#school-id option', (os) => os.map((o) => [o.value, o.text]));
    const school = schools.find(([id]) => id === 'demo_school');
    check(Boolean(school), `the school list offers the demo school (${schools.map(([, name]) => name).join(', ')})`);
    await alice.selectOption('#school-id', 'demo_school');
    await sees(alice, '#card-bind', 'Add your campus card', 'the bind form is in English');
    await usable(alice, 'adding a campus card in English');
    await bindCard(alice, 'D002', '111112', 'The number or activation code is wrong', async () => {
      await readsEnglish(alice, 'a wrong activation code');
      await shot(alice, '17-alice-wrong-code-en');
    });
    await sees(alice, '[data-test=card-error]', 'Campus card added', 'the card is added');
    await sees(alice, '[data-test=campus-card] strong', school?.[1] ?? 'demo_school', "under the school's name from the list");
    check(await text(alice, '[data-test=balance]') === '¥0.00', 'the new card shows its balance as ¥0.00');
    await sees(alice, '[data-test=card-status]', 'Active', 'and its status as Active');
    await sees(alice, '[data-test=campus-card]', 'D002', 'and her student number');
    await sees(alice, '[data-test=campus-card]', 'No transactions yet', 'and no transactions yet');
    await readsEnglish(alice, 'the new campus card');

    const topups = countPosts(alice, '/api/campus/topups');
    await alice.selectOption('[data-test=topup-amount]', '5000');
    await sees(alice, '[data-test=topup]', 'Top up ¥50.00', 'the top-up button names the amount');
    await alice.click('[data-test=topup]');
    await sees(alice, '#campus-receipt [data-test=checkout]', 'Top-up', 'the checkout lists the top-up');
    await sees(alice, '#campus-receipt [data-test=checkout-total]', 'You pay ¥50.00', 'and what she pays');
    await readsEnglish(alice, 'the top-up checkout');
    await alice.click('[data-test=confirm-pay]');
    await sees(alice, '#campus-receipt [data-test=receipt]', 'Payment successful', 'the top-up gets a receipt');
    await sees(alice, '#campus-receipt [data-test=receipt-amount]', 'Paid ¥50.00', 'with the amount paid');
    await sees(alice, '#campus-receipt [data-test=receipt]', "Bonus for topping up with the bank's card", "and the bank card's bonus");
    await oneTopUpPaid(alice, topups);
    await alice.waitForFunction(() => document.querySelector('[data-test=stage]')?.dataset.stage !== 'new');
    const stage = await text(alice, '[data-test=stage]');
    check(['Activated', 'Engaged', 'High value'].includes(stage), `her first payment moves her on, said in English (${stage})`);
    await readsEnglish(alice, 'the top-up receipt');

    await payCodeCountsDown(alice);
    await sees(alice, '[data-test=paycode-box] h3', 'Pay code', 'the pay code is headed in English');
    await sees(alice, '[data-test=paycode-left]', 'Expires in', 'and its countdown too');
    await readsEnglish(alice, 'the pay code');
    await usable(alice, 'the pay code in English');
    await shot(alice, '18-alice-paycode-en');
    await lostAndBack(alice, { confirm: 'Report it lost?', lost: 'Reported lost', reported: 'the card cannot be used', active: 'Active', back: 'The card works again' });
    const txns = await alice.$$eval('[data-test=txn]', (ns) => ns.map((n) => [...n.children].map((c) => c.textContent.trim())));
    check(txns.length === 1 && txns[0][0] === 'Top-up' && txns[0][1] === '+¥51.00' && /^\d{1,2} [A-Z][a-z]{2} \d{4}, \d{2}:\d{2}$/.test(txns[0][2]),
      `the transactions list the top-up in English, in ¥, with an English date (${txns.map((x) => x.join(' | ')).join('; ')})`);
    await readsEnglish(alice, 'the campus card after reporting it lost and back');
    await usable(alice, 'the campus card in English');
    await shot(alice, '19-alice-campus-en');
    await alice.context().close();
  });
}, 'mini-program: all checks passed');
