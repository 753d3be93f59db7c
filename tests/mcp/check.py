"""The gateway's /mcp through the official MCP Python SDK (tests/it/mcp.rs runs it).

    python check.py URL USER_KEY OTHER_USER_KEY ADMIN_KEY MODE [BRIDGE]

URL is the gateway's /mcp. MODE is `auto` (the SDK's default: protocol 2026-07-28,
stateless), `legacy` (the initialize handshake) or `stdio` (the SDK launches BRIDGE, the
gateway binary, as `BRIDGE mcp --url URL --api-key KEY` and speaks MCP over its stdin and
stdout, protocol 2026-07-28). Prints one JSON object of what it saw; the Rust test checks it.
"""

import asyncio
import base64
import json
import sys

import httpx2 as httpx
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}},
}


def connect(url, key, mode, bridge):
    if mode == "stdio":
        params = StdioServerParameters(command=bridge, args=["mcp", "--url", url, "--api-key", key])
        return Client(params, mode="auto")
    http = create_mcp_http_client(headers={"X-API-Key": key})
    return Client(streamable_http_client(url, http_client=http), mode=mode)


def image_and_links(result):
    images = [b for b in result.content if b.type == "image"]
    links = [b for b in result.content if b.type == "resource_link"]
    png = base64.b64decode(images[0].data) if images else b""
    return {
        "image_bytes": len(png),
        "png": png[:8] == b"\x89PNG\r\n\x1a\n",
        "image_mime": images[0].mime_type if images else None,
        "link": str(links[0].uri) if links else None,
    }


async def main(url, key, other_key, admin_key, mode, bridge=None):
    base = url.removesuffix("/mcp")
    rest = httpx.AsyncClient(base_url=base, timeout=30)
    seen = {}
    async with connect(url, key, mode, bridge) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        seen["tools"] = sorted(tools)
        seen["icon_schema_properties"] = sorted(tools["icon_512"].input_schema.get("properties", {}))
        listed = await c.call_tool("list_workflows", {})
        seen["workflow_tools"] = {w["id"]: w["tool"] for w in listed.structured_content["workflows"]}
        progress = []

        async def on_progress(value, total, message):
            progress.append([value, total, message])

        # A seed of each mode's own: the same call twice is the same job (idempotency).
        seed = {"auto": 7, "legacy": 8, "stdio": 9}[mode]
        r = await c.call_tool("icon_512", {"prompt": "a lighthouse", "seed": seed}, progress_callback=on_progress)
        seen["run"] = {
            "is_error": bool(r.is_error),
            "status": r.structured_content.get("status"),
            "progress": len(progress),
            "progress_increasing": all(a[0] < b[0] for a, b in zip(progress, progress[1:])),
            **image_and_links(r),
        }
        job_id = r.structured_content["jobId"]
        seen["job_id"] = job_id
        again = await c.call_tool("icon_512", {"prompt": "a lighthouse", "seed": seed})
        seen["retried_same_job"] = again.structured_content.get("jobId") == job_id
        bad = await c.call_tool("icon_512", {"prompt": 5})
        seen["bad"] = {"is_error": bool(bad.is_error), "text": bad.content[0].text}
        try:
            await c.call_tool("no_such_tool", {})
            seen["unknown_tool"] = "answered"
        except Exception as e:  # the SDK raises the JSON-RPC error
            seen["unknown_tool"] = str(e)
        own = await c.call_tool("get_job", {"jobId": job_id})
        seen["own_get_job"] = {"is_error": bool(own.is_error), "status": (own.structured_content or {}).get("status")}
        out = await c.call_tool("get_output", {"jobId": job_id})
        seen["get_output"] = {"is_error": bool(out.is_error), **image_and_links(out)}
        name = out.structured_content["outputs"][0]["name"]
        missing = await c.call_tool("get_output", {"jobId": job_id, "name": "nope.png"})
        seen["get_output_missing"] = missing.content[0].text
        own_list = await c.call_tool("list_jobs", {"limit": 5})
        seen["own_list"] = [j["jobId"] for j in own_list.structured_content["jobs"]]
        bad_list = await c.call_tool("list_jobs", {"limit": 5000})
        seen["bad_list"] = bad_list.content[0].text
        # A job submitted over REST, canceled through MCP by its owner only.
        queued = await rest.post(
            "/jobs",
            headers={"X-API-Key": key},
            json={"workflowId": "icon_512", "inputs": {"prompt": "to cancel", "seed": seed + 100}},
        )
        queued_id = queued.json()["jobId"]
        if mode != "stdio":
            async with connect(url, other_key, mode, bridge) as o:
                other = await o.call_tool("get_job", {"jobId": job_id})
                seen["other_get_job"] = {"is_error": bool(other.is_error), "text": other.content[0].text}
                other_list = await o.call_tool("list_jobs", {})
                seen["other_list"] = [j["jobId"] for j in other_list.structured_content["jobs"]]
                other_cancel = await o.call_tool("cancel_job", {"jobId": queued_id})
                seen["other_cancel"] = other_cancel.content[0].text
            async with connect(url, admin_key, mode, bridge) as a:
                admin_list = await a.call_tool("list_jobs", {"limit": 100})
                seen["admin_list"] = [j["jobId"] for j in admin_list.structured_content["jobs"]]
        canceled = await c.call_tool("cancel_job", {"jobId": queued_id})
        seen["cancel"] = (canceled.structured_content or {}).get("status")
        # A workflow registered over REST: a list_changed notification, then a new tool.
        added = f"mcp_added_{mode}"
        if mode == "legacy":
            seen["list_changed"] = None
        else:
            async with c.listen(tools_list_changed=True) as sub:
                seen["listen_honored"] = bool(sub.honored.tools_list_changed)
                r = await rest.post("/workflows", headers={"X-API-Key": admin_key}, json={"id": added, "workflow": WORKFLOW})
                seen["registered"] = r.status_code
                event = await asyncio.wait_for(sub.__anext__(), 20)
                seen["list_changed"] = type(event).__name__
            seen["added_listed"] = added in {t.name for t in (await c.list_tools()).tools}
    await rest.aclose()
    print(json.dumps(seen))


asyncio.run(main(*sys.argv[1:]))
