// What every browser walk shares: Debian's Chromium through playwright-core, pages that may not leave the app's
// origin (so they are proven to work offline), failures collected from checks, page errors and console errors.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

/// Reads `<base url> <operator token> <artefact dir>` from the command line (exits 2 without them).
export function args(script) {
  const [base, operatorToken, out] = process.argv.slice(2);
  if (!base || !operatorToken || !out) {
    console.error(`usage: node ${script} <base url> <operator token> <artefact dir>`);
    process.exit(2);
  }
  mkdirSync(out, { recursive: true });
  return { base, operatorToken, out };
}

/// Starts Chromium. `newPage({viewport, init, allow})`: a page in its own context; `init(context)` runs first (e.g.
/// init scripts), `allow(text)` may excuse a console error the walk provokes on purpose. `run(walk)` runs the walk,
/// closes the browser, reports and exits 1 on any failure.
export async function harness(base) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  const failures = [];
  const offsite = [];
  const check = (condition, what) => {
    if (!condition) failures.push(what);
    console.log(`${condition ? 'ok  ' : 'FAIL'} ${what}`);
  };
  async function newPage({ viewport = { width: 1280, height: 900 }, init, allow = () => false } = {}) {
    const context = await browser.newContext({ viewport });
    if (init) await init(context);
    await context.route('**/*', (route) => {
      const url = route.request().url();
      if (url.startsWith(base)) return route.continue();
      offsite.push(url);
      return route.abort();
    });
    const page = await context.newPage();
    page.on('pageerror', (e) => failures.push(`page error: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error' && !allow(m.text())) failures.push(`console: ${m.text()}`); });
    page.setDefaultTimeout(15000);
    return page;
  }
  async function run(walk, done) {
    try {
      await walk();
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
    console.log(done);
  }
  return { check, newPage, run, failures };
}
