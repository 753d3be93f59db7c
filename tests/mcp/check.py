"""The gateway's /mcp through the official MCP Python SDK (tests/it/mcp.rs runs it).

    python check.py URL USER_KEY OTHER_USER_KEY MODE

MODE is the SDK's connect mode: `auto` (protocol 2026-07-28, stateless) or `legacy` (the
initialize handshake and a session). Prints one JSON object of what it saw; the Rust test
checks it.
"""

import asyncio
import base64
import json
import sys

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def connect(url, key, mode):
    http = create_mcp_http_client(headers={"X-API-Key": key})
    return Client(streamable_http_client(url, http_client=http), mode=mode)


async def main(url, key, other_key, mode):
    seen = {}
    async with connect(url, key, mode) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        seen["tools"] = sorted(tools)
        seen["icon_schema_properties"] = sorted(tools["icon_512"].input_schema.get("properties", {}))
        progress = []

        async def on_progress(value, total, message):
            progress.append([value, total, message])

        # A seed of each mode's own: the same call twice is the same job (idempotency).
        seed = 7 if mode == "auto" else 8
        r = await c.call_tool("icon_512", {"prompt": "a lighthouse", "seed": seed}, progress_callback=on_progress)
        images = [b for b in r.content if b.type == "image"]
        links = [b for b in r.content if b.type == "resource_link"]
        png = base64.b64decode(images[0].data) if images else b""
        seen["run"] = {
            "is_error": bool(r.is_error),
            "image_bytes": len(png),
            "png": png[:8] == b"\x89PNG\r\n\x1a\n",
            "image_mime": images[0].mime_type if images else None,
            "link": str(links[0].uri) if links else None,
            "status": r.structured_content.get("status"),
            "progress": len(progress),
        }
        job_id = r.structured_content["jobId"]
        seen["job_id"] = job_id
        again = await c.call_tool("icon_512", {"prompt": "a lighthouse", "seed": seed})
        seen["retried_same_job"] = again.structured_content.get("jobId") == job_id
        bad = await c.call_tool("icon_512", {"prompt": 5})
        seen["bad"] = {"is_error": bool(bad.is_error), "text": bad.content[0].text}
        own = await c.call_tool("get_job", {"jobId": job_id})
        seen["own_get_job"] = {"is_error": bool(own.is_error), "status": (own.structured_content or {}).get("status")}
    async with connect(url, other_key, mode) as c:
        other = await c.call_tool("get_job", {"jobId": job_id})
        seen["other_get_job"] = {"is_error": bool(other.is_error), "text": other.content[0].text}
    print(json.dumps(seen))


asyncio.run(main(*sys.argv[1:5]))
