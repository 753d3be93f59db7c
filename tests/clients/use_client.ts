// A user of the TypeScript types that openapi-typescript generated from the live
// /openapi.json (api.d.ts, beside this file when the test compiles it), through the typed
// fetch client openapi-fetch: register a workflow with the admin key, submit a job with
// typed inputs for a user, follow it to `succeeded`, download its output's bytes and read its
// webhooks. tsc checks it (strict) with the types; node runs the output. Run by
// tests/it/clients.rs:
//
//     node out/use_client.js BASE_URL ADMIN_KEY USER_KEY CALLBACK_URL WORKFLOW_ID

import assert from "node:assert/strict";
import { setTimeout } from "node:timers/promises";

import createClient from "openapi-fetch";

import type { components, paths } from "./api.js";

type Schemas = components["schemas"];

const DEADLINE_MS = 60_000;
// How often the job and its deliveries are looked at while waiting.
const POLL_MS = 50;

const [baseUrl, adminKey, userKey, callbackUrl, workflowId] = process.argv.slice(2);
assert.ok(baseUrl && adminKey && userKey && callbackUrl && workflowId, "usage: BASE_URL ADMIN_KEY USER_KEY CALLBACK_URL WORKFLOW_ID");

const client = (key: string) => createClient<paths>({ baseUrl, headers: { "X-API-Key": key } });
const admin = client(adminKey);
const user = client(userKey);

/** POST /workflows: EmptyImage -> SaveImage, its colour an input, its size defaulted. */
async function register(): Promise<void> {
  const definition: Schemas["WorkflowDefinition"] = {
    id: workflowId,
    name: "Generated-client test",
    workflow: {
      "1": { class_type: "EmptyImage", inputs: { width: "{{size}}", height: "{{size}}", batch_size: 1, color: "{{color}}" } },
      "2": { class_type: "SaveImage", inputs: { images: ["1", 0], filename_prefix: "client" } },
    },
    inputSchema: {
      type: "object",
      properties: { color: { type: "integer", minimum: 0 }, size: { type: "integer", default: 16 } },
      required: ["color"],
      additionalProperties: false,
    },
    defaults: { size: 16 },
  };
  const created = await admin.POST("/workflows", { body: definition });
  assert.equal(created.response.status, 201, JSON.stringify(created.error));
  assert.ok(created.data, "a workflow");
  assert.equal(created.data.id, workflowId);
  assert.equal(created.data.version, 1);
  const read = await admin.GET("/workflows/{id}", { params: { path: { id: workflowId } } });
  assert.ok(read.data, JSON.stringify(read.error));
  assert.deepEqual(read.data.inputSchema["required"], ["color"]);
}

/**
 * POST /jobs on the bundled icon_512 with its request type (JobRequest.icon_512): the
 * workflow id a literal, the inputs typed by its input schema. openapi-typescript types a
 * property that has a default in a schema of components/schemas: required (its
 * defaultNonNullable), so every input is given.
 */
async function submit(): Promise<string> {
  const inputs: Schemas["WorkflowInputs.icon_512"] = {
    prompt: "a lighthouse, flat icon",
    negative_prompt: "blurry",
    checkpoint: "sd_xl_base_1.0.safetensors",
    width: 512,
    height: 512,
    batch_size: 1,
    seed: 7,
    steps: 4,
    cfg: 6,
    sampler_name: "dpmpp_2m",
    scheduler: "karras",
    denoise: 1,
    scale: 1,
  };
  const body: Schemas["JobRequest.icon_512"] = { workflowId: "icon_512", inputs, callbackUrl, cache: false };
  const accepted = await user.POST("/jobs", { body });
  assert.equal(accepted.response.status, 202, JSON.stringify(accepted.error));
  assert.ok(accepted.data && "pollUrl" in accepted.data, "a JobAccepted");
  assert.ok(["queued", "running"].includes(accepted.data.status), accepted.data.status);
  return accepted.data.jobId;
}

/** GET /jobs/{id} until the job is finished; it must have succeeded. */
async function follow(jobId: string): Promise<Schemas["Job"]> {
  const deadline = Date.now() + DEADLINE_MS;
  for (;;) {
    const { data, error } = await user.GET("/jobs/{jobId}", { params: { path: { jobId } } });
    assert.ok(data, JSON.stringify(error));
    if (data.status !== "queued" && data.status !== "running") {
      assert.equal(data.status, "succeeded", JSON.stringify(data));
      return data;
    }
    assert.ok(Date.now() < deadline, `job ${jobId} still ${data.status}`);
    await setTimeout(POLL_MS);
  }
}

/** GET /outputs/{id}/{file}: the first output's bytes, a PNG of the size it says. */
async function download(job: Schemas["Job"]): Promise<Uint8Array> {
  const output = job.outputs[0];
  assert.ok(output, JSON.stringify(job));
  const { data, error, response } = await user.GET("/outputs/{jobId}/{file}", {
    params: { path: { jobId: job.jobId, file: output.name } },
    parseAs: "arrayBuffer",
  });
  assert.ok(data, JSON.stringify(error));
  assert.equal(response.headers.get("content-type"), output.mediaType);
  const bytes = new Uint8Array(data);
  assert.deepEqual([...bytes.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  assert.equal(bytes.length, output.size);
  return bytes;
}

/** GET /jobs/{id}/webhooks until the job.succeeded delivery is delivered. */
async function webhooks(jobId: string): Promise<string[]> {
  const deadline = Date.now() + DEADLINE_MS;
  for (;;) {
    const { data, error } = await user.GET("/jobs/{jobId}/webhooks", { params: { path: { jobId } } });
    assert.ok(data, JSON.stringify(error));
    assert.equal(data.jobId, jobId);
    const succeeded = data.deliveries.find((d) => d.event === "job.succeeded");
    if (succeeded?.state === "delivered") {
      return data.deliveries.map((d) => d.id);
    }
    assert.ok(Date.now() < deadline, `deliveries of ${jobId}: ${JSON.stringify(data.deliveries)}`);
    await setTimeout(POLL_MS);
  }
}

await register();
const jobId = await submit();
const job = await follow(jobId);
const bytes = await download(job);
const ids = await webhooks(jobId);
console.log(`typescript client: job ${jobId} succeeded, ${bytes.length} bytes of PNG, webhooks ${ids.join(",")}`);
