#!/usr/bin/env node
// A comfyui-gateway client for Node 20+: submit a job with the global `fetch`, follow its
// progress with an `EventSource` (the `eventsource` package: Node has no global one; its
// custom `fetch` sends the API key, and it reconnects with Last-Event-ID by itself), then
// download every output and check its size and ETag against what the API lists.
//
//   npm ci && node client.mjs [--workflow icon_512] [--input prompt="a red fox"] [--out outputs]
//
// GATEWAY_URL (default http://127.0.0.1:3000) and GATEWAY_API_KEY (sent as X-API-Key).
// Exits non-zero on any failure.

import { mkdir, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';
import { EventSource } from 'eventsource';

const BASE = (process.env.GATEWAY_URL ?? 'http://127.0.0.1:3000').replace(/\/$/, '');
const KEY = process.env.GATEWAY_API_KEY;

/** `fetch` with the API key. */
function authFetch(input, init = {}) {
  const headers = { ...init.headers, ...(KEY ? { 'X-API-Key': KEY } : {}) };
  return fetch(input, { ...init, headers });
}

/** A JSON request that must answer one of `ok`. */
async function call(method, path, body, ok = [200]) {
  const init = { method };
  if (body !== undefined) {
    init.headers = { 'content-type': 'application/json' };
    init.body = JSON.stringify(body);
  }
  const resp = await authFetch(`${BASE}${path}`, init);
  const text = await resp.text();
  if (!ok.includes(resp.status)) {
    throw new Error(`${method} ${path} answered ${resp.status}: ${text.slice(0, 300)}`);
  }
  return JSON.parse(text);
}

/** Follow the job's events until the terminal one; resolves with the finished job. */
function follow(jobId) {
  return new Promise((resolve, reject) => {
    const es = new EventSource(`${BASE}/jobs/${jobId}/events`, { fetch: authFetch });
    const parse = (e) => JSON.parse(e.data);
    es.addEventListener('status', (e) => {
      const d = parse(e);
      console.log(`[${e.lastEventId}] ${d.type}: ${d.status}`);
    });
    es.addEventListener('progress', (e) => {
      const d = parse(e);
      console.log(`[${e.lastEventId}] progress node ${d.node}: ${Math.round(d.percent ?? 0)}%`);
    });
    es.addEventListener('output', (e) => {
      const d = parse(e);
      console.log(`[-] output ${d.name} (${d.size} bytes)`);
    });
    for (const terminal of ['succeeded', 'failed', 'canceled']) {
      es.addEventListener(terminal, (e) => {
        // Closed before the server ends the stream, so the EventSource does not reconnect.
        es.close();
        console.log(`[${e.lastEventId}] ${terminal}`);
        resolve(parse(e).job);
      });
    }
    es.addEventListener('error', (err) => {
      // Network errors are retried by the EventSource (with Last-Event-ID); HTTP errors end it.
      if (err.code !== undefined) {
        es.close();
        reject(new Error(`event stream of ${jobId}: HTTP ${err.code} ${err.message ?? ''}`));
      }
    });
  });
}

/** Save every output of the job into `dir`, checking size and ETag (the BLAKE3 hash). */
async function download(jobId, dir) {
  const { outputs } = await call('GET', `/outputs/${jobId}`);
  await mkdir(dir, { recursive: true });
  for (const out of outputs) {
    const resp = await authFetch(new URL(out.url, BASE + '/'));
    if (resp.status !== 200) throw new Error(`GET ${out.url} answered ${resp.status}`);
    const bytes = Buffer.from(await resp.arrayBuffer());
    if (bytes.length !== out.size) throw new Error(`${out.name}: ${bytes.length} bytes, ${out.size} listed`);
    if (resp.headers.get('etag') !== `"${out.hash}"`) throw new Error(`${out.name}: ETag is not the listed hash`);
    const path = join(dir, basename(out.name));
    await writeFile(path, bytes);
    console.log(`saved ${path} (${bytes.length} bytes, ${out.mediaType}, etag ${out.hash})`);
  }
  return outputs;
}

async function main() {
  const { values } = parseArgs({
    options: {
      workflow: { type: 'string', default: 'icon_512' },
      input: { type: 'string', multiple: true, default: [] },
      out: { type: 'string', default: 'outputs' },
    },
  });
  const inputs = {};
  for (const pair of values.input) {
    const i = pair.indexOf('=');
    if (i < 0) throw new Error(`--input ${pair}: expected key=value`);
    const [key, raw] = [pair.slice(0, i), pair.slice(i + 1)];
    try {
      inputs[key] = JSON.parse(raw); // steps=20 stays a number
    } catch {
      inputs[key] = raw;
    }
  }
  if (Object.keys(inputs).length === 0) inputs.prompt = 'a friendly robot mascot, flat icon';

  const submitted = await call('POST', '/jobs', { workflowId: values.workflow, inputs }, [200, 202]);
  console.log(`submitted job ${submitted.jobId} (${values.workflow}): ${submitted.status}`);
  const job = await follow(submitted.jobId);
  if (job.status !== 'succeeded') {
    throw new Error(`job ${job.jobId} ended ${job.status}: ${JSON.stringify(job.error)}`);
  }
  await download(job.jobId, values.out);
  console.log(`job ${job.jobId} succeeded`);
}

main().catch((e) => {
  console.error(`error: ${e.message}`);
  process.exit(1);
});
