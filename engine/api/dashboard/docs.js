// comfyui-gateway API docs: the OpenAPI document (GET /openapi.json) read in a browser.
// Plain JavaScript, no framework, no build step, served from the binary like the dashboard.
//
// Operations are grouped by tag (by the first path segment when they have none), each
// with its parameters, request bodies and responses; schemas are shown as property
// tables with every `$ref` resolved (cycles cut, shown as a link), and an example body
// built from the schema when the document gives none. With credentials configured the
// document needs a key: the page asks for one and keeps it in sessionStorage under the
// dashboard's name, so a key entered in either page works in both. Everything from the
// document is put into the page as text nodes, never as HTML.
'use strict';

const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];
/// Nested schemas shown open down to this depth; deeper ones are folded.
const OPEN_DEPTH = 1;
/// Schemas nested deeper than this are not expanded (a guard, not a limit of the API).
const DEPTH_MAX = 12;

// ---------- DOM helpers (h() and CREDENTIAL_KEY are in common.js) ----------

/** Text with `code` spans (the document's descriptions use backticks), as text nodes. */
function prose(text) {
  if (!text) return null;
  return h('p', { class: 'prose' }, String(text).split('`').map((part, i) => (i % 2 ? h('code', {}, part) : part)));
}

/** A fragment id from free text. */
function anchor(prefix, text) {
  return `${prefix}-${String(text).replace(/[^A-Za-z0-9_.-]+/g, '-')}`;
}

// ---------- the document ----------

let doc = null;

/** The target of a local `$ref` (`#/components/schemas/Job`), or undefined. */
function resolve(ref) {
  if (typeof ref !== 'string' || !ref.startsWith('#/')) return undefined;
  let node = doc;
  for (const raw of ref.slice(2).split('/')) {
    const key = decodeURIComponent(raw).replace(/~1/g, '/').replace(/~0/g, '~');
    if (node === null || typeof node !== 'object' || !(key in node)) return undefined;
    node = node[key];
  }
  return node;
}

/** A parameter, response or header object with its `$ref` followed. */
function deref(obj) {
  for (let i = 0; obj && obj.$ref && i < 8; i++) obj = resolve(obj.$ref) || obj;
  return obj || {};
}

function refName(ref) {
  return decodeURIComponent(ref.split('/').pop()).replace(/~1/g, '/').replace(/~0/g, '~');
}

/** One line saying what a schema is: `string (uuid)`, `integer ≥ 1`, `one of 2`, ... */
function typeLabel(s) {
  if (!s || typeof s !== 'object') return s === false ? 'nothing' : 'any';
  if (s.$ref) return refName(s.$ref);
  const parts = [];
  let type = Array.isArray(s.type) ? s.type.join(' | ') : s.type;
  if (!type) {
    if (s.oneOf) type = 'one of';
    else if (s.anyOf) type = 'any of';
    else if (s.allOf) type = 'all of';
    else if (s.properties) type = 'object';
    else if ('const' in s) type = 'const';
    else type = 'any';
  }
  if (type === 'array' || (Array.isArray(s.type) && s.type.includes('array'))) {
    if (s.items) type = type.replace('array', `array of ${typeLabel(s.items)}`);
  }
  parts.push(type);
  if (s.format) parts.push(`(${s.format})`);
  if ('const' in s) parts.push(`= ${JSON.stringify(s.const)}`);
  if (s.minimum !== undefined) parts.push(`≥ ${s.minimum}`);
  if (s.exclusiveMinimum !== undefined) parts.push(`> ${s.exclusiveMinimum}`);
  if (s.maximum !== undefined) parts.push(`≤ ${s.maximum}`);
  if (s.exclusiveMaximum !== undefined) parts.push(`< ${s.exclusiveMaximum}`);
  if (s.minLength !== undefined || s.maxLength !== undefined) parts.push(`length ${s.minLength ?? 0}..${s.maxLength ?? ''}`);
  if (s.minItems !== undefined || s.maxItems !== undefined) parts.push(`items ${s.minItems ?? 0}..${s.maxItems ?? ''}`);
  return parts.join(' ');
}

/** The facts of a schema beyond its type: enum, default, pattern. */
function facts(s) {
  if (!s || typeof s !== 'object' || s.$ref) return [];
  const out = [];
  if (Array.isArray(s.enum)) out.push(h('div', { class: 'facts' }, 'one of: ', s.enum.map((v, i) => [i ? ', ' : '', h('code', {}, JSON.stringify(v))])));
  if (s.default !== undefined) out.push(h('div', { class: 'facts' }, 'default: ', h('code', {}, JSON.stringify(s.default))));
  if (s.pattern) out.push(h('div', { class: 'facts' }, 'pattern: ', h('code', {}, s.pattern)));
  if (s.deprecated) out.push(h('div', { class: 'facts' }, 'deprecated'));
  return out;
}

/** Whether a schema has facts beyond its type line (see `facts`). */
function hasFacts(s) {
  return Boolean(s && typeof s === 'object' && !s.$ref && (Array.isArray(s.enum) || s.default !== undefined || s.pattern || s.deprecated));
}

/** Whether a schema has structure worth showing below its type line. */
function hasBody(s) {
  if (!s || typeof s !== 'object') return false;
  if (s.$ref) return true;
  return Boolean(s.properties || s.oneOf || s.anyOf || s.allOf
    || (s.items && (hasBody(s.items) || hasFacts(s.items)))
    || (s.additionalProperties && typeof s.additionalProperties === 'object'));
}

/**
 * A schema as DOM: its description, then an object's property table, a composition's
 * variants or an array's items. `seen` holds the `$ref`s being expanded above (cycles).
 */
function schemaView(s, depth, seen) {
  if (!s || typeof s !== 'object') return h('div', { class: 'schema' }, typeLabel(s));
  if (s.$ref) {
    const name = refName(s.$ref);
    const link = h('a', { href: `#${anchor('schema', name)}`, class: 'ref' }, name);
    const target = resolve(s.$ref);
    if (target === undefined) return h('div', { class: 'schema' }, link, h('span', { class: 'bad' }, ' (unresolved)'));
    if (seen.has(s.$ref) || depth >= DEPTH_MAX) return h('div', { class: 'schema' }, link, h('span', { class: 'muted' }, ' (above)'));
    const inner = schemaView(target, depth, new Set([...seen, s.$ref]));
    return h('div', { class: 'schema', dataset: { ref: name } }, inner);
  }
  const parts = [];
  if (depth === 0) {
    parts.push(h('div', { class: 'type' }, typeLabel(s)));
    parts.push(prose(s.description), facts(s));
  }
  if (s.properties && typeof s.properties === 'object') {
    const required = new Set(s.required || []);
    const rows = Object.entries(s.properties).map(([name, p]) => {
      const target = p && p.$ref ? resolve(p.$ref) : p;
      const description = (p && p.description) || (target && target.description);
      return h('tr', { dataset: { prop: name } },
        h('td', { class: 'name' }, h('code', {}, name), required.has(name) ? h('span', { class: 'req', title: 'required' }, ' *') : null),
        h('td', {},
          h('div', { class: 'type' }, typeLabel(p)),
          prose(description), facts(p),
          hasBody(p) ? nested(p, depth + 1, seen) : null));
    });
    parts.push(h('table', { class: 'props' }, h('tbody', {}, rows)));
  }
  if (s.additionalProperties === false) parts.push(h('div', { class: 'facts' }, 'no other properties'));
  else if (s.additionalProperties && typeof s.additionalProperties === 'object') {
    parts.push(h('div', { class: 'facts' }, 'other properties: ', typeLabel(s.additionalProperties)),
      prose(s.additionalProperties.description),
      hasBody(s.additionalProperties) ? nested(s.additionalProperties, depth + 1, seen) : null);
  }
  for (const kw of ['allOf', 'oneOf', 'anyOf']) {
    if (!Array.isArray(s[kw])) continue;
    const label = { allOf: 'all of', oneOf: 'one of', anyOf: 'any of' }[kw];
    parts.push(h('div', { class: 'variants' }, h('div', { class: 'muted' }, `${label}:`),
      s[kw].map((v) => h('div', { class: 'variant' }, h('div', { class: 'type' }, typeLabel(v)),
        hasBody(v) ? nested(v, depth + 1, seen) : prose(v && v.description)))));
  }
  if (s.items && hasBody(s.items)) parts.push(h('div', { class: 'muted' }, 'items:'), nested(s.items, depth + 1, seen));
  else if (s.items && hasFacts(s.items)) parts.push(h('div', { class: 'muted' }, 'items:'), facts(s.items));
  return h('div', { class: 'schema' }, parts);
}

/** A nested schema, folded below OPEN_DEPTH. */
function nested(s, depth, seen) {
  const view = schemaView(s, depth, seen);
  if (depth <= OPEN_DEPTH) return view;
  return h('details', {}, h('summary', {}, typeLabel(s)), view);
}

/** A JSON value that fits a schema: its example or default, else one built from its type. */
function sample(s, depth = 0, seen = new Set()) {
  if (!s || typeof s !== 'object' || depth > DEPTH_MAX) return null;
  if (s.$ref) {
    if (seen.has(s.$ref)) return {};
    return sample(resolve(s.$ref), depth, new Set([...seen, s.$ref]));
  }
  if (s.example !== undefined) return s.example;
  if (Array.isArray(s.examples) && s.examples.length) return s.examples[0];
  if (s.default !== undefined) return s.default;
  if ('const' in s) return s.const;
  if (Array.isArray(s.enum) && s.enum.length) return s.enum[0];
  if (Array.isArray(s.allOf)) return Object.assign({}, ...s.allOf.map((v) => sample(v, depth + 1, seen)).filter((v) => v && typeof v === 'object'));
  const variants = s.oneOf || s.anyOf;
  if (Array.isArray(variants)) {
    const v = variants.find((x) => !(x && x.type === 'null')) || variants[0];
    return sample(v, depth + 1, seen);
  }
  let type = Array.isArray(s.type) ? s.type.find((t) => t !== 'null') || 'null' : s.type;
  if (!type) type = s.properties ? 'object' : 'any';
  switch (type) {
    case 'object': {
      const out = {};
      const required = new Set(s.required || []);
      for (const [name, p] of Object.entries(s.properties || {})) {
        // Nullable optional fields are left out: a client sends what it means.
        if (!required.has(name) && p && Array.isArray(p.type) && p.type.includes('null') && p.example === undefined) continue;
        out[name] = sample(p, depth + 1, seen);
      }
      return out;
    }
    case 'array': return s.items ? [sample(s.items, depth + 1, seen)] : [];
    case 'string':
      return { uuid: '00000000-0000-4000-8000-000000000000', 'date-time': '2026-01-01T00:00:00Z', uri: `${location.origin}/hook`, binary: '<bytes>' }[s.format] || 'string';
    case 'integer': return s.minimum ?? 0;
    case 'number': return s.minimum ?? 0;
    case 'boolean': return false;
    case 'null': return null;
    default: return null;
  }
}

/** The examples of a media type object, else one built from its schema. */
function examplesOf(media) {
  const out = [];
  if (media.example !== undefined) out.push(['example', media.example]);
  for (const [name, ex] of Object.entries(media.examples || {})) {
    const e = deref(ex);
    if (e.value !== undefined) out.push([e.summary || name, e.value]);
  }
  if (!out.length && media.schema) out.push(['example (from the schema)', sample(media.schema)]);
  return out;
}

function contentView(content, cls) {
  return Object.entries(content || {}).map(([type, media]) => {
    const m = media || {};
    const json = /json/.test(type);
    return h('div', { class: `media ${cls}`, dataset: { mediaType: type } },
      h('div', { class: 'media-type' }, h('code', {}, type)),
      m.schema ? schemaView(m.schema, 0, new Set()) : null,
      json ? examplesOf(m).map(([label, value]) => h('details', { class: 'example' }, h('summary', {}, label),
        h('pre', {}, JSON.stringify(value, null, 2)))) : null);
  });
}

function parametersView(params) {
  if (!params.length) return null;
  return [h('h4', {}, 'Parameters'), h('table', { class: 'params' },
    h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'In'), h('th', {}, 'Type and description'))),
    h('tbody', {}, params.map((p) => h('tr', { dataset: { param: p.name } },
      h('td', { class: 'name' }, h('code', {}, p.name), p.required ? h('span', { class: 'req', title: 'required' }, ' *') : null),
      h('td', {}, p.in),
      h('td', {}, h('div', { class: 'type' }, typeLabel(p.schema)), prose(p.description), facts(p.schema))))))];
}

function responsesView(responses) {
  const rows = Object.entries(responses || {}).map(([status, raw]) => {
    const r = deref(raw);
    const headers = Object.entries(r.headers || {}).map(([name, hd]) => {
      const d = deref(hd);
      return h('tr', { dataset: { header: name } }, h('td', { class: 'name' }, h('code', {}, name)),
        h('td', {}, h('div', { class: 'type' }, typeLabel(d.schema)), prose(d.description)));
    });
    const body = contentView(r.content, 'response-body');
    return h('tr', { dataset: { status } },
      h('td', { class: `status s${status[0]}` }, status),
      h('td', {}, prose(r.description),
        body.length ? h('details', { open: /^2/.test(status) }, h('summary', {}, 'body'), body) : null,
        headers.length ? h('details', {}, h('summary', {}, `headers (${headers.length})`),
          h('table', { class: 'props' }, h('tbody', {}, headers))) : null));
  });
  return [h('h4', {}, 'Responses'), h('table', { class: 'responses' }, h('tbody', {}, rows))];
}

/** Who may call: public, or the schemes of the document's `security`. */
function securityLabel(op) {
  const sec = op.security || doc.security || [];
  if (!sec.length || (sec.length === 1 && Object.keys(sec[0]).length === 0)) return 'public';
  const schemes = sec.map((r) => Object.keys(r).join(' + ') || 'none (open mode)');
  return `credentials: ${schemes.join(' or ')}`;
}

function operationView(path, method, op, pathItem, kind) {
  const id = op.operationId ? anchor('op', op.operationId) : anchor('op', `${method}-${path}`);
  const params = new Map();
  for (const p of [...(pathItem.parameters || []), ...(op.parameters || [])].map(deref)) params.set(`${p.in}:${p.name}`, p);
  const body = op.requestBody ? deref(op.requestBody) : null;
  return h('section', { class: 'op', id, dataset: { path, method: method.toUpperCase(), kind } },
    h('h3', {}, h('span', { class: `method m-${method}` }, method.toUpperCase()), ' ', h('code', { class: 'path' }, path),
      op.deprecated ? h('span', { class: 'pill' }, 'deprecated') : null),
    op.summary ? h('div', { class: 'summary' }, op.summary) : null,
    prose(op.description),
    h('div', { class: 'facts' }, kind === 'webhook' ? 'sent by the gateway to your callbackUrl' : securityLabel(op)),
    parametersView([...params.values()]),
    body ? [h('h4', {}, 'Request body', body.required ? h('span', { class: 'req', title: 'required' }, ' *') : null),
      prose(body.description), h('div', { class: 'request-body' }, contentView(body.content, 'request'))] : null,
    responsesView(op.responses));
}

/** [group, [path, method, op, pathItem]] in document order. */
function groups(paths) {
  const out = new Map();
  for (const [path, item] of Object.entries(paths || {})) {
    for (const method of METHODS) {
      const op = item && item[method];
      if (!op) continue;
      const tag = (op.tags && op.tags[0]) || path.split('/')[1] || 'dashboard';
      if (!out.has(tag)) out.set(tag, []);
      out.get(tag).push([path, method, op, item]);
    }
  }
  return out;
}

function render() {
  const info = doc.info || {};
  const toc = [];
  const sections = [];
  const add = (title, gid, ops, kind) => {
    toc.push(h('div', { class: 'toc-group' }, h('a', { href: `#${gid}`, class: 'toc-title' }, title),
      ops.map(([path, method, op]) => h('a', {
        href: `#${op.operationId ? anchor('op', op.operationId) : anchor('op', `${method}-${path}`)}`,
        class: 'toc-op', dataset: { path, method: method.toUpperCase() },
      }, h('span', { class: `method m-${method}` }, method.toUpperCase()), ' ', path))));
    sections.push(h('section', { class: 'group', id: gid }, h('h2', {}, title),
      ops.map(([path, method, op, item]) => operationView(path, method, op, item, kind))));
  };
  for (const [tag, ops] of groups(doc.paths)) add(tag, anchor('tag', tag), ops, 'path');
  const hooks = groups(doc.webhooks);
  if (hooks.size) add('webhooks', 'tag-webhooks', [...hooks.values()].flat(), 'webhook');
  const schemas = Object.entries((doc.components && doc.components.schemas) || {});
  if (schemas.length) {
    toc.push(h('div', { class: 'toc-group' }, h('a', { href: '#schemas', class: 'toc-title' }, `schemas (${schemas.length})`)));
    sections.push(h('section', { class: 'group', id: 'schemas' }, h('h2', {}, 'Schemas'),
      schemas.map(([name, s]) => h('section', { class: 'schema-def', id: anchor('schema', name), dataset: { schema: name } },
        h('h3', {}, h('code', {}, name)), schemaView(s, 0, new Set([`#/components/schemas/${name}`]))))));
  }
  document.getElementById('toc').replaceChildren(...toc);
  document.getElementById('view').replaceChildren(
    h('div', { class: 'panel intro' },
      h('h1', {}, info.title || 'API', ' ', h('span', { class: 'muted' }, info.version || '')),
      h('div', { class: 'facts' }, `OpenAPI ${doc.openapi || '?'}`,
        (doc.servers || []).map((s) => [' · server ', h('code', {}, s.url)])),
      prose(info.description)),
    ...sections);
  document.getElementById('filter').hidden = false;
  document.getElementById('docs').dataset.loaded = '';
  // The fragment names an element that did not exist when the page loaded.
  if (location.hash) document.getElementById(decodeURIComponent(location.hash.slice(1)))?.scrollIntoView();
}

/** Show only the operations whose method, path or summary has the text. */
function filter(text) {
  const q = text.trim().toLowerCase();
  for (const op of document.querySelectorAll('section.op')) {
    const hay = `${op.dataset.method} ${op.dataset.path} ${op.querySelector('.summary')?.textContent || ''}`.toLowerCase();
    op.hidden = Boolean(q) && !hay.includes(q);
  }
  for (const a of document.querySelectorAll('a.toc-op')) {
    const target = document.getElementById(a.getAttribute('href').slice(1));
    a.hidden = Boolean(target && target.hidden);
  }
}

// ---------- loading ----------

function isJwt(c) {
  return /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(c);
}

function loginView(message) {
  const input = h('input', { id: 'credential', type: 'password', autocomplete: 'off', required: true });
  document.getElementById('view').replaceChildren(h('form', {
    class: 'panel login', id: 'login',
    onsubmit: (e) => {
      e.preventDefault();
      sessionStorage.setItem(CREDENTIAL_KEY, input.value.trim());
      load();
    },
  }, h('h1', {}, 'API docs'),
  h('p', {}, 'This gateway needs credentials to read its API document. The key stays in this tab only.'),
  message ? h('div', { class: 'alert', role: 'alert' }, message) : null,
  h('div', { class: 'field' }, h('label', { for: 'credential' }, 'API key or JWT'), input),
  h('p', {}, h('button', { class: 'primary', type: 'submit' }, 'Show the API'))));
  input.focus();
}

async function load() {
  const credential = sessionStorage.getItem(CREDENTIAL_KEY);
  const headers = !credential ? {} : isJwt(credential) ? { Authorization: `Bearer ${credential}` } : { 'X-API-Key': credential };
  let resp;
  try {
    resp = await fetch('/openapi.json', { headers });
  } catch (e) {
    document.getElementById('view').replaceChildren(h('div', { class: 'alert', role: 'alert' }, `The document could not be fetched: ${e.message}`));
    return;
  }
  if (resp.status === 401) {
    if (credential) sessionStorage.removeItem(CREDENTIAL_KEY);
    loginView(credential ? 'That key or token was not accepted.' : null);
    return;
  }
  if (!resp.ok) {
    const body = await resp.json().catch(() => ({}));
    const e = body.error || {};
    document.getElementById('view').replaceChildren(h('div', { class: 'alert', role: 'alert' }, `${e.code || `HTTP ${resp.status}`}: ${e.message || ''}`));
    return;
  }
  doc = await resp.json();
  render();
}

document.getElementById('filter').addEventListener('input', (e) => filter(e.target.value));
load();
