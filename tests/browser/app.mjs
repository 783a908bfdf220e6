// Drives the mini-program demo and the operator console in headless Chromium (Debian's, through playwright-core).
// Usage: node demo.mjs <base url> <operator token> <artefact dir>
// Every request outside the app's origin is aborted, so the pages are proven to work with the network off.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const [base, operatorToken, out] = process.argv.slice(2);
if (!base || !operatorToken || !out) {
  console.error('usage: node demo.mjs <base url> <operator token> <artefact dir>');
  process.exit(2);
}
mkdirSync(out, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const failures = [];
const offsite = [];

async function newPage() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (url.startsWith(base)) return route.continue();
    offsite.push(url);
    return route.abort();
  });
  const page = await context.newPage();
  page.on('pageerror', (e) => failures.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') failures.push(`console: ${m.text()}`); });
  page.setDefaultTimeout(15000);
  return page;
}

function check(condition, what) {
  if (!condition) failures.push(what);
  console.log(`${condition ? 'ok  ' : 'FAIL'} ${what}`);
}

async function login(page, persona, referralCode) {
  await page.goto(`${base}/app`);
  await page.selectOption('#persona', persona);
  if (referralCode) await page.fill('#referral-code', referralCode);
  await page.click('#login-button');
  await page.waitForSelector('[data-test=customer]');
}

try {
  // 1. Alice logs in and shares her referral code.
  const alice = await newPage();
  await login(alice, 'alice');
  await alice.waitForSelector('#program option', { state: 'attached' });
  await alice.click('#get-code');
  const code = (await alice.textContent('[data-test=referral-code]')).trim();
  check(/^[A-Z0-9]{8}$/.test(code), `alice has a referral code (${code})`);
  await alice.screenshot({ path: `${out}/1-alice-referral-code.png`, fullPage: true });

  // 2. Bob registers with it, binds his water account and pays the bill through the simulated gateway.
  const bob = await newPage();
  await login(bob, 'bob', code);
  await bob.waitForSelector('#biller option', { state: 'attached' });
  await bob.fill('#account-no', '8800112233');
  await bob.click('#bind-form button');
  await bob.waitForSelector('[data-test=account] [data-test=pay]');
  check((await bob.textContent('[data-test=due]')).includes('¥125.00'), 'the bound account shows ¥125.00 due');
  await bob.screenshot({ path: `${out}/2-bob-bill.png`, fullPage: true });
  await bob.click('[data-test=pay]');
  await bob.waitForSelector('[data-test=receipt]');
  const receipt = await bob.textContent('[data-test=receipt]');
  check(receipt.includes('paid'), `the receipt says paid (${receipt.replace(/\s+/g, ' ').slice(0, 120)})`);
  await bob.waitForSelector('[data-test=account] .ok');
  check((await bob.textContent('[data-test=account]')).includes('Nothing due'), 'nothing is due after paying');
  await bob.screenshot({ path: `${out}/3-bob-receipt.png`, fullPage: true });

  // 3. Bob claims a coupon; it shows in his wallet with its code.
  await bob.waitForSelector('[data-test=claim]');
  await bob.click('[data-test=claim]');
  await bob.waitForSelector('[data-test=coupon] .code');
  const coupon = (await bob.textContent('[data-test=coupon] .code')).trim();
  check(/^[2-9A-Z]{12}$/.test(coupon), `bob's wallet shows the coupon code (${coupon})`);
  await bob.screenshot({ path: `${out}/4-bob-coupon.png`, fullPage: true });

  // 4. Bob binds his campus card and sees its balance.
  await bob.fill('#member-no', 'D001');
  await bob.fill('#activation', '111111');
  await bob.click('#card-form button');
  await bob.waitForSelector('[data-test=campus-card]');
  const card = await bob.textContent('[data-test=campus-card]');
  check(card.includes('¥0.00') && card.includes('D001') && card.includes('active'), `bob's campus card shows (${card})`);

  // 5. Alice sees her referral progress: bob's payment qualified him.
  await alice.reload();
  await alice.waitForSelector('[data-test=referral-progress]');
  await alice.waitForFunction(() => document.querySelector('[data-test=referral-progress]')?.textContent.startsWith('1 qualified'));
  const next = await alice.textContent('[data-test=next-tier]');
  check(next === '2 more to reach tier 2', `alice's next tier: "${next}"`);
  await alice.screenshot({ path: `${out}/5-alice-progress.png`, fullPage: true });

  // 6. The operator console shows the funnel moving and the books balanced.
  const ops = await newPage();
  await ops.goto(`${base}/console`);
  await ops.fill('#token', operatorToken);
  await ops.click('#load');
  await ops.waitForSelector('body[data-loaded]');
  const registered = Number(await ops.getAttribute('#funnel', 'data-registered'));
  check(registered >= 2, `the funnel counts the registrations (${registered})`);
  check((await ops.textContent('[data-test=ledger-status]')).startsWith('Balanced'), 'the console shows the ledger balanced');
  check((await ops.locator('#campaigns table').count()) > 0, 'the console lists campaigns and budgets');
  await ops.screenshot({ path: `${out}/6-console.png`, fullPage: true });
} catch (e) {
  failures.push(`exception: ${e.stack ?? e}`);
} finally {
  await browser.close();
}

check(offsite.length === 0, `no request left the app's origin (${offsite.join(', ')})`);
if (failures.length) {
  console.error(failures.join('\n'));
  process.exit(1);
}
console.log('browser demo: all checks passed');
