#!/usr/bin/env bash
# A tour of the comfyui-gateway REST API with curl: one step per endpoint of the route
# table (engine/api/routes.rs), each checked for the status it must answer.
#
#   GATEWAY_URL=http://127.0.0.1:3000 [GATEWAY_API_KEY=...] [CALLBACK_URL=...] bash examples/curl.sh
#
# GATEWAY_URL      the gateway (default http://127.0.0.1:3000, where scripts/run serves)
# GATEWAY_API_KEY  sent as X-API-Key when set; the admin steps (workflow changes,
#                  /metrics, /audit, /admin/backup, drain/resume) need an admin key (or open mode)
# CALLBACK_URL     a webhook receiver the gateway may post to (see WEBHOOK_ALLOWED_DOMAINS);
#                  without it the webhook steps show a job without deliveries (409 on
#                  redeliver)
#
# Needs bash, curl and python3 (only to pick ids out of JSON). Exits non-zero at the first
# step that gets an unexpected status, after printing the answer.
set -euo pipefail

URL="${GATEWAY_URL:-http://127.0.0.1:3000}"
URL="${URL%/}"
CALLBACK_URL="${CALLBACK_URL:-}"
auth=()
if [ -n "${GATEWAY_API_KEY:-}" ]; then
  auth=(-H "X-API-Key: $GATEWAY_API_KEY")
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
BODY="$work/body"
WF=curl_example_invert

# step EXPECTED_STATUS METHOD PATH [curl args...]: one request; prints it and the start of
# the answer, fails unless the status is EXPECTED_STATUS (a list like "200|202" is allowed).
step() {
  local expect="$1" method="$2" path="$3"
  shift 3
  echo
  echo "==> $method $path   (expect $expect)"
  local code
  local head=(-X "$method")
  [ "$method" = HEAD ] && head=(-I)
  code=$(curl -sS -o "$BODY" -w '%{http_code}' "${head[@]}" "${auth[@]}" "$@" "$URL$path")
  echo "    HTTP $code"
  if [ -s "$BODY" ] && LC_ALL=C grep -Iq . "$BODY"; then
    head -c 400 "$BODY" | tr -d '\r' | sed 's/^/    /'
    echo
  elif [ -s "$BODY" ]; then
    echo "    ($(wc -c <"$BODY") bytes of binary data)"
  fi
  case "|$expect|" in
    *"|$code|"*) ;;
    *)
      echo "FAILED: $method $path answered $code, expected $expect" >&2
      cat "$BODY" >&2
      exit 1
      ;;
  esac
}

# jget FILE PATH: a value from a JSON file by a dotted path (`outputs.0.url`); empty for null.
jget() {
  python3 -c '
import json, sys
v = json.load(open(sys.argv[1]))
for k in filter(None, sys.argv[2].split(".")):
    v = v[int(k)] if isinstance(v, list) else v[k]
print("" if v is None else v if not isinstance(v, (dict, list)) else json.dumps(v))
' "$1" "$2"
}

echo "comfyui-gateway API tour against $URL"

# --- Service -------------------------------------------------------------------------
# 200 when a backend is reachable, 503 until then (jobs wait in the queue meanwhile).
step '200|503' GET /health
# Probes: /livez is 200 while the process answers (liveness), /readyz 200 once the store
# works and a backend is reachable, else 503 naming the failed check (readiness).
step 200 GET /livez
step '200|503' GET /readyz
step 200 GET /capabilities
step '200|503' GET /models   # 503 while no backend answered yet
step 200 GET /openapi.json
step 200 GET /backends
backends=$(python3 -c 'import json,sys; print(" ".join(b["id"] for b in json.load(open(sys.argv[1]))["backends"]))' "$BODY")
echo "    backends: $backends"

# --- Workflows -----------------------------------------------------------------------
step 200 GET /workflows
step 200 GET /workflows/icon_512
# A leftover of an interrupted run is removed first (404 when there is none).
step '204|404' DELETE "/workflows/$WF"
cat >"$work/workflow.json" <<EOF
{
  "id": "$WF",
  "name": "Invert (curl example)",
  "description": "LoadImage -> ImageInvert -> SaveImage",
  "workflow": {
    "1": {"class_type": "LoadImage", "inputs": {"image": "{{image}}"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inverted"}}
  },
  "inputSchema": {
    "type": "object",
    "properties": {"image": {"type": "string", "format": "image"}},
    "required": ["image"],
    "additionalProperties": false
  }
}
EOF
step 201 POST /workflows -H 'content-type: application/json' --data-binary "@$work/workflow.json"
python3 -c '
import json, sys
w = json.load(open(sys.argv[1]))
w.pop("id")
w["description"] = "Inverts the colours of an image (version 2)"
json.dump(w, open(sys.argv[1], "w"))
' "$work/workflow.json"
step 200 PUT "/workflows/$WF" -H 'content-type: application/json' --data-binary "@$work/workflow.json"
echo "    version: $(jget "$BODY" version)"

# --- Jobs ----------------------------------------------------------------------------
step '202|200' POST /jobs -H 'content-type: application/json' \
  -d '{"workflowId": "icon_512", "priority": "high", "inputs": {"prompt": "a lighthouse at dusk"}, "metadata": {"from": "curl.sh"}}'
job=$(jget "$BODY" jobId)
echo "    job: $job"
step 200 GET "/jobs/$job"
# Errors have one envelope: {"error": {code, message, retryable, details?}, "correlationId"}.
step 404 POST /jobs -H 'content-type: application/json' -d '{"workflowId": "no_such_workflow", "inputs": {}}'

echo
echo "==> GET /jobs/$job/events   (Server-Sent Events with curl -N, until the terminal event)"
curl -N -sS --max-time 120 "${auth[@]}" "$URL/jobs/$job/events" | tee "$work/events" | sed 's/^/    /' | cut -c1-200
grep -q '^event: succeeded' "$work/events" || { echo "FAILED: the event stream did not end with succeeded" >&2; exit 1; }
last_id=$(sed -n 's/^id: //p' "$work/events" | tail -n 1 | tr -d '\r')
echo "==> GET /jobs/$job/events with Last-Event-ID: $((last_id - 1))   (resume: only what follows)"
curl -N -sS --max-time 30 "${auth[@]}" -H "Last-Event-ID: $((last_id - 1))" "$URL/jobs/$job/events" | sed 's/^/    /' | cut -c1-200

step 200 GET "/jobs/$job/logs"

echo
echo "# Sync mode: ?wait=60 answers 200 with the finished job"
step 200 POST '/jobs?wait=60' -H 'content-type: application/json' \
  -d '{"workflowId": "icon_512", "inputs": {"prompt": "a red fox, flat icon"}}'
sync_job=$(jget "$BODY" jobId)
echo "    job: $sync_job, status: $(jget "$BODY" status)"
[ "$(jget "$BODY" status)" = succeeded ] || { echo "FAILED: the sync job did not succeed" >&2; exit 1; }

# --- Outputs -------------------------------------------------------------------------
step 200 GET "/outputs/$job"
file_url=$(jget "$BODY" outputs.0.url)
file_hash=$(jget "$BODY" outputs.0.hash)
file_size=$(jget "$BODY" outputs.0.size)
echo "    first output: $file_url ($file_size bytes, BLAKE3 $file_hash)"
step 200 GET "$file_url"
cp "$BODY" "$work/output.png"
[ "$(wc -c <"$work/output.png")" -eq "$file_size" ] || { echo "FAILED: downloaded size differs" >&2; exit 1; }
echo "    saved $(wc -c <"$work/output.png") bytes"
step 200 HEAD "$file_url"
grep -qi "^etag: \"$file_hash\"" "$BODY" || { echo "FAILED: the ETag is not the hash" >&2; exit 1; }
step 206 GET "$file_url" -r 0-99
[ "$(wc -c <"$BODY")" -eq 100 ] || { echo "FAILED: the range is not 100 bytes" >&2; exit 1; }
step 304 GET "$file_url" -H "If-None-Match: \"$file_hash\""
step 200 GET "$file_url?format=base64"
step 200 GET "/jobs/$job?include=base64"

# --- A multipart job: the image uploaded as a file part ------------------------------
# 200 instead of 202 when the result cache already holds this job's result.
step '202|200' POST /jobs -F "request={\"workflowId\": \"$WF\", \"inputs\": {}};type=application/json" \
  -F "image=@$work/output.png;type=image/png"
inv_job=$(jget "$BODY" jobId)
echo "    job: $inv_job"
for _ in $(seq 1 300); do
  curl -fsS "${auth[@]}" -o "$BODY" "$URL/jobs/$inv_job"
  case "$(jget "$BODY" status)" in succeeded | failed | canceled) break ;; esac
  sleep 0.2
done
echo "    status: $(jget "$BODY" status)"
[ "$(jget "$BODY" status)" = succeeded ] || { echo "FAILED: the multipart job did not succeed" >&2; exit 1; }

# --- Listing with filters and a cursor -----------------------------------------------
step 200 GET '/jobs?status=succeeded&workflowId=icon_512&after=2020-01-01T00:00:00Z&limit=1'
cursor=$(jget "$BODY" nextCursor)
echo "    nextCursor: $cursor"
[ -n "$cursor" ] || { echo "FAILED: two succeeded icon_512 jobs give a next page" >&2; exit 1; }
step 200 GET "/jobs?status=succeeded&workflowId=icon_512&limit=1&cursor=$cursor"

# --- Cancel: the backends drained so that the job stays queued ------------------------
for b in $backends; do step 200 POST "/backends/$b/drain"; done
step 202 POST /jobs -H 'content-type: application/json' \
  -d '{"workflowId": "icon_512", "inputs": {"prompt": "never mind"}, "cache": false}'
cancel_job=$(jget "$BODY" jobId)
step 200 POST "/jobs/$cancel_job/cancel"
echo "    status: $(jget "$BODY" status)"
# Bulk: every queued job of a workflow at once (your own; an admin's: anyone's).
for seed in 1 2; do
  step 202 POST /jobs -H 'content-type: application/json' \
    -d "{\"workflowId\": \"icon_512\", \"inputs\": {\"prompt\": \"never mind $seed\"}, \"cache\": false}"
done
step 200 POST /jobs/cancel -H 'content-type: application/json' \
  -d '{"status": ["queued"], "workflowId": "icon_512"}'
echo "    canceled: $(jget "$BODY" canceled)"
for b in $backends; do step 200 POST "/backends/$b/resume"; done

# --- Webhooks ------------------------------------------------------------------------
if [ -n "$CALLBACK_URL" ]; then
  step 200 POST '/jobs?wait=60' -H 'content-type: application/json' \
    -d "{\"workflowId\": \"icon_512\", \"inputs\": {\"prompt\": \"a webhook\"}, \"callbackUrl\": \"$CALLBACK_URL\"}"
  hook_job=$(jget "$BODY" jobId)
  # The delivery is created with the job's success; it is sent soon after.
  for _ in $(seq 1 100); do
    curl -fsS "${auth[@]}" -o "$BODY" "$URL/jobs/$hook_job/webhooks"
    [ "$(jget "$BODY" deliveries.0.state)" = delivered ] && break
    sleep 0.1
  done
  step 200 GET "/jobs/$hook_job/webhooks"
  step 202 POST "/jobs/$hook_job/webhook/redeliver"
else
  echo
  echo "# CALLBACK_URL is not set: a job without webhooks (redeliver answers 409)"
  step 200 GET "/jobs/$job/webhooks"
  step 409 POST "/jobs/$job/webhook/redeliver"
fi

# --- Agents: the Model Context Protocol (MCP clients speak it; see the README) ----------
# One stateless JSON-RPC call (protocol 2026-07-28): the tools, one per workflow.
step 200 POST /mcp -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
  -H 'MCP-Protocol-Version: 2026-07-28' -H 'Mcp-Method: tools/list' \
  -d '{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}'
# The gateway serves MCP without sessions: no stream to open, no session to close.
step 405 GET /mcp -H 'Accept: text/event-stream'
step 405 DELETE /mcp

# --- Operators -----------------------------------------------------------------------
step 200 GET /metrics
step 200 GET '/audit?limit=5'
# A consistent copy of the database while it runs, checked before it is sent (507 when the
# disk has no room for a copy beside the database).
step '200|507' POST /admin/backup
step 204 DELETE "/workflows/$WF"

# --- The dashboard and the API docs: pages and files are public (they ask for a key) --
step 200 GET /
step 200 GET /ui/app.js
# The API's documentation, rendered from /openapi.json in the browser.
step 200 GET /docs
step 200 HEAD /docs

# --- Import a ComfyUI workflow: a proposed template and input schema (admin) ---------
step 200 POST /workflows/import -H 'content-type: application/json' \
  -d '{"id": "curl_example_import", "register": false, "workflow": {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "imported"}}}}'

echo
echo "OK: every step answered as expected (jobs $job, $sync_job, $inv_job; canceled $cancel_job)"
