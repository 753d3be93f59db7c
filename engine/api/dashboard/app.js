// comfyui-gateway dashboard: plain JavaScript, no framework, no build step.
//
// It is a client of the REST API like any other: every call carries the credential
// entered at sign-in (an API key as X-API-Key, a JWT as a bearer token), kept in
// sessionStorage (gone when the tab closes), so the page shows only what that key may
// see. Live job status comes from GET /jobs/{id}/events (Server-Sent Events), read with
// fetch so that the credential can be sent (EventSource cannot send headers), resumed
// with Last-Event-ID after a drop. Images are fetched with the credential too and shown
// from blob: URLs. Everything the server sends is put into the page as text, never as HTML.
'use strict';

const POLL_MS = 2000;
/// Running jobs of a list followed live at once (browsers allow 6 connections per host).
const LIVE_MAX = 3;
const TERMINAL = new Set(['succeeded', 'failed', 'canceled']);

const session = {
  credential: sessionStorage.getItem(CREDENTIAL_KEY),
  open: false, // the server has no credentials configured
  admin: false,
};

// ---------- DOM helpers (h() and CREDENTIAL_KEY are in common.js) ----------

const $view = () => document.getElementById('view');

function show(...nodes) {
  const v = $view();
  v.replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined && n !== false));
}

function statusPill(status) {
  return h('span', { class: `pill st-${status}`, dataset: { status } }, status);
}

function progressBar(percent, wide) {
  const p = Math.max(0, Math.min(100, Number(percent) || 0));
  return h('span', { class: wide ? 'bar wide' : 'bar', title: `${p.toFixed(0)} %` },
    h('span', { style: { width: `${p}%` } }));
}

function shortId(id) {
  return String(id).slice(-12);
}

function ago(iso) {
  if (!iso) return '';
  const s = (Date.now() - Date.parse(iso)) / 1000;
  if (s < 60) return `${Math.max(0, Math.round(s))} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(iso).toLocaleString();
}

function duration(job) {
  if (!job.startedAt) return '';
  const end = job.finishedAt ? Date.parse(job.finishedAt) : Date.now();
  // The browser's clock may be behind the server's: a running job never ran "-0.3 s".
  const s = Math.max(0, (end - Date.parse(job.startedAt)) / 1000);
  return s < 60 ? `${s.toFixed(1)} s` : `${(s / 60).toFixed(1)} min`;
}

/** A priority as people say it: 0 is normal, above it high, below it low. */
function priorityName(p) {
  const n = Number(p) || 0;
  if (n === 0) return 'normal';
  return n > 0 ? `high (${n})` : `low (${n})`;
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1048576).toFixed(1)} MiB`;
}

function alertBox(err) {
  const body = [h('strong', {}, err.code ? `${err.code}: ` : ''), err.message || String(err)];
  if (err.details) body.push(h('pre', {}, JSON.stringify(err.details, null, 2)));
  return h('div', { class: 'alert', role: 'alert' }, body);
}

// ---------- the API ----------

class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || `HTTP_${status}`;
    this.details = e.details;
  }
}

function isJwt(c) {
  return /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(c);
}

function authHeaders() {
  const c = session.credential;
  if (!c) return {};
  return isJwt(c) ? { Authorization: `Bearer ${c}` } : { 'X-API-Key': c };
}

/** Call the API; resolves to the parsed JSON body (or the Response with raw: true). */
async function api(path, { method = 'GET', body, headers = {}, raw = false, signal, redirect } = {}) {
  const init = { method, headers: { ...authHeaders(), ...headers }, signal, redirect };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
  }
  const resp = await fetch(path, init);
  // A saved credential that stops working (key removed, token expired): sign in again.
  if (resp.status === 401 && session.credential && sessionStorage.getItem(CREDENTIAL_KEY) === session.credential) {
    signOut('The gateway refused the saved credential; sign in again.');
  }
  if (raw && resp.type === 'opaqueredirect') return resp;
  if (!resp.ok) {
    let parsed = null;
    try { parsed = await resp.json(); } catch (_) { /* not JSON */ }
    throw new ApiError(resp.status, parsed);
  }
  if (raw) return resp;
  return resp.status === 204 ? null : resp.json();
}

/** blob: URLs of downloaded outputs, by API path (outputs never change). */
const blobs = new Map();

/**
 * An output's bytes. With S3 presigned downloads the gateway answers 307 to the bucket,
 * which this page may not read (its CSP allows this origin only, and the bucket may not
 * allow CORS); the base64 form is always served by the gateway itself.
 */
async function fetchOutput(url) {
  const r = await api(url, { raw: true, redirect: 'manual' });
  if (r.type !== 'opaqueredirect') return r.blob();
  const { data, mediaType } = await api(`${url}?format=base64`);
  const bin = atob(data);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Blob([bytes], { type: mediaType });
}

async function outputBlob(url) {
  if (!blobs.has(url)) {
    const p = fetchOutput(url).then((b) => URL.createObjectURL(b));
    blobs.set(url, p);
    p.catch(() => blobs.delete(url));
  }
  return blobs.get(url);
}

async function download(url, name) {
  const href = await outputBlob(url);
  const a = h('a', { href, download: name });
  document.body.append(a);
  a.click();
  a.remove();
}

/**
 * Follows GET /jobs/{id}/events: calls onEvent({id, event, data}) for every event,
 * reconnects with Last-Event-ID after a drop, stops after the terminal event.
 */
class Follower {
  constructor(jobId, onEvent) {
    this.jobId = jobId;
    this.onEvent = onEvent;
    this.lastId = 0;
    this.done = false;
    this.ctrl = new AbortController();
    this.run();
  }

  stop() {
    this.done = true;
    this.ctrl.abort();
  }

  async run() {
    let delay = 500;
    while (!this.done) {
      try {
        const headers = { Accept: 'text/event-stream' };
        if (this.lastId) headers['Last-Event-ID'] = String(this.lastId);
        const resp = await api(`/jobs/${encodeURIComponent(this.jobId)}/events`,
          { headers, raw: true, signal: this.ctrl.signal });
        const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value.replace(/\r\n?/g, '\n');
          let i;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            this.dispatch(block);
          }
        }
        delay = 500;
      } catch (e) {
        if (this.done || e.name === 'AbortError') return;
        // A job that does not exist (or is another owner's) will not appear later.
        if (e instanceof ApiError && e.status >= 400 && e.status < 500 && e.status !== 429) return;
        delay = Math.min(delay * 2, 10000);
      }
      if (!this.done) await new Promise((r) => setTimeout(r, delay));
    }
  }

  dispatch(block) {
    const ev = { id: null, event: 'message', data: '' };
    for (const line of block.split('\n')) {
      if (!line || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'id') ev.id = value;
      else if (field === 'event') ev.event = value;
      else if (field === 'data') ev.data += (ev.data ? '\n' : '') + value;
    }
    if (!ev.data) return;
    if (ev.id) this.lastId = ev.id;
    let data;
    try { data = JSON.parse(ev.data); } catch (_) { return; }
    if (TERMINAL.has(ev.event)) this.done = true;
    this.onEvent({ id: ev.id, event: ev.event, data });
  }
}

// ---------- pages ----------

/**
 * One visit of a page: what it started (timers, event streams), all stopped when the user
 * navigates. A page that is left while it still awaits an answer renders nothing and
 * starts nothing: every page function works through its own visit.
 */
class Visit {
  constructor() {
    this.alive = true;
    this.timers = [];
    this.followers = new Map();
  }

  leave() {
    this.alive = false;
    this.timers.forEach(clearInterval);
    this.followers.forEach((f) => f.stop());
  }

  show(...nodes) {
    if (this.alive) show(...nodes);
  }

  /** Run `fn` now and every `ms` while the page is shown. */
  every(ms, fn) {
    const tick = async () => {
      if (!this.alive) return;
      try { await fn(); } catch (e) { if (!(e instanceof ApiError && e.status === 401)) console.warn(e); }
    };
    if (this.alive) this.timers.push(setInterval(tick, ms));
    return tick();
  }

  /** Follow job `id`'s events while the page is shown (replacing an earlier follower). */
  follow(id, onEvent) {
    if (!this.alive) return;
    this.unfollow(id);
    this.followers.set(id, new Follower(id, onEvent));
  }

  unfollow(id) {
    this.followers.get(id)?.stop();
    this.followers.delete(id);
  }
}

let visit = new Visit();

function leavePage() {
  visit.leave();
  visit = new Visit();
  return visit;
}

function route() {
  const here = leavePage();
  const hash = location.hash.replace(/^#\/?/, '').split('?')[0];
  const [view, ...rest] = hash.split('/');
  const arg = rest.length ? decodeURIComponent(rest.join('/')) : null;
  if (!session.credential && !session.open) return loginPage();
  const tab = view === 'import' ? 'workflows' : view || 'jobs';
  document.querySelectorAll('#nav a').forEach((a) => a.classList.toggle('active', a.dataset.view === tab));
  const pages = { jobs: arg ? jobPage : jobsPage, gallery: galleryPage, queue: queuePage, workflows: arg ? workflowPage : workflowsPage, import: importPage, backends: backendsPage };
  const fn = pages[view] || jobsPage;
  fn(here, arg).catch((e) => here.show(h('h1', {}, 'Something went wrong'), alertBox(e)));
}

// ----- sign in -----

function loginPage(message) {
  const input = h('input', { id: 'credential', type: 'password', autocomplete: 'off', placeholder: 'API key or JWT', required: true });
  const error = h('div', {});
  if (message) error.append(h('div', { class: 'alert', role: 'alert' }, message));
  const form = h('form', {
    class: 'panel login', id: 'login',
    onsubmit: async (ev) => {
      ev.preventDefault();
      session.credential = input.value.trim();
      try {
        await api('/capabilities');
        sessionStorage.setItem(CREDENTIAL_KEY, session.credential);
        await whoAmI();
        if (!location.hash || location.hash === '#/login') location.hash = '#/jobs';
        else route();
      } catch (e) {
        session.credential = null;
        error.replaceChildren(alertBox(e.status === 401 ? { code: e.code, message: 'That key or token was not accepted.' } : e));
      }
    },
  },
  h('h1', {}, 'Sign in'),
  h('p', {}, 'Enter an API key (sent as X-API-Key) or a JWT (sent as a bearer token). It is kept in this tab only.'),
  error,
  h('div', { class: 'field' }, h('label', { for: 'credential' }, 'Credential'), input),
  h('p', {}, h('button', { class: 'primary', type: 'submit' }, 'Sign in')));
  document.getElementById('nav').hidden = true;
  document.getElementById('logout').hidden = true;
  document.getElementById('who').hidden = true;
  show(form);
  input.focus();
}

function signOut(message) {
  session.credential = null;
  sessionStorage.removeItem(CREDENTIAL_KEY);
  for (const p of blobs.values()) p.then((u) => URL.revokeObjectURL(u), () => {});
  blobs.clear();
  leavePage();
  loginPage(message);
}

/** The caller's role: /audit is for admins only. */
async function whoAmI() {
  try {
    await api('/audit?limit=1');
    session.admin = true;
  } catch (e) {
    session.admin = false;
  }
  const who = document.getElementById('who');
  who.textContent = session.open ? 'open mode (no credentials configured)' : session.admin ? 'admin' : 'user';
  who.hidden = false;
  document.getElementById('nav').hidden = false;
  document.getElementById('logout').hidden = session.open;
}

// ----- gallery -----

/** The outputs of the latest succeeded jobs, newest first; thumbnails load as they scroll in. */
async function galleryPage(here) {
  const grid = h('div', { class: 'thumbs', id: 'gallery' });
  const more = h('button', { type: 'button', hidden: true }, 'Load more');
  const empty = h('div', { class: 'empty', hidden: true }, 'No outputs yet.');
  here.show(h('h1', {}, 'Gallery'), h('div', { class: 'panel' }, grid, empty, more));
  let cursor = null;
  async function page() {
    const q = new URLSearchParams({ status: 'succeeded', limit: '30' });
    if (cursor) q.set('cursor', cursor);
    const { jobs, nextCursor } = await api(`/jobs?${q}`);
    if (!here.alive) return;
    for (const job of jobs) {
      for (const o of job.outputs || []) {
        const url = outputPath(job.jobId, o);
        const image = /^image\//.test(o.mediaType);
        grid.append(h('figure', { class: 'thumb', dataset: { output: o.name, job: job.jobId } },
          h('a', { href: `#/jobs/${job.jobId}`, title: `${job.workflowId} · ${o.name}` }, image ? lazyImage(url, o.name) : h('div', { class: 'empty' }, o.mediaType)),
          h('figcaption', { class: 'cap' }, h('span', {}, `${job.workflowId} · ${ago(job.finishedAt)}`))));
      }
    }
    cursor = nextCursor;
    more.hidden = !nextCursor;
    empty.hidden = grid.childElementCount > 0;
    grid.dataset.loaded = 'true';
  }
  more.addEventListener('click', () => page().catch((e) => here.show(alertBox(e))));
  await page();
}

// ----- jobs -----

function jobRow(job, live) {
  const cells = [
    h('td', { class: 'mono' }, h('a', { href: `#/jobs/${job.jobId}` }, shortId(job.jobId))),
    h('td', {}, job.workflowId),
    h('td', { class: 'mini-cell' }, job.status === 'succeeded' ? firstImage(job) : null),
    h('td', {}, statusPill(job.status), job.cached ? h('span', { class: 'muted' }, ' cached') : null),
    h('td', {}, job.status === 'running' ? progressBar(live ? live.percent : 0) : job.error ? h('span', { class: 'muted' }, job.error.code) : ''),
    h('td', {}, priorityName(job.priority)),
    h('td', {}, job.backend || ''),
    h('td', { title: job.createdAt }, ago(job.createdAt)),
    h('td', {}, duration(job)),
  ];
  return h('tr', { class: 'clickable', dataset: { job: job.jobId, status: job.status }, onclick: (e) => {
    if (e.target.tagName !== 'A') location.hash = `#/jobs/${job.jobId}`;
  } }, cells);
}

async function jobsPage(here) {
  const status = h('select', { id: 'filter-status', onchange: () => reload() },
    ['', 'queued', 'running', 'succeeded', 'failed', 'canceled'].map((s) => h('option', { value: s }, s || 'any status')));
  const tbody = h('tbody', {});
  const more = h('button', { type: 'button', hidden: true }, 'Load more');
  const table = h('table', { id: 'jobs' },
    h('thead', {}, h('tr', {}, ['Job', 'Workflow', '', 'Status', 'Progress', 'Priority', 'Backend', 'Created', 'Ran'].map((t) => h('th', {}, t)))),
    tbody);
  const empty = h('div', { class: 'empty', hidden: true }, 'No jobs yet. Submit one from ', h('a', { href: '#/workflows' }, 'Workflows'), '.');
  // Bulk cancel (POST /jobs/cancel, called again while it says `more`): a second click confirms.
  const bulkNote = h('span', { class: 'muted', id: 'bulk-note' });
  const bulk = h('button', { type: 'button', class: 'danger', id: 'cancel-queued', onclick: async () => {
    if (!bulk.dataset.armed) {
      bulk.dataset.armed = 'yes';
      bulk.textContent = 'Click again to cancel every queued job';
      return;
    }
    bulk.disabled = true;
    let n = 0;
    try {
      for (;;) {
        const r = await api('/jobs/cancel', { method: 'POST', body: { status: ['queued'], limit: 1000 } });
        n += r.canceled.length;
        if (!r.more) break;
      }
      bulkNote.textContent = `${n} canceled`;
    } catch (e) { bulkNote.replaceChildren(alertBox(e)); }
    delete bulk.dataset.armed;
    bulk.textContent = 'Cancel all queued';
    bulk.disabled = false;
    refresh();
  } }, 'Cancel all queued');
  here.show(h('div', { class: 'row' }, h('h1', {}, 'Jobs'), h('span', { class: 'spacer' }), bulkNote, bulk, status),
    h('div', { class: 'panel' }, table, empty, more));

  const progress = new Map();
  let shown = 50;
  async function refresh() {
    const q = new URLSearchParams({ limit: String(shown) });
    if (status.value) q.set('status', status.value);
    const { jobs, nextCursor } = await api(`/jobs?${q}`);
    if (!here.alive) return;
    tbody.replaceChildren(...jobs.map((j) => jobRow(j, progress.get(j.jobId))));
    empty.hidden = jobs.length > 0;
    more.hidden = !nextCursor;
    table.dataset.loaded = 'true';
    followRunning(jobs);
  }
  more.onclick = () => { shown = Math.min(shown + 50, 500); reload(); };
  const reload = () => refresh().catch((e) => console.warn(e));

  // Live progress of the first few running jobs, from their event streams.
  function followRunning(jobs) {
    const running = new Set(jobs.filter((j) => j.status === 'running').slice(0, LIVE_MAX).map((j) => j.jobId));
    for (const id of [...here.followers.keys()]) {
      if (!running.has(id)) here.unfollow(id);
    }
    for (const id of running) {
      if (here.followers.has(id)) continue;
      here.follow(id, ({ event, data }) => {
        if (event === 'progress' && data.percent !== undefined) progress.set(id, { percent: data.percent });
        const row = tbody.querySelector(`tr[data-job="${id}"]`);
        if (!row) return;
        if (TERMINAL.has(event)) { reload(); return; }
        const bar = row.querySelector('.bar > span');
        if (bar && progress.has(id)) bar.style.width = `${progress.get(id).percent}%`;
      });
    }
  }
  await here.every(POLL_MS, refresh);
}

/**
 * An output's path on this page's origin, made from the job id and the output's name:
 * with PUBLIC_URL set the gateway sends absolute links, which name another origin (and
 * perhaps a proxy's path prefix) when the page was opened by another address, and the
 * CSP allows this origin only.
 */
/** Images that load (with the credential) only once they scroll near the view. */
const lazyImages = new IntersectionObserver((entries) => {
  for (const e of entries) {
    if (!e.isIntersecting) continue;
    lazyImages.unobserve(e.target);
    const img = e.target;
    outputBlob(img.dataset.src).then((u) => { img.src = u; }, () => { img.alt = `${img.alt} (could not load)`; });
  }
}, { rootMargin: '200px' });

function lazyImage(url, alt, cls) {
  const img = h('img', { alt, class: cls, dataset: { src: url } });
  lazyImages.observe(img);
  return img;
}

/** A succeeded job's first image output, small, for lists. */
function firstImage(job) {
  const o = (job.outputs || []).find((x) => /^image\//.test(x.mediaType));
  return o ? lazyImage(outputPath(job.jobId, o), o.name, 'mini') : null;
}

function outputPath(jobId, o) {
  return `/outputs/${encodeURIComponent(jobId)}/${encodeURIComponent(o.name)}`;
}

function outputTile(jobId, o) {
  const url = outputPath(jobId, o);
  const img = h('img', { alt: o.name, loading: 'lazy' });
  const isImage = /^image\//.test(o.mediaType);
  const player = /^(video|audio)\//.exec(o.mediaType);
  if (isImage) outputBlob(url).then((u) => { img.src = u; }, () => { img.alt = `${o.name} (could not load)`; });
  // Video and audio play in place: fetched with the credential when asked for.
  const media = player ? h('div', { class: 'empty' }, h('button', { type: 'button', class: 'link play', onclick: (e) => {
    const box = e.target.parentElement;
    box.textContent = 'loading…';
    outputBlob(url).then((u) => box.replaceWith(h(player[1], { src: u, controls: true, class: 'media', dataset: { media: player[1] } })),
      () => { box.textContent = `${o.name} (could not load)`; });
  } }, `▶ Play ${player[1]}`), h('div', { class: 'muted' }, o.mediaType)) : null;
  return h('figure', { class: 'thumb', dataset: { output: o.name } },
    isImage ? img : media || h('div', { class: 'empty' }, o.mediaType),
    h('figcaption', { class: 'cap' },
      h('span', { title: `${o.name} · ${o.mediaType} · BLAKE3 ${o.hash}` }, `${o.name} · ${bytes(o.size)}`),
      h('button', { class: 'link download', type: 'button', onclick: () => download(url, o.name) }, 'Download')));
}

function eventText(d) {
  switch (d.type) {
    case 'dispatched': return `to ${d.backend} (attempt ${d.attempt})`;
    case 'progress': {
      // Entries without nodePercent predate job-level progress: their percent is the node's.
      const node = d.nodeClass ? `${d.nodeClass} (node ${d.node})` : `node ${d.node}`;
      const steps = d.max > 0 ? `, step ${d.value}/${d.max}` : '';
      return d.nodePercent === undefined ? `${node}: ${d.value}/${d.max} (${Math.round(d.percent)} %)` : `${Math.round(d.percent)} %: ${node}${steps}`;
    }
    case 'milestone': return `${Math.round(d.percent)} % (node ${d.node})`;
    case 'requeued': return d.reason || '';
    case 'reattached': return d.found ? 'found on the backend' : 'not found on the backend';
    case 'succeeded': return `${d.outputs ?? (d.job ? d.job.outputs.length : '')} output(s)`;
    case 'failed': return `${d.code || (d.job && d.job.error && d.job.error.code) || ''}: ${d.message || (d.job && d.job.error && d.job.error.message) || ''}`;
    case 'canceled': return d.reason || '';
    case 'webhook': return `${d.event} attempt ${d.attempt}: ${d.outcome}${d.httpStatus ? ` (HTTP ${d.httpStatus})` : ''}${d.error ? ` ${d.error}` : ''}`;
    default: return '';
  }
}

async function jobPage(here, id) {
  let job = await api(`/jobs/${encodeURIComponent(id)}`);
  const head = h('div', {});
  const errorBox = h('div', {});
  const outputs = h('div', { class: 'thumbs', id: 'outputs' });
  const events = h('tbody', {});
  const bar = h('div', { id: 'progress' });
  const preview = h('div', { id: 'preview' });
  const inputs = h('pre', { id: 'inputs' });

  function render() {
    const cancel = !TERMINAL.has(job.status)
      ? h('button', { class: 'danger', type: 'button', onclick: async (e) => {
        e.target.disabled = true;
        try { job = await api(`/jobs/${encodeURIComponent(id)}/cancel`, { method: 'POST' }); render(); } catch (err) { errorBox.replaceChildren(alertBox(err)); }
      } }, 'Cancel') : null;
    head.replaceChildren(
      h('div', { class: 'row' }, h('h1', { class: 'mono' }, `Job ${job.jobId}`), h('span', { id: 'job-status' }, statusPill(job.status)), h('span', { class: 'spacer' }), cancel),
      h('dl', { class: 'kv panel' },
        h('dt', {}, 'Workflow'), h('dd', {}, h('a', { href: `#/workflows/${encodeURIComponent(job.workflowId)}` }, job.workflowId), ` v${job.workflowVersion}`),
        h('dt', {}, 'Priority'), h('dd', {}, priorityName(job.priority)),
        h('dt', {}, 'Again'), h('dd', {}, h('a', { id: 'rerun', href: `#/workflows/${encodeURIComponent(job.workflowId)}?rerun=${encodeURIComponent(job.jobId)}` }, 'Re-run with these inputs (editable)'),
          copyAs(() => ({ workflowId: job.workflowId, inputs: job.inputs || {}, priority: job.priority }))),
        h('dt', {}, 'Backend'), h('dd', {}, job.backend || '—'),
        h('dt', {}, 'Attempts'), h('dd', {}, job.attempts),
        h('dt', {}, 'Seed'), h('dd', { class: 'mono' }, job.seed ?? '—'),
        h('dt', {}, 'Cached'), h('dd', {}, job.cached ? 'yes (result cache hit)' : 'no'),
        h('dt', {}, 'Created'), h('dd', {}, job.createdAt),
        h('dt', {}, 'Started'), h('dd', {}, job.startedAt || '—'),
        h('dt', {}, 'Finished'), h('dd', {}, job.finishedAt ? `${job.finishedAt} (${duration(job)})` : '—')));
    if (job.error) errorBox.replaceChildren(alertBox(job.error));
    if (TERMINAL.has(job.status)) preview.replaceChildren();
    if (job.status === 'running' || job.status === 'queued') {
      if (!bar.firstChild) bar.replaceChildren(progressBar(job.progress ? job.progress.percent : 0, true));
    } else bar.replaceChildren();
    outputs.replaceChildren(...(job.outputs.length ? job.outputs.map((o) => outputTile(job.jobId, o)) : [h('div', { class: 'empty' }, TERMINAL.has(job.status) ? 'No outputs.' : 'Outputs appear here when the job succeeds.')]));
    inputs.textContent = JSON.stringify(job.inputs, null, 2);
  }
  render();
  here.show(head, bar, preview, errorBox,
    h('h2', {}, 'Outputs'), outputs,
    h('h2', {}, 'Inputs'), inputs,
    h('h2', {}, 'Event log'),
    h('div', { class: 'panel' }, h('table', { class: 'events', id: 'events' },
      h('thead', {}, h('tr', {}, ['#', 'At', 'Event', ''].map((t) => h('th', {}, t)))), events)));

  here.follow(id, ({ event, data }) => {
    if (event === 'output') return; // listed with the job of the terminal event
    if (event === 'preview') {
      // ComfyUI's live preview (LIVE_PREVIEWS), while the job runs; gone when it ends.
      if (!TERMINAL.has(job.status)) preview.replaceChildren(h('img', { src: data.dataUrl, alt: 'live preview', class: 'live-preview', dataset: { seq: data.seq } }));
      return;
    }
    events.append(h('tr', { dataset: { type: data.type } }, h('td', {}, data.seq), h('td', { title: data.at }, new Date(data.at).toLocaleTimeString()),
      h('td', {}, data.type), h('td', {}, eventText(data))));
    if (event === 'progress' && data.percent !== undefined) {
      const span = bar.querySelector('.bar > span');
      if (span) span.style.width = `${data.percent}%`;
    }
    if (data.job) { job = data.job; render(); } else if (data.status && data.status !== job.status) { job.status = data.status; if (data.backend) job.backend = data.backend; render(); }
  });
}

// ----- queue -----

async function queuePage(here) {
  const running = h('div', { class: 'cards', id: 'running' });
  const queued = h('div', { id: 'queued' });
  here.show(h('h1', {}, 'Queue'), h('h2', {}, 'Running, by backend'), running, h('h2', {}, 'Queued, by priority (highest first, then oldest first)'), queued);
  await here.every(POLL_MS, async () => {
    const [{ jobs }, backends] = await Promise.all([
      api('/jobs?status=queued,running&limit=500'),
      api('/backends').then((b) => b.backends, () => []),
    ]);
    if (!here.alive) return;
    const byBackend = new Map(backends.map((b) => [b.id, []]));
    for (const j of jobs.filter((j) => j.status === 'running')) {
      const k = j.backend || '?';
      if (!byBackend.has(k)) byBackend.set(k, []);
      byBackend.get(k).push(j);
    }
    running.replaceChildren(...[...byBackend].map(([id, list]) => {
      const b = backends.find((x) => x.id === id);
      return h('div', { class: 'card', dataset: { backend: id } },
        h('div', { class: 'row' }, h('h3', {}, id), h('span', { class: 'spacer' }), b ? statusPill(b.state) : null),
        b ? h('div', { class: 'muted' }, `${b.inFlight} / ${b.maxConcurrency} in flight`) : null,
        list.length ? h('ul', {}, list.map((j) => h('li', {}, h('a', { class: 'mono', href: `#/jobs/${j.jobId}` }, shortId(j.jobId)), ` ${j.workflowId}`))) : h('div', { class: 'empty' }, 'idle'));
    }));
    const waiting = jobs.filter((j) => j.status === 'queued')
      .sort((a, b) => b.priority - a.priority || Date.parse(a.createdAt) - Date.parse(b.createdAt));
    if (!waiting.length) { queued.replaceChildren(h('div', { class: 'empty' }, 'Nothing is waiting.')); return; }
    const groups = new Map();
    waiting.forEach((j, i) => {
      if (!groups.has(j.priority)) groups.set(j.priority, []);
      groups.get(j.priority).push([i + 1, j]);
    });
    queued.replaceChildren(...[...groups].map(([prio, list]) => h('div', { class: 'panel', dataset: { priority: prio } },
      h('div', { class: 'row' }, h('strong', {}, `Priority ${prio}`), h('span', { class: 'muted' }, `${list.length} job(s)`)),
      h('table', {}, h('tbody', {}, list.map(([pos, j]) => h('tr', {},
        h('td', { class: 'muted' }, `#${pos}`), h('td', { class: 'mono' }, h('a', { href: `#/jobs/${j.jobId}` }, shortId(j.jobId))),
        h('td', {}, j.workflowId), h('td', { title: j.createdAt }, ago(j.createdAt)))))))));
  });
}

// ----- workflows -----

async function workflowsPage(here) {
  const { workflows } = await api('/workflows');
  here.show(h('div', { class: 'row' }, h('h1', {}, 'Workflows'), h('span', { class: 'spacer' }),
    session.admin ? h('a', { class: 'button', href: '#/import', id: 'import-link' }, 'Import from ComfyUI') : null),
  workflows.length
      ? h('div', { class: 'cards', id: 'workflows' }, workflows.map((w) => h('a', { class: 'card', href: `#/workflows/${encodeURIComponent(w.id)}`, dataset: { workflow: w.id } },
        h('h3', {}, w.name || w.id), h('div', { class: 'mono muted' }, `${w.id} · v${w.version}`), h('p', {}, w.description || ''))))
      : h('div', { class: 'empty' }, 'No workflows are registered.'));
}

/** A local "$ref" ("#/$defs/x") resolved against the root schema. */
function resolve(root, s) {
  let seen = 0;
  while (s && typeof s.$ref === 'string' && s.$ref.startsWith('#/') && seen++ < 16) {
    s = s.$ref.slice(2).split('/').reduce((o, k) => (o ? o[k.replace(/~1/g, '/').replace(/~0/g, '~')] : undefined), root);
  }
  return s || {};
}

function schemaType(s) {
  const t = Array.isArray(s.type) ? s.type.find((x) => x !== 'null') : s.type;
  if (t) return t;
  if (s.enum) return typeof s.enum[0] === 'number' ? 'number' : 'string';
  return 'string';
}

/** Where common inputs go in the form (width and height next to each other). */
const FIELD_ORDER = ['prompt', 'negative_prompt', 'image', 'mask', 'checkpoint', 'lora', 'lora_strength', 'lora_clip_strength',
  'controlnet', 'controlnet_strength', 'width', 'height', 'batch_size', 'steps', 'cfg', 'sampler_name', 'scheduler',
  'denoise', 'seed'];

/** The `GET /models` kind an input names a file of (`checkpoint`, `refiner_checkpoint`, `lora_2`, ...), if any. */
function modelKind(name) {
  const base = name.replace(/_\d+$/, '').replace(/^refiner_/, '');
  return { checkpoint: 'checkpoints', ckpt_name: 'checkpoints', lora: 'loras', lora_name: 'loras', controlnet: 'controlnets', vae: 'vaes', upscale_model: 'upscale_models' }[base];
}

/** One datalist per model kind, filled from `GET /models` (empty when no backend answers). */
function modelLists() {
  const kinds = ['checkpoints', 'loras', 'controlnets', 'vaes', 'upscale_models'];
  const lists = kinds.map((k) => h('datalist', { id: `models-${k}` }));
  api('/models').then((m) => {
    lists.forEach((list, i) => list.replaceChildren(...(m.models[kinds[i]] || []).map((f) => h('option', { value: f }))));
  }, () => {});
  return h('div', { hidden: true }, lists);
}

/** `negative_prompt` → `Negative prompt`, `cfg` → `CFG`. */
function humanLabel(name) {
  const words = name.split('_').filter(Boolean).map((w) => (['cfg', 'vae', 'lora', 'id', 'url'].includes(w) ? w.toUpperCase() : w));
  const text = words.join(' ');
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/** One form field for one top-level input; returns {el, read()} where read() gives the value or undefined. */
function field(root, name, schema, required) {
  const s = resolve(root, schema);
  const type = schemaType(s);
  const id = `in-${name}`;
  const wide = s.format === 'image' || (type === 'string' && !s.enum && (/prompt|text|caption/i.test(name) || (s.maxLength || 0) > 256)) || type === 'object' || type === 'array';
  let control;
  let read;
  let set = () => {};
  const hints = [];
  if (s.format === 'image') {
    const picker = h('input', { id, name, type: 'file', accept: 'image/*', required: required && !('default' in s) });
    const url = h('input', { id: `${id}-url`, type: 'text', placeholder: 'or an http(s) URL / data: URI' });
    read = () => (picker.files.length ? { file: picker.files[0] } : url.value.trim() || undefined);
    set = (v) => { if (typeof v === 'string') url.value = v; };
    control = h('div', {}, picker, url);
    hints.push('PNG, JPEG or WebP; uploaded with the job.');
  } else if (s.enum) {
    control = h('select', { id, name }, !required || !('default' in s) ? h('option', { value: '' }, required ? '— choose —' : '(default)') : null,
      s.enum.map((v, i) => h('option', { value: String(i) }, String(v))));
    if ('default' in s) control.value = String(s.enum.findIndex((v) => v === s.default));
    read = () => (control.value === '' ? undefined : s.enum[Number(control.value)]);
    set = (v) => { const i = s.enum.findIndex((x) => x === v); if (i >= 0) control.value = String(i); };
  } else if (type === 'boolean') {
    control = h('input', { id, name, type: 'checkbox' });
    control.checked = s.default === true;
    read = () => control.checked;
    set = (v) => { control.checked = v === true; };
  } else if (type === 'integer' || type === 'number') {
    const step = s.multipleOf || (type === 'integer' ? 1 : 'any');
    control = h('input', { id, name, type: 'number', step, min: s.minimum ?? s.exclusiveMinimum, max: s.maximum ?? s.exclusiveMaximum, value: s.default, placeholder: 'default' in s ? '' : name === 'seed' ? 'random' : '' });
    read = () => (control.value === '' ? undefined : Number(control.value));
    set = (v) => { if (typeof v === 'number') control.value = String(v); };
    // `x-step` is ComfyUI's step, a hint (ComfyUI takes other values too); `multipleOf` a rule.
    const stepHint = s.multipleOf ? `, multiple of ${s.multipleOf}` : s['x-step'] ? `, step ${s['x-step']}` : '';
    if (s.minimum !== undefined || s.maximum !== undefined) hints.push(`${s.minimum ?? '…'} to ${s.maximum ?? '…'}${stepHint}`);
  } else if (type === 'object' || type === 'array') {
    control = h('textarea', { id, name, placeholder: type === 'array' ? '[ … ] (JSON)' : '{ … } (JSON)' });
    if ('default' in s) control.value = JSON.stringify(s.default, null, 2);
    read = () => {
      if (!control.value.trim()) return undefined;
      try { return JSON.parse(control.value); } catch (e) { throw new FieldError(name, `is not valid JSON: ${e.message}`); }
    };
    set = (v) => { control.value = JSON.stringify(v, null, 2); };
  } else {
    // A model file name: free text, with the backend's files offered (`GET /models`).
    const models = modelKind(name);
    control = wide ? h('textarea', { id, name, maxlength: s.maxLength }) : h('input', { id, name, type: 'text', maxlength: s.maxLength, list: models ? `models-${models}` : undefined, autocomplete: 'off' });
    if (typeof s.default === 'string') control.value = s.default;
    read = () => (control.value === '' ? undefined : control.value);
    set = (v) => { if (typeof v === 'string') control.value = v; };
  }
  const err = h('div', { class: 'err' });
  const el = h('div', { class: wide ? 'field wide' : 'field', dataset: { input: name } },
    h('label', { for: id, title: name }, s.title || humanLabel(name), required ? h('span', { class: 'req', title: 'required' }, ' *') : null),
    control,
    s.description ? h('div', { class: 'hint' }, s.description) : null,
    hints.length ? h('div', { class: 'hint' }, hints.join(' ')) : null,
    err);
  return { name, el, read, set, error: (msg) => { el.classList.toggle('invalid', !!msg); err.textContent = msg || ''; } };
}

class FieldError extends Error {
  constructor(name, message) { super(message); this.field = name; }
}

/** `v` (JSON) as a Python literal: strings as JSON writes them (valid Python), True/False/None. */
function pythonLiteral(v, indent) {
  const inner = `${indent}    `;
  if (v === null || v === undefined) return 'None';
  if (v === true || v === false) return v ? 'True' : 'False';
  if (Array.isArray(v)) return v.length ? `[\n${v.map((x) => inner + pythonLiteral(x, inner)).join(',\n')},\n${indent}]` : '[]';
  if (typeof v === 'object') {
    const entries = Object.entries(v);
    return entries.length ? `{\n${entries.map(([k, x]) => `${inner}${JSON.stringify(k)}: ${pythonLiteral(x, inner)}`).join(',\n')},\n${indent}}` : '{}';
  }
  return JSON.stringify(v);
}

/** The request that submits `request` (`{workflowId, inputs, priority, ...}`) as curl, Python and JavaScript. */
function snippets(request) {
  const url = `${location.origin}/jobs?wait=60`;
  const json = JSON.stringify(request, null, 2);
  const shellJson = JSON.stringify(request).replace(/'/g, "'\\''");
  return {
    curl: `curl -X POST '${url}' \\\n  -H "X-API-Key: $GATEWAY_API_KEY" -H 'content-type: application/json' \\\n  -d '${shellJson}'`,
    Python: `import os, requests\n\njob = requests.post(\n    "${url}",\n    headers={"X-API-Key": os.environ["GATEWAY_API_KEY"]},\n    json=${pythonLiteral(request, '    ')},\n    timeout=90,\n).json()\nprint(job["status"], [o["url"] for o in job.get("outputs", [])])`,
    JavaScript: `const job = await fetch("${url}", {\n  method: "POST",\n  headers: { "X-API-Key": process.env.GATEWAY_API_KEY, "content-type": "application/json" },\n  body: JSON.stringify(${json.split('\n').join('\n  ')}),\n}).then((r) => r.json());\nconsole.log(job.status, job.outputs?.map((o) => o.url));`,
  };
}

/** "Copy as curl / Python / JavaScript" for the request `get()` gives (shown, and copied when the browser allows). */
function copyAs(get) {
  const shown = h('pre', { class: 'snippet', hidden: true });
  const buttons = Object.keys(snippets({})).map((lang) => h('button', { type: 'button', class: 'link', dataset: { lang },
    onclick: async () => {
      let request;
      try { request = get(); } catch (e) { shown.hidden = false; shown.textContent = e.message; return; }
      const text = snippets(request)[lang];
      shown.hidden = false;
      shown.dataset.lang = lang;
      shown.textContent = text;
      try { await navigator.clipboard.writeText(text); } catch (_) { /* shown for copying by hand */ }
    } }, lang));
  return h('div', { class: 'copy-as' }, h('span', { class: 'muted' }, 'Copy as '), ...buttons.flatMap((b, i) => (i ? [' · ', b] : [b])), shown);
}

async function workflowPage(here, id) {
  const w = await api(`/workflows/${encodeURIComponent(id)}`);
  // `#/workflows/ID?rerun=JOB`: the form filled with that job's inputs.
  const rerun = new URLSearchParams(location.hash.split('?')[1] || '').get('rerun');
  const previous = rerun ? await api(`/jobs/${encodeURIComponent(rerun)}`).catch(() => null) : null;
  const schema = w.inputSchema || {};
  const required = new Set(schema.required || []);
  // The order people fill a form in (prompts, image, models, size side by side, sampling,
  // seed), then the other required inputs, then the rest by name.
  const rank = ([n, s]) => {
    const known = FIELD_ORDER.indexOf(n.replace(/_\d+$/, '').replace(/^refiner_/, ''));
    if (known >= 0) return known;
    if (schemaType(resolve(schema, s)) === 'string' && /prompt|text/i.test(n)) return 1.5;
    return FIELD_ORDER.length + (required.has(n) ? 0 : 1);
  };
  const fields = Object.entries(schema.properties || {})
    .map((e) => [rank(e), e[0], e])
    .sort((a, b) => a[0] - b[0] || a[1].localeCompare(b[1]))
    .map(([, , [n, s]]) => field(schema, n, s, required.has(n)));
  const priority = h('input', { id: 'job-priority', type: 'number', step: 1, value: previous ? previous.priority : 0 });
  const cache = h('input', { id: 'job-cache', type: 'checkbox' });
  cache.checked = true;
  if (previous && previous.inputs) {
    for (const f of fields) if (f.name in previous.inputs) f.set(previous.inputs[f.name]);
  }
  const formRequest = () => {
    const inputs = {};
    for (const f of fields) {
      const v = f.read();
      if (v !== undefined && !(v && v.file)) inputs[f.name] = v;
    }
    return { workflowId: w.id, inputs, priority: Number(priority.value) || 0 };
  };
  const status = h('div', {});
  const submit = h('button', { class: 'primary', type: 'submit', id: 'submit' }, 'Submit job');
  const form = h('form', { id: 'job-form', class: 'panel', novalidate: true, onsubmit: async (ev) => {
    ev.preventDefault();
    status.replaceChildren();
    fields.forEach((f) => f.error(null));
    const inputs = {};
    const files = [];
    try {
      for (const f of fields) {
        const v = f.read();
        if (v === undefined) continue;
        if (v && v.file) files.push([f.name, v.file]);
        else inputs[f.name] = v;
      }
    } catch (e) {
      if (e instanceof FieldError) { fields.find((f) => f.name === e.field).error(e.message); return; }
      throw e;
    }
    const request = { workflowId: w.id, inputs, priority: Number(priority.value) || 0, cache: cache.checked };
    let body = request;
    if (files.length) {
      body = new FormData();
      body.append('request', new Blob([JSON.stringify(request)], { type: 'application/json' }));
      for (const [n, file] of files) body.append(n, file, file.name);
    }
    submit.disabled = true;
    try {
      const r = await api('/jobs', { method: 'POST', body });
      location.hash = `#/jobs/${r.jobId}`;
    } catch (e) {
      submit.disabled = false;
      // Field errors point at /inputs/<name> (or /<name>): show them next to the field.
      for (const d of Array.isArray(e.details) ? e.details : []) {
        const m = /^\/(?:inputs\/)?([^/]+)/.exec(d.path || '');
        const f = m && fields.find((x) => x.name === m[1].replace(/~1/g, '/').replace(/~0/g, '~'));
        if (f) f.error(d.message);
      }
      status.replaceChildren(alertBox(e));
    }
  } },
  h('div', { class: 'form' }, fields.map((f) => f.el),
    h('div', { class: 'field' }, h('label', { for: 'job-priority' }, 'Priority'), priority, h('div', { class: 'hint' }, 'Higher runs first.')),
    h('div', { class: 'field' }, h('label', { for: 'job-cache' }, cache, ' Use the result cache'), h('div', { class: 'hint' }, 'Same inputs and seed: answered from the stored outputs.'))),
  h('p', {}, submit), status, copyAs(formRequest), modelLists());
  here.show(h('div', { class: 'row' }, h('h1', {}, w.name || w.id), h('span', { class: 'mono muted' }, `${w.id} · v${w.version}`)),
    w.description ? h('p', {}, w.description) : null,
    form,
    h('details', {}, h('summary', {}, 'Input schema (JSON Schema)'), h('pre', { id: 'schema' }, JSON.stringify(schema, null, 2))));
}

// ----- import -----

/**
 * An API-format export from ComfyUI → POST /workflows/import proposes a template and an
 * input schema from the backend's /object_info; the admin reviews (and may edit) them and
 * registers the result as a normal workflow with POST /workflows.
 */
async function importPage(here) {
  const file = h('input', { id: 'import-file', type: 'file', accept: '.json,application/json' });
  const text = h('textarea', { id: 'import-json', placeholder: '{"3": {"class_type": "KSampler", "inputs": {…}}, …}', style: { minHeight: '160px' } });
  file.addEventListener('change', async () => { if (file.files.length) text.value = await file.files[0].text(); });
  const id = h('input', { id: 'import-id', type: 'text', placeholder: 'from the file name or the checkpoint' });
  const name = h('input', { id: 'import-name', type: 'text' });
  const status = h('div', {});
  const review = h('div', { id: 'import-review' });
  const form = h('form', { class: 'panel', id: 'import-form', onsubmit: async (ev) => {
    ev.preventDefault();
    status.replaceChildren();
    review.replaceChildren();
    let workflow;
    try { workflow = JSON.parse(text.value); } catch (e) { status.replaceChildren(alertBox({ code: 'INVALID_JSON', message: `The export is not JSON: ${e.message}` })); return; }
    const body = { workflow };
    if (id.value.trim()) body.id = id.value.trim();
    else if (file.files.length) body.id = file.files[0].name.replace(/\.json$/i, '').replace(/[^A-Za-z0-9_-]+/g, '_');
    if (name.value.trim()) body.name = name.value.trim();
    try {
      reviewProposal(review, await api('/workflows/import', { method: 'POST', body }));
    } catch (e) { status.replaceChildren(alertBox(e)); }
  } },
  h('p', {}, 'In ComfyUI, enable the dev mode options and use ', h('strong', {}, 'Export (API)'), '; pick or paste that file. ',
    'The common inputs (prompts, sampler settings, size, checkpoint, image inputs) are found and typed from the backend\'s node definitions.'),
  h('div', { class: 'form' },
    h('div', { class: 'field' }, h('label', { for: 'import-file' }, 'API-format file'), file),
    h('div', { class: 'field' }, h('label', { for: 'import-id' }, 'Workflow id'), id),
    h('div', { class: 'field' }, h('label', { for: 'import-name' }, 'Name'), name),
    h('div', { class: 'field wide' }, h('label', { for: 'import-json' }, 'Export (JSON)'), text)),
  h('p', {}, h('button', { class: 'primary', type: 'submit', id: 'import-propose' }, 'Propose a workflow')), status);
  here.show(h('h1', {}, 'Import a workflow from ComfyUI'), form, review);
}

function reviewProposal(el, { proposal, inputs, warnings }) {
  const schema = h('textarea', { id: 'import-schema', class: 'mono', style: { minHeight: '320px' } });
  schema.value = JSON.stringify(proposal.inputSchema, null, 2);
  const status = h('div', {});
  const register = h('button', { class: 'primary', type: 'button', id: 'import-register', onclick: async () => {
    status.replaceChildren();
    let inputSchema;
    try { inputSchema = JSON.parse(schema.value); } catch (e) { status.replaceChildren(alertBox({ code: 'INVALID_JSON', message: `The schema is not JSON: ${e.message}` })); return; }
    register.disabled = true;
    try {
      const w = await api('/workflows', { method: 'POST', body: { id: proposal.id, name: proposal.name, description: proposal.description, workflow: proposal.template, inputSchema } });
      location.hash = `#/workflows/${encodeURIComponent(w.id)}`;
    } catch (e) { register.disabled = false; status.replaceChildren(alertBox(e)); }
  } }, `Register "${proposal.id}"`);
  el.replaceChildren(h('div', { class: 'panel' },
    h('h2', {}, `Proposal: ${proposal.name || proposal.id}`),
    warnings.length ? h('div', { class: 'note', id: 'import-warnings' }, h('strong', {}, 'Check: '), h('ul', {}, warnings.map((w) => h('li', {}, w)))) : null,
    h('table', { id: 'import-inputs' }, h('thead', {}, h('tr', {}, ['Input', 'Type', 'Node', 'Replaces', 'Exported value'].map((t) => h('th', {}, t)))),
      h('tbody', {}, inputs.map((i) => h('tr', { dataset: { input: i.name } }, h('td', {}, h('strong', {}, i.name)), h('td', {}, i.type),
        h('td', {}, `${i.node} (${i.classType})`), h('td', { class: 'mono' }, i.input), h('td', { class: 'mono' }, JSON.stringify(i.value)))))),
    h('h2', {}, 'Input schema (edit before registering if you like)'), schema,
    h('details', {}, h('summary', {}, 'Template with {{tokens}}'), h('pre', {}, JSON.stringify(proposal.template, null, 2))),
    h('p', {}, register), status));
}

// ----- backends -----

async function backendsPage(here) {
  const tbody = h('tbody', {});
  const status = h('div', {});
  here.show(h('h1', {}, 'Backends'), status, h('div', { class: 'panel' }, h('table', { id: 'backends' },
    h('thead', {}, h('tr', {}, ['Backend', 'State', 'In flight', 'Run p50', 'Probe p50', 'ComfyUI', 'Last error', ''].map((t) => h('th', {}, t)))), tbody)));
  const ms = (v) => (v === null || v === undefined ? '—' : `${Math.round(v)} ms`);
  async function refresh() {
    const { backends } = await api('/backends');
    if (!here.alive) return;
    tbody.replaceChildren(...backends.map((b) => h('tr', { dataset: { backend: b.id } },
      h('td', {}, h('strong', {}, b.id), h('div', { class: 'muted mono' }, b.url)),
      h('td', {}, statusPill(b.state)),
      h('td', {}, `${b.inFlight} / ${b.maxConcurrency}`, h('div', {}, progressBar(b.maxConcurrency ? (100 * b.inFlight) / b.maxConcurrency : 0))),
      h('td', {}, ms(b.latencyMs && b.latencyMs.run)),
      h('td', {}, ms(b.latencyMs && b.latencyMs.probe)),
      h('td', {}, b.comfyuiVersion || '—'),
      h('td', { class: 'muted' }, b.lastError || ''),
      h('td', {}, session.admin ? h('button', { type: 'button', onclick: async () => {
        try { await api(`/backends/${encodeURIComponent(b.id)}/${b.draining ? 'resume' : 'drain'}`, { method: 'POST' }); status.replaceChildren(); await refresh(); } catch (e) { status.replaceChildren(alertBox(e)); }
      } }, b.draining ? 'Resume' : 'Drain') : null))));
  }
  await here.every(POLL_MS + 1000, refresh);
}

// ---------- start ----------

async function healthPill() {
  const pill = document.getElementById('health');
  try {
    const r = await fetch('/health');
    const body = await r.json();
    pill.textContent = r.ok ? 'healthy' : 'degraded';
    pill.className = `pill ${r.ok ? 'st-ok' : 'st-failed'}`;
    pill.title = `GET /health: ${JSON.stringify(body.backends || body)}`;
    // Reachable is not enough: with every backend drained no job runs.
    const backends = r.ok ? ((await api('/backends').catch(() => null)) || {}).backends || [] : [];
    if (backends.length && !backends.some((b) => b.state === 'healthy')) {
      pill.textContent = 'all backends drained';
      pill.className = 'pill st-queued';
      pill.title = `GET /backends: ${backends.map((b) => `${b.id}: ${b.state}`).join(', ')}`;
    }
  } catch (_) {
    pill.textContent = 'unreachable';
    pill.className = 'pill st-failed';
  }
}

async function start() {
  document.getElementById('logout').addEventListener('click', () => signOut());
  window.addEventListener('hashchange', route);
  healthPill();
  setInterval(healthPill, 10000);
  if (!session.credential) {
    // Open mode: the server needs no credentials at all.
    const r = await fetch('/capabilities').catch(() => null);
    session.open = !!(r && r.ok);
  }
  if (session.credential || session.open) await whoAmI();
  route();
}

start();
