"""Client CPU per request of the adapters' HTTP client (pipeline/channels/http.py), against aiohttp's.

    .venv/bin/python bench/http_client.py [--requests 20000] [--connections 8] [--concurrency 64] [--uvloop]

The FCM-shaped peer runs in its OWN process (on uvloop), so ``time.process_time``
of this process is the client's CPU alone: ``--concurrency`` coroutines POST one
FCM v1 message each in turn, exactly as the push adapter calls ``post``, over
``--connections`` kept-alive connections, and read the JSON answer. Each client
is warmed up (connections opened) before it is timed. aiohttp runs as this
module used it until it was replaced (one session, ``TCPConnector(limit=…,
keepalive_timeout=60)``, a total timeout), as the baseline. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config import get_settings  # noqa: E402
from pipeline.channels.http import HttpClient, HttpResponse  # noqa: E402

PEER = """
import asyncio, sys
import uvloop
asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
from tests.peers import FcmPeer
peer = FcmPeer(record=False).start()
print(peer.port, flush=True)
sys.stdin.read()
"""
TOKEN = "herald-local"  # FcmPeer's default bearer token
BODY = orjson.dumps({"message": {
    "token": "fcm-device-token-0123456789abcdef0123456789abcdef",
    "notification": {"title": "Sale", "body": "50% off everything until Sunday"},
    "data": {"message_id": "0b6c2f8e-7a4e-4a1e-9a57-3f0d2b1c9e11", "campaign_id": "42", "action_url": "app://sale"},
    "android": {"notification": {"click_action": "OPEN_ACTION_URL"}},
}})
Post = Callable[[str], Awaitable[HttpResponse]]


async def drive(post: Post, url: str, requests: int, concurrency: int) -> tuple[float, float]:
    """Send ``requests`` POSTs, ``concurrency`` at a time; client CPU seconds and wall seconds."""
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            response = await post(url)
            if response.status_code != 200 or "name" not in response.json():
                raise SystemExit(f"unexpected answer {response.status_code}: {response.text[:200]}")

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.process_time() - cpu, time.perf_counter() - wall


async def measure(post: Post, url: str, args: argparse.Namespace) -> tuple[float, float]:
    """Microseconds of client CPU per request and requests per second, after a warm-up."""
    await drive(post, url, 2000, args.concurrency)
    cpu, wall = await drive(post, url, args.requests, args.concurrency)
    return cpu / args.requests * 1e6, args.requests / wall


async def ours(url: str, args: argparse.Namespace) -> tuple[float, float]:
    client = HttpClient(get_settings(), args.connections, headers={"Authorization": f"Bearer {TOKEN}"})
    json_type = {"Content-Type": "application/json"}
    try:
        return await measure(lambda u: client.post(u, content=BODY, headers=json_type), url, args)
    finally:
        await client.aclose()


async def with_aiohttp(url: str, args: argparse.Namespace) -> tuple[float, float]:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=args.connections, keepalive_timeout=60),
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=aiohttp.ClientTimeout(total=get_settings().provider_timeout_s), raise_for_status=False)
    json_type = {"Content-Type": "application/json"}

    async def post(u: str) -> HttpResponse:
        async with session.post(u, data=BODY, headers=json_type) as response:
            return HttpResponse(response.status, response.reason or "", response.headers, await response.read())

    try:
        return await measure(post, url, args)
    finally:
        await session.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--uvloop", action="store_true", help="run the client on uvloop")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    peer = subprocess.Popen([sys.executable, "-c", PEER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parent.parent)
    try:
        assert peer.stdout is not None
        url = f"http://127.0.0.1:{int(peer.stdout.readline())}/v1/projects/herald/messages:send"
        ours_us, ours_rate = asyncio.run(ours(url, args))
        aiohttp_us, aiohttp_rate = asyncio.run(with_aiohttp(url, args))
    finally:
        peer.kill()
        peer.wait()
    print(json.dumps({
        "requests": args.requests, "connections": args.connections, "concurrency": args.concurrency,
        "ours_us_per_req": round(ours_us, 1), "ours_req_per_s": round(ours_rate),
        "aiohttp_us_per_req": round(aiohttp_us, 1), "aiohttp_req_per_s": round(aiohttp_rate),
        "uvloop": args.uvloop,
    }))


if __name__ == "__main__":
    main()
