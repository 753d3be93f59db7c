// The API docs page (/docs) in a real browser: Debian's chromium, headless, driven by
// playwright-core. Run by tests/it/docs.rs against a live gateway; prints one JSON line of
// what it saw and exits non-zero (with the reason) when anything is not as expected.
//
// Env: GATEWAY_URL, SHOT_DIR (screenshots), CHROMIUM (default /usr/bin/chromium), USER_KEY
// (a valid key of a gateway with credentials; unset for one in open mode, where the page
// must show the document without asking).
import { check, env, launch, TIMEOUT } from './common.mjs';
import { mkdirSync } from 'node:fs';

const base = env('GATEWAY_URL');
const key = process.env.USER_KEY;
const shots = env('SHOT_DIR');
mkdirSync(shots, { recursive: true });

const browser = await launch();
const seen = { steps: [] };
let page;
// Script errors, console errors and Content-Security-Policy violations fail the test.
const problems = [];
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  context.setDefaultTimeout(TIMEOUT);
  // Every violation the page reports, whether or not it reaches the console.
  await context.addInitScript(() => {
    window.__violations = [];
    document.addEventListener('securitypolicyviolation', (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  page = await context.newPage();
  page.on('pageerror', (e) => problems.push(`page error: ${e}`));
  page.on('console', (m) => {
    // The 401 of the first, keyless fetch of the document is expected (the sign-in).
    if (m.type() === 'error' && !/401 \(Unauthorized\)/.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  const step = (s) => { seen.steps.push(s); };

  // The dashboard links to the docs.
  await page.goto(`${base}/`);
  await page.click('a#api-docs');
  await page.waitForURL(`${base}/docs`);
  step('dashboard link');

  if (key) {
    // Credentials are configured: the document needs a key. A wrong one is refused.
    await page.waitForSelector('#login');
    await page.fill('#credential', 'not-a-key-of-this-gateway');
    await page.click('#login button[type=submit]');
    await page.waitForSelector('#login .alert');
    seen.refused = (await page.textContent('#login .alert')).trim();
    await page.fill('#credential', key);
    await page.click('#login button[type=submit]');
  }
  await page.waitForSelector('#docs[data-loaded]');
  check(!(await page.$('#login')), 'no sign-in once the document is shown');
  await page.screenshot({ path: `${shots}/docs.png` });
  step('signed in');

  // What the page lists: every operation and webhook.
  seen.operations = await page.$$eval('section.op[data-kind=path]', (els) => els.map((e) => `${e.dataset.method} ${e.dataset.path}`));
  seen.webhooks = await page.$$eval('section.op[data-kind=webhook]', (els) => els.map((e) => `${e.dataset.method} ${e.dataset.path}`));
  seen.tocLinks = await page.$$eval('#toc a.toc-op', (els) => els.length);
  seen.schemas = await page.$$eval('section.schema-def', (els) => els.map((e) => e.dataset.schema));

  // POST /jobs: its JSON request body, JobRequest's properties with the required mark.
  const post = page.locator('section.op[data-path="/jobs"][data-method=POST]');
  await post.scrollIntoViewIfNeeded();
  const body = post.locator('.request-body [data-media-type="application/json"]');
  check(await body.isVisible(), 'POST /jobs shows its JSON request body');
  seen.jobRequest = await body.evaluate((el) => {
    const table = el.querySelector('table.props');
    return [...table.querySelectorAll(':scope > tbody > tr[data-prop]')].map((tr) => ({
      name: tr.dataset.prop,
      required: Boolean(tr.querySelector(':scope > td.name .req')),
      type: tr.querySelector(':scope > td > .type').textContent,
    }));
  });
  seen.callbackEventsText = await body.locator('tr[data-prop=callbackEvents]').first().textContent();
  seen.jobRequestRef = await body.evaluate((el) => el.querySelector('[data-ref]')?.dataset.ref);
  seen.jobRequestExample = JSON.parse(await body.locator('details.example pre').textContent());
  seen.multipart = await post.locator('.request-body [data-media-type="multipart/form-data"] tr[data-prop]').evaluateAll((els) => els.map((e) => e.dataset.prop));
  seen.jobResponses = await post.locator('table.responses tr[data-status]').evaluateAll((els) => els.map((e) => e.dataset.status));
  seen.jobParams = await post.locator('table.params tr[data-param]').evaluateAll((els) => els.map((e) => e.dataset.param));
  // Its request body in view, below the sticky header.
  await post.locator('h4', { hasText: 'Request body' }).evaluate((el) => window.scrollTo(0, el.getBoundingClientRect().top + window.scrollY - 140));
  await page.screenshot({ path: `${shots}/post-jobs.png` });
  step('POST /jobs');

  // The filter keeps only matching operations, in the list and in the table of contents.
  await page.fill('#filter', 'cancel');
  seen.filtered = await page.$$eval('section.op:not([hidden])', (els) => els.map((e) => `${e.dataset.method} ${e.dataset.path}`));
  seen.filteredToc = await page.$$eval('#toc a.toc-op:not([hidden])', (els) => els.length);
  await page.fill('#filter', '');
  step('filter');

  // A link to a schema lands on its definition.
  await page.goto(`${base}/docs#schema-JobRequest`);
  await page.waitForSelector('#docs[data-loaded]');
  seen.schemaInView = await page.locator('#schema-JobRequest').isVisible();
  step('schema link');

  // Every value is shown as text (an element turned into a string would read "[object").
  const text = await page.textContent('#view');
  check(!text.includes('[object ') && !text.includes('undefined'), 'the page shows no unconverted value');
  seen.violations = await page.evaluate(() => window.__violations);
  check(seen.violations.length === 0, `CSP violations: ${seen.violations.join('\n')}`);
  seen.timing = await page.evaluate(() => {
    const nav = performance.getEntriesByType('navigation')[0];
    return nav ? Math.round(nav.loadEventEnd) : null;
  });
  check(problems.length === 0, `the page had errors: ${problems.join('\n')}`);
  console.log(JSON.stringify(seen));
} catch (e) {
  await page?.screenshot({ path: `${shots}/failure.png`, fullPage: true }).catch(() => {});
  console.error(`docs test failed: ${e.stack || e}\nsteps done: ${seen.steps.join(' → ')}\n${problems.join('\n')}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
