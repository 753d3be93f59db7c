#!/usr/bin/env python3
"""A small comfyui-gateway client with `requests`.

    python gateway_client.py submit --input prompt="a red fox" --out outputs/
    python gateway_client.py receive --port 8099 --secret "$WEBHOOK_SECRET"
    python gateway_client.py demo --secret "$WEBHOOK_SECRET"

`submit` posts a job, follows its progress over Server-Sent Events (parsed by hand from
`requests.get(..., stream=True)`, resumed with `Last-Event-ID` when the connection drops),
then downloads every output into a directory and checks its size and BLAKE3 hash against
what the API lists. `receive` is a webhook receiver (`http.server`) that verifies each
delivery's Standard Webhooks signature and timestamp before accepting it. `demo` does both:
a receiver in a thread and a job whose `callbackUrl` points at it (the gateway must allow
127.0.0.1 as a callback host: `WEBHOOK_ALLOWED_DOMAINS=127.0.0.1`).

The gateway is `--url` (env `GATEWAY_URL`, default http://127.0.0.1:3000) and the key
`--api-key` (env `GATEWAY_API_KEY`, sent as `X-API-Key`). Exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urljoin

import requests

TERMINAL_EVENTS = ("succeeded", "failed", "canceled")


class GatewayError(Exception):
    """A request answered with an error, or a job that did not succeed."""


# --- The REST client ---------------------------------------------------------------------


class Gateway:
    """The few calls a client needs: submit, follow, download."""

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = requests.Session()
        if api_key:
            self.session.headers["X-API-Key"] = api_key

    def _check(self, resp: requests.Response, *ok: int) -> requests.Response:
        if resp.status_code not in ok:
            try:
                err = resp.json()["error"]
                detail = f"{err['code']}: {err['message']}"
            except (ValueError, KeyError, TypeError):
                detail = resp.text[:300]
            raise GatewayError(f"{resp.request.method} {resp.url} answered {resp.status_code}: {detail}")
        return resp

    def submit(self, workflow_id: str, inputs: dict, callback_url: str | None = None, wait_s: int | None = None) -> dict:
        """POST /jobs: 202 {jobId, status, pollUrl}, or with wait_s 200 with the finished job."""
        body: dict = {"workflowId": workflow_id, "inputs": inputs}
        if callback_url:
            body["callbackUrl"] = callback_url
        params = {"wait": wait_s} if wait_s else None
        resp = self.session.post(f"{self.url}/jobs", json=body, params=params, timeout=self.timeout_s + (wait_s or 0))
        return self._check(resp, 200, 202).json()

    def job(self, job_id: str) -> dict:
        """GET /jobs/{id}."""
        return self._check(self.session.get(f"{self.url}/jobs/{job_id}", timeout=self.timeout_s), 200).json()

    def events(self, job_id: str, drop_after: int | None = None, reconnects_max: int = 10):
        """Yield (id, event, data) of the job's Server-Sent Events until the terminal one.

        A connection that drops (or ends early) is reopened with `Last-Event-ID: <last id
        seen>`, so no event is lost or repeated. `drop_after` closes the first connection
        after that many events, to show the resume.
        """
        last_id: str | None = None
        retry_s = 2.0
        n_reconnects = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            try:
                with self.session.get(
                    f"{self.url}/jobs/{job_id}/events", headers=headers, stream=True, timeout=(10, 60)
                ) as resp:
                    self._check(resp, 200)
                    n_events = 0
                    for event_id, event, data, retry_ms in _parse_sse(resp):
                        if retry_ms is not None:
                            retry_s = retry_ms / 1000
                            continue
                        if event_id is not None:
                            last_id = event_id
                        yield event_id, event, data
                        if event in TERMINAL_EVENTS:
                            return
                        n_events += 1
                        if drop_after is not None and n_events >= drop_after:
                            drop_after = None
                            print(f"(dropping the connection after {n_events} events, to show the resume)")
                            break
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
                print(f"(connection lost: {e})")
            n_reconnects += 1
            if n_reconnects > reconnects_max:
                raise GatewayError(f"the event stream of {job_id} dropped {n_reconnects} times")
            print(f"(reconnecting with Last-Event-ID: {last_id})")
            # A deliberate drop reconnects at once; a lost connection waits the server's `retry:`.
            time.sleep(0 if n_reconnects == 1 and last_id is not None else retry_s)

    def download_outputs(self, job_id: str, dest: Path) -> list[Path]:
        """Save every output of the job into `dest`, each checked against its listed size and
        BLAKE3 hash (which is also its ETag)."""
        listing = self._check(self.session.get(f"{self.url}/outputs/{job_id}", timeout=self.timeout_s), 200).json()
        dest.mkdir(parents=True, exist_ok=True)
        saved = []
        for out in listing["outputs"]:
            resp = self._check(self.session.get(urljoin(self.url + "/", out["url"]), timeout=self.timeout_s), 200)
            data = resp.content
            if len(data) != out["size"]:
                raise GatewayError(f"{out['name']}: {len(data)} bytes downloaded, {out['size']} listed")
            digest = blake3_hex(data)
            if digest != out["hash"]:
                raise GatewayError(f"{out['name']}: BLAKE3 {digest} differs from the listed {out['hash']}")
            if resp.headers.get("ETag") != f'"{out["hash"]}"':
                raise GatewayError(f"{out['name']}: ETag {resp.headers.get('ETag')} is not the hash")
            path = dest / Path(out["name"]).name
            path.write_bytes(data)
            print(f"saved {path} ({len(data)} bytes, {out['mediaType']}, blake3 {digest} verified)")
            saved.append(path)
        return saved


def _parse_sse(resp: requests.Response):
    """Parse a text/event-stream body as it arrives: yields (id, event, data, retry_ms) per
    event; a `retry:` field alone yields (None, None, None, ms). Comments (`: ping`) skipped."""
    buf = b""
    event_id, event, data_lines = None, None, []
    for chunk in resp.iter_content(chunk_size=None):
        buf += chunk
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line, buf = buf[:nl].rstrip(b"\r").decode("utf-8"), buf[nl + 1 :]
            if line == "":  # a blank line ends the event
                if data_lines:
                    yield event_id, event or "message", json.loads("\n".join(data_lines)), None
                event_id, event, data_lines = None, None, []
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "id":
                event_id = value
            elif field == "event":
                event = value
            elif field == "data":
                data_lines.append(value)
            elif field == "retry" and value.isdigit():
                yield None, None, None, int(value)


# --- Webhook signatures (Standard Webhooks, as the gateway signs them) -------------------


class WebhookVerificationError(Exception):
    """A delivery that must be refused."""


def verify_webhook(secret: str, headers, body: bytes, tolerance_s: int = 300, now: float | None = None) -> dict:
    """Check a delivery as the gateway signs it and return its JSON payload.

    `webhook-signature` holds space-separated `v1,<base64 HMAC-SHA256>` entries of
    `"<webhook-id>.<webhook-timestamp>.<body>"`; the key is the base64 after `whsec_` of
    `WEBHOOK_SECRET` (any other secret is used as raw UTF-8 bytes). `webhook-timestamp`
    (Unix seconds) must be within `tolerance_s` of now, so a captured delivery cannot be
    replayed later. Deduplicate accepted deliveries on `webhook-id` (retries repeat it).
    """
    h = {k.lower(): v for k, v in dict(headers).items()}
    msg_id, timestamp, signatures = h.get("webhook-id"), h.get("webhook-timestamp"), h.get("webhook-signature")
    if not (msg_id and timestamp and signatures):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        ts = int(timestamp.strip())
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a Unix time in seconds") from None
    skew = (time.time() if now is None else now) - ts
    if abs(skew) > tolerance_s:
        raise WebhookVerificationError(f"webhook-timestamp is {skew:.0f} s away from now (tolerance {tolerance_s} s)")
    key = base64.b64decode(secret[len("whsec_") :]) if secret.startswith("whsec_") else secret.encode()
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(mac).decode()
    for entry in signatures.split(" "):
        version, _, sig = entry.partition(",")
        if version == "v1" and hmac.compare_digest(sig, expected):
            return json.loads(body)
    raise WebhookVerificationError("no v1 signature matches")


def make_receiver(secret: str, store: Path | None = None, tolerance_s: int = 300, on_delivery=None):
    """A request handler class: verifies each POST, answers 204 (accepted), 200 (a
    duplicate webhook-id, accepted before) or 401 (refused), and stores accepted bodies as
    `<store>/<webhook-id>.json` with their headers in `<webhook-id>.headers.json`."""
    seen: set[str] = set()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                payload = verify_webhook(secret, self.headers, body, tolerance_s)
            except (WebhookVerificationError, ValueError) as e:
                print(f"rejected {self.headers.get('webhook-id')}: {e}", flush=True)
                self.send_response(401)
                self.end_headers()
                return
            msg_id = self.headers["webhook-id"]
            with lock:
                duplicate = msg_id in seen
                seen.add(msg_id)
            data = payload.get("data", {})
            note = " (duplicate)" if duplicate else ""
            print(f"accepted {msg_id} {payload.get('type')} job={data.get('jobId')} status={data.get('status')}{note}",
                  flush=True)
            if store is not None and not duplicate:
                store.mkdir(parents=True, exist_ok=True)
                (store / f"{msg_id}.json").write_bytes(body)
                (store / f"{msg_id}.headers.json").write_text(json.dumps(dict(self.headers.items())))
            if on_delivery is not None and not duplicate:
                on_delivery(payload)
            self.send_response(200 if duplicate else 204)
            self.end_headers()

        def log_message(self, *args):  # quiet: one line per delivery is printed above
            pass

    return Handler


# --- BLAKE3 (the gateway's content hash) -------------------------------------------------


def blake3_hex(data: bytes) -> str:
    """BLAKE3-256 of `data` in hex: the `blake3` package when installed, else the pure
    Python version below (fine for images; about 1 MB/s)."""
    try:
        import blake3  # type: ignore[import-not-found]

        return blake3.blake3(data).hexdigest()
    except ImportError:
        return _blake3_pure(data).hex()


_IV = (0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19)
_PERM = (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8)
_CHUNK_START, _CHUNK_END, _PARENT, _ROOT = 1, 2, 4, 8
_M = 0xFFFFFFFF


def _compress(cv, m, counter, block_len, flags):
    s = list(cv) + list(_IV[:4]) + [counter & _M, counter >> 32, block_len, flags]

    def g(a, b, c, d, x, y):
        s[a] = (s[a] + s[b] + x) & _M
        t = s[d] ^ s[a]
        s[d] = (t >> 16) | (t << 16) & _M
        s[c] = (s[c] + s[d]) & _M
        t = s[b] ^ s[c]
        s[b] = (t >> 12) | (t << 20) & _M
        s[a] = (s[a] + s[b] + y) & _M
        t = s[d] ^ s[a]
        s[d] = (t >> 8) | (t << 24) & _M
        s[c] = (s[c] + s[d]) & _M
        t = s[b] ^ s[c]
        s[b] = (t >> 7) | (t << 25) & _M

    for r in range(7):
        g(0, 4, 8, 12, m[0], m[1])
        g(1, 5, 9, 13, m[2], m[3])
        g(2, 6, 10, 14, m[4], m[5])
        g(3, 7, 11, 15, m[6], m[7])
        g(0, 5, 10, 15, m[8], m[9])
        g(1, 6, 11, 12, m[10], m[11])
        g(2, 7, 8, 13, m[12], m[13])
        g(3, 4, 9, 14, m[14], m[15])
        if r < 6:
            m = [m[i] for i in _PERM]
    return [s[i] ^ s[i + 8] for i in range(8)]


def _words(block: bytes):
    return list(int.from_bytes(block[i : i + 4], "little") for i in range(0, 64, 4))


def _chunk_cv(chunk: bytes, counter: int, root: bool):
    cv = _IV
    blocks = [chunk[i : i + 64] for i in range(0, len(chunk), 64)] or [b""]
    for i, block in enumerate(blocks):
        flags = (_CHUNK_START if i == 0 else 0) | (_CHUNK_END if i == len(blocks) - 1 else 0)
        if root and i == len(blocks) - 1:
            flags |= _ROOT
        cv = _compress(cv, _words(block.ljust(64, b"\0")), counter, len(block), flags)
    return cv


def _blake3_pure(data: bytes) -> bytes:
    n_chunks = max(1, -(-len(data) // 1024))

    def subtree(first: int, n: int, root: bool):
        if n == 1:
            return _chunk_cv(data[first * 1024 : (first + 1) * 1024], first, root)
        left_n = 1 << ((n - 1).bit_length() - 1)  # the largest power of two below n
        block = subtree(first, left_n, False) + subtree(first + left_n, n - left_n, False)
        return _compress(_IV, block, 0, 64, _PARENT | (_ROOT if root else 0))

    return b"".join(w.to_bytes(4, "little") for w in subtree(0, n_chunks, True))


# --- Command line ------------------------------------------------------------------------


def _parse_inputs(pairs: list[str]) -> dict:
    """`key=value` pairs; a value that is JSON (`steps=20`, `scale=2`) keeps its type."""
    inputs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--input {pair!r}: expected key=value")
        try:
            inputs[key] = json.loads(value)
        except ValueError:
            inputs[key] = value
    return inputs


def run_job(gw: Gateway, args, callback_url: str | None = None) -> dict:
    """Submit, follow to the end, download; the finished job."""
    inputs = _parse_inputs(args.input) or {"prompt": "a friendly robot mascot, flat icon"}
    submitted = gw.submit(args.workflow, inputs, callback_url=callback_url)
    job_id = submitted["jobId"]
    print(f"submitted job {job_id} ({args.workflow}): {submitted['status']}")
    job = None
    for event_id, event, data in gw.events(job_id, drop_after=args.drop_after):
        if event == "progress":
            print(f"[{event_id}] progress node {data.get('node')}: {data.get('percent', 0):.0f}%")
        elif event == "status":
            print(f"[{event_id}] {data['type']}: {data['status']}")
        elif event == "output":
            print(f"[-] output {data['name']} ({data['size']} bytes)")
        elif event in TERMINAL_EVENTS:
            job = data["job"]
            print(f"[{event_id}] {event}")
    if job is None or job["status"] != "succeeded":
        error = (job or {}).get("error")
        raise GatewayError(f"job {job_id} ended {job and job['status']}: {error}")
    gw.download_outputs(job_id, Path(args.out))
    print(f"job {job_id} succeeded")
    return job


def cmd_submit(args) -> int:
    run_job(Gateway(args.url, args.api_key), args, callback_url=args.callback_url)
    return 0


def cmd_receive(args) -> int:
    handler = make_receiver(args.secret, Path(args.store) if args.store else None, args.tolerance)
    server = ThreadingHTTPServer((args.host, args.port), handler)
    print(f"listening on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def cmd_demo(args) -> int:
    gw = Gateway(args.url, args.api_key)
    received = []
    arrived = threading.Event()

    def on_delivery(payload):
        received.append(payload)
        if payload.get("type") in ("job.succeeded", "job.failed", "job.canceled"):
            arrived.set()

    callback_url = None
    if args.secret:
        server = ThreadingHTTPServer(("127.0.0.1", 0), make_receiver(args.secret, on_delivery=on_delivery))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        callback_url = f"http://127.0.0.1:{server.server_address[1]}/webhook"
        print(f"webhook receiver on {callback_url}")
    job = run_job(gw, args, callback_url=callback_url)
    if callback_url:
        if not arrived.wait(30):
            raise GatewayError("no verified webhook arrived within 30 s")
        final = [p for p in received if p["type"] == "job.succeeded"]
        if not final or final[0]["data"]["jobId"] != job["jobId"]:
            raise GatewayError(f"unexpected webhooks: {[p['type'] for p in received]}")
        print(f"webhook job.succeeded for {job['jobId']} verified")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=os.environ.get("GATEWAY_URL", "http://127.0.0.1:3000"))
    p.add_argument("--api-key", default=os.environ.get("GATEWAY_API_KEY"))
    sub = p.add_subparsers(dest="command", required=True)

    def job_args(sp):
        sp.add_argument("--workflow", default="icon_512")
        sp.add_argument("--input", action="append", default=[], metavar="KEY=VALUE")
        sp.add_argument("--out", default="outputs", help="directory for the outputs")
        sp.add_argument("--drop-after", type=int, metavar="N", help="drop the event stream after N events (resume demo)")

    s = sub.add_parser("submit", help="submit a job, follow its progress, download its outputs")
    job_args(s)
    s.add_argument("--callback-url")
    s.set_defaults(func=cmd_submit)

    r = sub.add_parser("receive", help="receive and verify webhooks")
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("--port", type=int, default=8099)
    r.add_argument("--secret", required=True, help="the gateway's WEBHOOK_SECRET")
    r.add_argument("--store", help="directory for the accepted deliveries")
    r.add_argument("--tolerance", type=int, default=300, help="seconds a timestamp may be off")
    r.set_defaults(func=cmd_receive)

    d = sub.add_parser("demo", help="submit with a callback to an in-process receiver; all of the above")
    job_args(d)
    d.add_argument("--secret", default=os.environ.get("WEBHOOK_SECRET"), help="the gateway's WEBHOOK_SECRET")
    d.set_defaults(func=cmd_demo)

    args = p.parse_args(argv)
    try:
        return args.func(args)
    except (GatewayError, requests.RequestException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
