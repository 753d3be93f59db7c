#!/usr/bin/env python3
"""Verify webhook deliveries independently of the gateway's Rust code.

Usage: verify_webhooks.py WHSEC_SECRET < deliveries.json

stdin is a JSON list of {"headers": {name: value}, "body_b64": base64 of the body bytes}.
Each delivery is checked with the `standardwebhooks` package from PyPI (Webhook.verify:
webhook-id, webhook-timestamp within its tolerance, v1 signature), and its X-Signature
with Python's own hmac (sha256=<hex HMAC-SHA256 of the body>, the same key bytes).
Prints "verified N" and exits 0, or names the first failure and exits 1.
"""

import base64
import hashlib
import hmac
import json
import sys

from standardwebhooks.webhooks import Webhook


def main() -> int:
    secret = sys.argv[1]
    key = base64.b64decode(secret.removeprefix("whsec_"))
    webhook = Webhook(secret)
    deliveries = json.load(sys.stdin)
    for i, d in enumerate(deliveries):
        body = base64.b64decode(d["body_b64"])
        headers = d["headers"]
        try:
            webhook.verify(body, headers)
        except Exception as e:  # noqa: BLE001 - any failure is reported the same way
            print(f"delivery {i} ({headers.get('webhook-id')}): standardwebhooks refused it: {e!r}")
            return 1
        expected = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(headers.get("x-signature", ""), expected):
            print(f"delivery {i} ({headers.get('webhook-id')}): X-Signature does not match")
            return 1
    print(f"verified {len(deliveries)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
