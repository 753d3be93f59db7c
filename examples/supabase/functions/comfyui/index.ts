// A Supabase Edge Function in front of comfyui-gateway: no framework, no imports.
//
//   POST /comfyui          {"prompt": "a red fox", "seed": 1}  → the gateway's job (202)
//                          or {"workflowId": "icon_512", "inputs": {...}}
//   POST /comfyui/webhook  the gateway's callback when the job ends: its Standard Webhooks
//                          signature checked (401 if bad or older than 5 minutes), then
//                          the job logged and, with SUPABASE_URL and
//                          SUPABASE_SERVICE_ROLE_KEY, upserted into the table `comfyui_jobs`.
//
// Environment: GATEWAY_URL, GATEWAY_API_KEY (sent as X-API-Key), WEBHOOK_SECRET (the
// gateway's, `whsec_<base64>`), FUNCTION_URL (this function's public URL, e.g.
// https://<project>.supabase.co/functions/v1/comfyui); optional SUBMIT_TOKEN (when set,
// submitting needs `Authorization: Bearer <SUBMIT_TOKEN>`).
// Outside Supabase: `PORT=8000 deno run --allow-net --allow-env index.ts`.

const TOLERANCE_S = 5 * 60;
const DEFAULT_WORKFLOW = "icon_512";
const TABLE = "comfyui_jobs";

const env = (name: string) => Deno.env.get(name) ?? "";

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json" },
  });
}

/** Submit `{workflowId?, inputs?, ...more inputs}` to the gateway with our callback URL. */
async function submit(req: Request): Promise<Response> {
  const token = env("SUBMIT_TOKEN");
  if (token && req.headers.get("authorization") !== `Bearer ${token}`) {
    return json(401, {
      error: "missing or wrong Authorization: Bearer <SUBMIT_TOKEN>",
    });
  }
  const missing = ["GATEWAY_URL", "FUNCTION_URL"].filter((n) => !env(n));
  if (missing.length) {
    return json(500, { error: `not configured: set ${missing.join(", ")}` });
  }

  let body: Record<string, unknown>;
  try {
    body = await req.json();
  } catch {
    return json(400, {
      error: 'the body must be JSON, e.g. {"prompt": "a red fox"}',
    });
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    return json(400, { error: "the body must be a JSON object" });
  }
  const { workflowId = DEFAULT_WORKFLOW, inputs = {}, ...shorthand } = body;
  const job = {
    workflowId,
    inputs: { ...shorthand, ...(inputs as object) },
    callbackUrl: `${env("FUNCTION_URL").replace(/\/$/, "")}/webhook`,
  };
  let resp: Response;
  try {
    resp = await fetch(`${env("GATEWAY_URL").replace(/\/$/, "")}/jobs`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "x-api-key": env("GATEWAY_API_KEY"),
      },
      body: JSON.stringify(job),
    });
  } catch (e) {
    return json(502, { error: `the gateway is unreachable: ${e}` });
  }
  // 202 {jobId, status, pollUrl} (200 for a cached result), or the gateway's own error.
  return new Response(resp.body, {
    status: resp.status,
    headers: {
      "content-type": resp.headers.get("content-type") ?? "application/json",
    },
  });
}

const encoder = new TextEncoder();
const base64 = (s: string) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));

/** Why a delivery is refused, or null when `webhook-signature` holds a
 * `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` made with the secret. */
async function verify(
  secret: string,
  headers: Headers,
  body: Uint8Array,
): Promise<string | null> {
  const [id, ts, sigs] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
  ].map((h) => headers.get(h));
  if (!id || !ts || !sigs) {
    return "missing webhook-id, webhook-timestamp or webhook-signature";
  }
  if (!(Math.abs(Date.now() / 1000 - Number(ts)) <= TOLERANCE_S)) {
    return `webhook-timestamp ${ts} is not within ${TOLERANCE_S} s of now`;
  }
  const raw = secret.startsWith("whsec_")
    ? base64(secret.slice(6))
    : encoder.encode(secret);
  const key = await crypto.subtle.importKey(
    "raw",
    raw,
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["verify"],
  );
  const signed = new Uint8Array([...encoder.encode(`${id}.${ts}.`), ...body]);
  for (const entry of sigs.split(" ")) {
    const [version, sig] = entry.split(",", 2);
    if (version !== "v1" || !sig) continue;
    try {
      // crypto.subtle.verify compares in constant time; atob throws on bad base64.
      if (await crypto.subtle.verify("HMAC", key, base64(sig), signed)) {
        return null;
      }
    } catch {
      // not base64: no match
    }
  }
  return "no v1 signature matches";
}

/** Upsert the finished job into `comfyui_jobs` through PostgREST (the Supabase REST API). */
async function store(job: Record<string, unknown>): Promise<void> {
  const url = env("SUPABASE_URL"), key = env("SUPABASE_SERVICE_ROLE_KEY");
  if (!url || !key) return;
  const row = {
    job_id: job.jobId,
    status: job.status,
    workflow_id: job.workflowId,
    outputs: job.outputs ?? [],
    error: job.error ?? null,
    finished_at: job.finishedAt ?? null,
  };
  const resp = await fetch(`${url.replace(/\/$/, "")}/rest/v1/${TABLE}`, {
    method: "POST",
    headers: {
      apikey: key,
      // A legacy service_role key is a JWT, sent as the bearer too; an sb_secret_ key is not.
      ...(key.startsWith("eyJ") ? { authorization: `Bearer ${key}` } : {}),
      "content-type": "application/json",
      // A retried delivery updates the same row (job_id is the primary key).
      prefer: "resolution=merge-duplicates,return=minimal",
    },
    body: JSON.stringify(row),
  });
  if (!resp.ok) {
    throw new Error(
      `${TABLE} answered ${resp.status}: ${(await resp.text()).slice(0, 200)}`,
    );
  }
}

async function webhook(req: Request): Promise<Response> {
  if (!env("WEBHOOK_SECRET")) {
    return json(500, { error: "not configured: set WEBHOOK_SECRET" });
  }
  const body = new Uint8Array(await req.arrayBuffer());
  const refused = await verify(env("WEBHOOK_SECRET"), req.headers, body);
  if (refused) {
    console.log(`webhook refused: ${refused}`);
    return json(401, { error: refused });
  }
  let event: { type?: string; data?: Record<string, unknown> };
  try {
    event = JSON.parse(new TextDecoder().decode(body));
  } catch {
    return json(400, { error: "the body is not JSON" });
  }
  const job = event.data ?? {};
  const outputs = Array.isArray(job.outputs) ? job.outputs : [];
  try {
    await store(job);
  } catch (e) {
    // Not 2xx: the gateway delivers again later (same webhook-id).
    console.log(`webhook: job ${job.jobId} not stored: ${e}`);
    return json(502, { error: `could not store the job: ${e}` });
  }
  console.log(
    `webhook: job ${job.jobId} ${job.status}, ${outputs.length} output(s) (${event.type})`,
  );
  return new Response(null, { status: 204 });
}

const onError = (e: unknown) => json(500, { error: `${e}` });
Deno.serve({ port: Number(Deno.env.get("PORT") ?? 8000), onError }, (req) => {
  if (req.method !== "POST") return json(405, { error: "use POST" });
  return new URL(req.url).pathname.endsWith("/webhook")
    ? webhook(req)
    : submit(req);
});
