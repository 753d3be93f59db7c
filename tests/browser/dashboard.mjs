// The dashboard in a real browser: Debian's chromium, headless, driven by playwright-core.
// Run by tests/it/dashboard.rs against a live gateway + simulator; prints one JSON line
// of what it saw and exits non-zero (with the reason) when anything is not as expected.
//
// Env: GATEWAY_URL, USER_KEY, OTHER_KEY, ADMIN_KEY, JWT_TOKEN (a user's HS256 token), IMAGE_PATH (a PNG for the file
// picker), IMPORT_FILE (an API-format export from ComfyUI), SHOT_DIR (screenshots),
// CHROMIUM (default /usr/bin/chromium). With SCENARIO=presigned (S3 storage, downloads
// redirected to presigned URLs): only USER_KEY's job JOB_ID, its thumbnail and download.
import { check, env, launch, TIMEOUT } from './common.mjs';
import { mkdirSync } from 'node:fs';

const base = env('GATEWAY_URL');
const shots = env('SHOT_DIR');
mkdirSync(shots, { recursive: true });

const browser = await launch();
const seen = { steps: [] };
let page;
// Script errors and Content-Security-Policy violations fail the test.
const problems = [];
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  context.setDefaultTimeout(TIMEOUT);
  page = await context.newPage();
  page.on('pageerror', (e) => problems.push(`page error: ${e}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|Uncaught|TypeError|ReferenceError/.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  const step = (s) => { seen.steps.push(s); };

  async function signIn(key, role) {
    await page.goto(`${base}/`);
    // The page shows one of the two once its script ran (a stored key signs in by itself):
    // wait for it, as asking at once may come before the script and miss a signed-in page.
    await page.waitForFunction(() => !document.getElementById('logout').hidden || document.getElementById('login'));
    if (await page.locator('#logout').isVisible()) await page.click('#logout');
    await page.waitForSelector('#login');
    await page.fill('#credential', key);
    await page.click('#login button[type=submit]');
    await page.waitForSelector('table#jobs');
    await page.waitForFunction((r) => document.getElementById('who').textContent === r, role);
  }

  async function jobIdsListed() {
    await page.goto(`${base}/#/jobs`);
    await page.waitForSelector('table#jobs[data-loaded]');
    return page.$$eval('#jobs tr[data-job]', (rows) => rows.map((r) => r.dataset.job));
  }

  /** After a submit: the job's page, or the error the form shows. */
  async function submitted() {
    await page.waitForFunction(() => /^#\/jobs\/[0-9a-f-]{36}$/.test(location.hash) || document.querySelector('#job-form .alert'));
    const alert = await page.$('#job-form .alert');
    if (alert) throw new Error(`the submit was refused: ${await alert.textContent()}`);
  }

  async function waitSucceeded(what) {
    await page.waitForSelector('#job-status [data-status]');
    const status = await page.waitForFunction(() => {
      const s = document.querySelector('#job-status [data-status]')?.dataset.status;
      return ['succeeded', 'failed', 'canceled'].includes(s) && s;
    }).then((h) => h.jsonValue());
    if (status !== 'succeeded') {
      const alert = await page.locator('.alert').allTextContents();
      throw new Error(`${what} ended ${status}: ${alert.join(' | ')}`);
    }
    // The thumbnail: fetched with the key, shown from a blob: URL, really decoded.
    await page.waitForFunction(() => {
      const img = document.querySelector('#outputs img');
      return img && img.src.startsWith('blob:') && img.complete && img.naturalWidth > 0;
    });
    const img = await page.$eval('#outputs img', (i) => ({ w: i.naturalWidth, h: i.naturalHeight }));
    const events = await page.$$eval('#events tr[data-type]', (rows) => rows.map((r) => r.dataset.type));
    return { img, events, id: decodeURIComponent(new URL(page.url()).hash.split('/')[2]) };
  }

  // With S3 presigned downloads (the gateway answers 307 to the bucket): a stored job's
  // thumbnail and download still work.
  async function presigned() {
    await signIn(env('USER_KEY'), 'user');
    await page.goto(`${base}/#/jobs/${env('JOB_ID')}`);
    seen.job = (await waitSucceeded('the stored job')).id;
    const [dl] = await Promise.all([page.waitForEvent('download'), page.click('#outputs .download')]);
    seen.downloadName = dl.suggestedFilename();
    seen.downloadPath = `${shots}/presigned-${seen.downloadName}`;
    await dl.saveAs(seen.downloadPath);
    await page.screenshot({ path: `${shots}/presigned-job.png`, fullPage: true });
  }

  async function tour() {
    // 1. A wrong key is refused; the user's key signs in. (The page's load figures are
    // printed, not asserted: README "Dashboard" quotes them.)
    const t0 = Date.now();
    await page.goto(`${base}/`);
    await page.waitForSelector('#login');
    seen.timing = await page.evaluate(() => {
      const nav = performance.getEntriesByType('navigation')[0];
      const res = performance.getEntriesByType('resource');
      return { domContentLoadedMs: Math.round(nav.domContentLoadedEventEnd), requests: res.length + 1,
        bytes: nav.encodedBodySize + res.reduce((n, r) => n + r.encodedBodySize, 0) };
    });
    seen.timing.loginVisibleMs = Date.now() - t0;
    await page.fill('#credential', 'not-a-key');
    await page.click('#login button[type=submit]');
    await page.waitForSelector('#login .alert');
    check((await page.textContent('#login .alert')).includes('not accepted'), 'a wrong key is refused');
    step('wrong key refused');
    await signIn(env('USER_KEY'), 'user');
    step('signed in as user');

    // 2. A text-to-image job from the form generated from icon_512's schema.
    await page.goto(`${base}/#/workflows`);
    await page.click('[data-workflow="icon_512"]');
    await page.waitForSelector('#job-form');
    const fields = await page.$$eval('#job-form [data-input]', (els) => els.map((e) => e.dataset.input));
    for (const f of ['prompt', 'negative_prompt', 'width', 'height', 'steps', 'cfg', 'sampler_name', 'seed']) {
      check(fields.includes(f), `the form has a field for ${f} (has ${fields})`);
    }
    check(await page.$eval('#in-width', (e) => e.type === 'number' && e.min === '64' && e.max === '4096' && e.step === '1' && e.value === '512'),
      'width is a number field with the schema range and default (ComfyUI\'s step is a hint, not a rule)');
    check((await page.textContent('[data-input="width"]')).includes('step 8'), 'the step is shown as a hint');
    check(fields[0] === 'prompt' && fields.indexOf('height') === fields.indexOf('width') + 1,
      `prompts first, width and height side by side: ${fields}`);
    check((await page.textContent('[data-input="negative_prompt"] label')).startsWith('Negative prompt'), 'labels are words, not snake_case');
    // The checkpoint is free text with the backend's files offered (GET /models).
    await page.waitForFunction(() => document.querySelectorAll('#models-checkpoints option').length > 0);
    const offered = await page.$$eval('#models-checkpoints option', (os) => os.map((o) => o.value));
    check(await page.$eval('#in-checkpoint', (e) => e.getAttribute('list')) === 'models-checkpoints' && offered.includes('sd_xl_base_1.0.safetensors'),
      `the checkpoint field offers the backend's files: ${offered}`);
    check(await page.$eval('#in-sampler_name', (e) => e.tagName === 'SELECT' && e.options.length > 10 && e.selectedOptions[0].textContent === 'dpmpp_2m'),
      'sampler_name is a select of the enum with the default chosen');
    // A value out of range: the API's field error is shown next to the field.
    await page.fill('#in-prompt', 'a red fox, flat icon');
    await page.fill('#in-width', '16');
    await page.click('#submit');
    await page.waitForSelector('[data-input="width"].invalid .err');
    const widthError = await page.textContent('[data-input="width"] .err');
    check(/64|minimum/.test(widthError), `the width error names the minimum: ${widthError}`);
    step('field error shown');
    await page.fill('#in-width', '256');
    await page.fill('#in-seed', '42');
    await page.click('#submit');
    await submitted();
    // Live: the job is followed over its event stream while it runs.
    await page.waitForSelector('#progress .bar, #job-status [data-status="succeeded"]');
    const text = await waitSucceeded('the icon job');
    check(text.img.w === 256, `the thumbnail is the 256 px output (got ${text.img.w})`);
    for (const t of ['queued', 'dispatched', 'succeeded']) check(text.events.includes(t), `event log has ${t}: ${text.events}`);
    check(text.events.includes('progress'), `progress came over the stream: ${text.events}`);
    check((await page.textContent('#inputs')).includes('a red fox, flat icon'), 'the inputs are shown');
    await page.screenshot({ path: `${shots}/job.png`, fullPage: true });
    seen.textJob = text.id;
    step('text job succeeded with thumbnail');
    // The job as code, and again with its inputs in the form.
    await page.click('[data-lang="curl"]');
    const curl = await page.textContent('pre.snippet');
    check(curl.includes('/jobs?wait=60') && curl.includes('"workflowId":"icon_512"') && curl.includes('a red fox, flat icon'), `copy as curl: ${curl}`);
    await page.click('[data-lang="Python"]');
    check((await page.textContent('pre.snippet')).includes('requests.post('), 'copy as Python');
    await page.click('#rerun');
    await page.waitForSelector('#job-form');
    check(await page.$eval('#in-prompt', (e) => e.value) === 'a red fox, flat icon', 're-run fills the prompt');
    check(await page.$eval('#in-width', (e) => e.value) === '256' && await page.$eval('#in-seed', (e) => e.value) === '42', 're-run fills the numbers');
    await page.screenshot({ path: `${shots}/rerun.png`, fullPage: true });
    step('copy as code and re-run');
    // Thumbnails in the job list and the gallery, loaded with the credential.
    await page.goto(`${base}/#/jobs`);
    await page.waitForFunction((id) => { const i = document.querySelector(`#jobs tr[data-job="${id}"] img.mini`); return i && i.naturalWidth > 0; }, text.id);
    await page.goto(`${base}/#/gallery`);
    await page.waitForFunction((id) => { const i = document.querySelector(`#gallery [data-job="${id}"] img`); return i && i.naturalWidth > 0; }, text.id);
    await page.screenshot({ path: `${shots}/gallery.png`, fullPage: true });
    step('thumbnails in the list and the gallery');

    // 3. An image input by file picker (multipart upload).
    await page.goto(`${base}/#/workflows/invert`);
    await page.waitForSelector('#job-form input[type=file]#in-image');
    await page.setInputFiles('#in-image', env('IMAGE_PATH'));
    await page.screenshot({ path: `${shots}/form.png`, fullPage: true });
    await page.click('#submit');
    await submitted();
    const upload = await waitSucceeded('the invert job');
    seen.uploadJob = upload.id;
    // The download link hands over the output's bytes.
    const [dl] = await Promise.all([page.waitForEvent('download'), page.click('#outputs .download')]);
    seen.downloadName = dl.suggestedFilename();
    seen.downloadPath = `${shots}/downloaded-${seen.downloadName}`;
    await dl.saveAs(seen.downloadPath);
    step('upload job succeeded, output downloaded');

    // A job that fails: its page shows the error the API recorded.
    const r = await fetch(`${base}/jobs`, {
      method: 'POST',
      headers: { 'X-API-Key': env('USER_KEY'), 'Content-Type': 'application/json' },
      body: JSON.stringify({ workflowId: 'icon_512', inputs: { prompt: 'no such model', checkpoint: 'missing.safetensors' } }),
    });
    check(r.status === 202, `the failing job is accepted: ${r.status}`);
    seen.failedJob = (await r.json()).jobId;
    await page.goto(`${base}/#/jobs/${seen.failedJob}`);
    await page.waitForSelector('#job-status [data-status="failed"]');
    await page.waitForSelector('.alert');
    // The event log fills from the event stream, which may lag the status: wait for its row.
    await page.waitForSelector('#events tr[data-type="failed"]');
    seen.failedAlert = await page.textContent('.alert');
    seen.failedEvents = await page.$$eval('#events tr[data-type]', (rows) => rows.map((r) => r.dataset.type));
    step('failed job shows its error');

    const mine = await jobIdsListed();
    check(mine.includes(seen.textJob) && mine.includes(seen.uploadJob), `the user's list shows both jobs: ${mine}`);
    await page.screenshot({ path: `${shots}/jobs.png`, fullPage: true });

    // 4. Another user sees neither job, not even by its address.
    await signIn(env('OTHER_KEY'), 'user');
    const theirs = await jobIdsListed();
    check(!theirs.includes(seen.textJob) && !theirs.includes(seen.uploadJob), `another user's list hides them: ${theirs}`);
    seen.otherListed = theirs.length;
    await page.goto(`${base}/#/jobs/${seen.textJob}`);
    await page.waitForSelector('.alert');
    check((await page.textContent('.alert')).includes('JOB_NOT_FOUND'), 'another user gets JOB_NOT_FOUND');
    step('other user sees nothing');

    // A JWT signs in too, and is sent as a bearer token; its subject owns no job here.
    const bearer = page.waitForRequest((r) => r.url().includes('/jobs?') && (r.headers().authorization || '').startsWith('Bearer '));
    await signIn(env('JWT_TOKEN'), 'user');
    await bearer;
    const carols = await jobIdsListed();
    check(carols.length === 0, `the token's subject sees no job: ${carols}`);
    step('JWT signs in as bearer');

    // 5. The admin sees both, the queue and the backends with their in-flight counts.
    await signIn(env('ADMIN_KEY'), 'admin');
    const all = await jobIdsListed();
    check(all.includes(seen.textJob) && all.includes(seen.uploadJob), `the admin's list shows both: ${all}`);
    // An SDXL export from ComfyUI imported, reviewed, registered, and run from its form.
    await page.goto(`${base}/#/workflows`);
    await page.click('#import-link');
    await page.setInputFiles('#import-file', env('IMPORT_FILE'));
    await page.waitForFunction(() => document.getElementById('import-json').value.includes('class_type'));
    await page.fill('#import-id', 'sdxl_imported');
    await page.click('#import-propose');
    await page.waitForSelector('#import-inputs tr[data-input]');
    seen.importedInputs = await page.$$eval('#import-inputs tr[data-input]', (rows) => rows.map((r) => r.dataset.input));
    for (const f of ['prompt', 'negative_prompt', 'seed', 'steps', 'cfg', 'width', 'height', 'checkpoint']) {
      check(seen.importedInputs.includes(f), `the import found ${f}: ${seen.importedInputs}`);
    }
    await page.screenshot({ path: `${shots}/import.png`, fullPage: true });
    await page.click('#import-register');
    await page.waitForSelector('#job-form [data-input="prompt"]');
    check(await page.$eval('#in-checkpoint', (e) => e.tagName === 'SELECT' && [...e.options].some((o) => o.textContent === 'sd_xl_base_1.0.safetensors')),
      'the imported checkpoint input is a select of the installed checkpoints');
    await page.fill('#in-prompt', 'a lighthouse at dusk');
    await page.fill('#in-steps', '4');
    await page.click('#submit');
    await submitted();
    seen.importedJob = (await waitSucceeded('the imported workflow\'s job')).id;
    step('workflow imported and run');

    await page.goto(`${base}/#/backends`);
    await page.waitForSelector('#backends tr[data-backend]');
    seen.backends = await page.$$eval('#backends tr[data-backend]', (rows) => rows.map((r) => ({
      id: r.dataset.backend, state: r.querySelector('[data-status]').dataset.status, inFlight: r.children[2].textContent.trim(),
    })));
    check(await page.locator('#backends button', { hasText: 'Drain' }).count() === seen.backends.length, 'an admin may drain each backend');
    await page.screenshot({ path: `${shots}/backends.png`, fullPage: true });
    // A queue to look at: one job runs (the simulator is slow), the rest wait by priority.
    for (const [i, priority] of [0, 0, 10, 0, -5].entries()) {
      const r = await fetch(`${base}/jobs`, {
        method: 'POST',
        headers: { 'X-API-Key': env('ADMIN_KEY'), 'Content-Type': 'application/json' },
        body: JSON.stringify({ workflowId: 'icon_512', priority, cache: false, inputs: { prompt: `queued ${i}`, seed: i, steps: 40 } }),
      });
      check(r.status === 202, `queue job ${i}: ${r.status} ${await r.text()}`);
    }
    await page.goto(`${base}/#/queue`);
    await page.waitForSelector('#running .card[data-backend] li');
    await page.waitForFunction(() => document.querySelectorAll('#queued [data-priority]').length >= 3);
    seen.queuedPriorities = await page.$$eval('#queued [data-priority]', (els) => els.map((e) => Number(e.dataset.priority)));
    check(seen.queuedPriorities.join() === '10,0,-5', `queued groups by priority, highest first: ${seen.queuedPriorities}`);
    await page.screenshot({ path: `${shots}/queue.png`, fullPage: true });
    step('admin sees all, backends and queue');
    // Clearing the queue is one action (a second click confirms), not one cancel per job.
    await page.goto(`${base}/#/jobs`);
    await page.waitForSelector('#jobs[data-loaded]');
    await page.click('#cancel-queued');
    check((await page.textContent('#cancel-queued')).includes('again'), 'the bulk cancel asks for a second click');
    await page.click('#cancel-queued');
    await page.waitForFunction(() => /\d+ canceled/.test(document.getElementById('bulk-note').textContent));
    seen.bulkCanceled = Number((await page.textContent('#bulk-note')).match(/(\d+) canceled/)[1]);
    check(seen.bulkCanceled >= 1, `the queued jobs are canceled at once: ${seen.bulkCanceled}`);
    await page.goto(`${base}/#/queue`);
    await page.waitForFunction(() => document.querySelectorAll('#queued [data-priority]').length === 0);
    step('queue cleared in one action');

  }

  await (process.env.SCENARIO === 'presigned' ? presigned() : tour());
  check(problems.length === 0, `the page had errors: ${problems.join('\n')}`);
  console.log(JSON.stringify(seen));
} catch (e) {
  await page?.screenshot({ path: `${shots}/failure.png`, fullPage: true }).catch(() => {});
  console.error(`dashboard test failed: ${e.stack || e}\nsteps done: ${seen.steps.join(' → ')}\n${problems.join('\n')}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
