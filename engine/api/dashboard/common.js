// comfyui-gateway's web pages: what the dashboard (app.js) and the API docs page (docs.js)
// share, loaded before either (both are classic deferred scripts, run in order).
'use strict';

/** The sessionStorage entry holding the key or token the user typed (one for both pages). */
const CREDENTIAL_KEY = 'comfyui-gateway.credential';

/** An element: h('a', {href: '#'}, 'text', child, ...). Strings become text nodes. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    // Through the CSSOM: the Content-Security-Policy forbids style attributes.
    else if (k === 'style') Object.assign(el.style, v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
