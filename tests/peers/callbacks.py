"""What the provider peers send back after taking a message: delivery and engagement callbacks.

Real providers tell the sender later what became of each message, by HTTP posts signed their own way;
the peers do the same, so that Herald's callback endpoints (api/callbacks.py) are exercised as in
production, in tests, benches and ``make run``:

    SendGridPeer   batches of events (processed, delivered / bounce / blocked, open, click, spamreport) as
                   a JSON array, ECDSA-signed with the local key (tests/peers/keys.py), every ``flush_s``
    TwilioPeer     one form post per status change (sent, then delivered or undelivered) to the message's
                   StatusCallback, with X-Twilio-Signature

Each message's fate is decided when it is accepted (``fate``): by its address where a test needs a known
outcome (the local part starts with ``bounce``, ``blocked``, ``complain``, ``opener``, ``clicker`` or
``machine``), otherwise by the shares of ``Outcomes`` drawn from a hash of the message id (the same on
every run), after a delay drawn in ``delay_s``. Posts that fail (no answer, non-2xx) are retried with
back-off, as providers do, up to ``attempts`` times.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import heapq
import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_private_key

from pipeline.callbacks import twilio_signature

# The local SendGrid peer's signing key (PKCS#8 DER, base64). Its public half is the default of
# settings.sendgrid_events_key. A test key: it signs nothing but the peers' callbacks.
LOCAL_SENDGRID_PRIVATE_KEY = (
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgMgxUz3QMPn4CTOZCSWefZTUeWGgjfUlh4t1SLZlg86KhRANCAASuP1NNbaCSU3vh"
    "wLd2VXPdwUX1R+duquPXnAtMeqdjMrC3B2quWzxOY5zJl5B1SRy8XkN2NUwAtgzkqUM2vI0m")


@dataclass(frozen=True)
class Outcomes:
    """Shares of messages that bounce, report spam, are opened (by a person or a machine) and clicked."""

    bounce: float = 0.0
    complaint: float = 0.0
    open: float = 0.0
    machine_open: float = 0.0
    click: float = 0.0
    delay_s: tuple[float, float] = (0.05, 0.5)


def _draw(message_id: str, what: str) -> float:
    """A number in [0, 1) fixed by the message and what is drawn."""
    digest = hashlib.blake2b(f"{message_id}:{what}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def fate(message_id: str, address: str, outcomes: Outcomes) -> list[tuple[float, str]]:
    """(seconds after acceptance, SendGrid event) of one email, in time order."""
    local = address.split("@", 1)[0].lower()
    low, high = outcomes.delay_s
    at = low + (high - low) * _draw(message_id, "delay")
    if local.startswith("bounce") or (not local.startswith(("opener", "clicker", "machine", "complain", "blocked"))
                                      and _draw(message_id, "bounce") < outcomes.bounce):
        return [(0.0, "processed"), (at, "bounce")]
    if local.startswith("blocked"):
        return [(0.0, "processed"), (at, "blocked")]
    out = [(0.0, "processed"), (at, "delivered")]
    if local.startswith("machine") or _draw(message_id, "machine") < outcomes.machine_open:
        out.append((at + 0.01, "machine_open"))
    opened = local.startswith(("opener", "clicker")) or _draw(message_id, "open") < outcomes.open
    if opened:
        out.append((at + 2 * (high - low) * _draw(message_id, "open_at") + 0.02, "open"))
        if local.startswith("clicker") or _draw(message_id, "click") < outcomes.click:
            out.append((out[-1][0] + 0.05, "click"))
    if local.startswith("complain") or _draw(message_id, "complaint") < outcomes.complaint:
        out.append((out[-1][0] + 0.05, "spamreport"))
    return out


def sms_fate(message_id: str, to: str, outcomes: Outcomes) -> list[tuple[float, str, str]]:
    """(seconds after acceptance, MessageStatus, ErrorCode) of one SMS: numbers ending in 0003 are
    unreachable (Twilio's 30003), as is a ``bounce`` share of the others."""
    low, high = outcomes.delay_s
    at = low + (high - low) * _draw(message_id, "delay")
    if to.endswith("0003") or _draw(message_id, "bounce") < outcomes.bounce:
        return [(0.0, "sent", ""), (at, "undelivered", "30003")]
    return [(0.0, "sent", ""), (at, "delivered", "")]


class CallbackPoster:
    """Posts what is due, on the peer's event loop: ``due`` items wait in a heap; every ``flush_s`` the due
    ones become requests (``requests(items) -> [(url, body, headers)]``) and are posted; failed posts are
    retried after 0.5 s, 1 s, 2 s, ..."""

    def __init__(self, requests: Callable[[list[Any]], list[tuple[str, bytes, dict[str, str]]]],
                 flush_s: float = 0.1, attempts: int = 6) -> None:
        self.requests = requests
        self.flush_s = flush_s
        self.attempts = attempts
        self._heap: list[tuple[float, int, Any]] = []
        self._order = itertools.count()
        self._task: asyncio.Task | None = None
        self._client: httpx.AsyncClient | None = None
        self._posts: set[asyncio.Task] = set()
        self.posted = 0  # requests answered 2xx
        self.failed = 0  # attempts that got no 2xx
        self.given_up = 0  # requests dropped after ``attempts``

    def schedule(self, delay_s: float, item: Any) -> None:
        """Called on the peer's loop (from a request handler)."""
        heapq.heappush(self._heap, (time.monotonic() + delay_s, next(self._order), item))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop posting (on the peer's loop): what is still waiting is dropped, as when a provider's peer stops."""
        try:
            await asyncio.wait_for(self._close(), timeout=5.0)
        except asyncio.TimeoutError:
            pass

    async def _close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for post in list(self._posts):
            post.cancel()
        await asyncio.gather(*self._posts, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def waiting(self) -> int:
        return len(self._heap)

    async def _run(self) -> None:
        self._client = httpx.AsyncClient(timeout=10.0)
        while True:
            await asyncio.sleep(self.flush_s)
            now = time.monotonic()
            due = []
            while self._heap and self._heap[0][0] <= now:
                due.append(heapq.heappop(self._heap)[2])
            if due:
                for url, body, headers in self.requests(due):
                    post = asyncio.get_running_loop().create_task(self._post(url, body, headers))
                    self._posts.add(post)
                    post.add_done_callback(self._posts.discard)

    async def _post(self, url: str, body: bytes, headers: Mapping[str, str]) -> None:
        assert self._client is not None
        for attempt in range(self.attempts):
            try:
                response = await self._client.post(url, content=body, headers=dict(headers))
                if response.is_success:
                    self.posted += 1
                    return
            except httpx.HTTPError:
                pass
            self.failed += 1
            await asyncio.sleep(0.5 * 2 ** attempt)
        self.given_up += 1


def sendgrid_signer(private_key_b64: str = LOCAL_SENDGRID_PRIVATE_KEY) -> Callable[[bytes], dict[str, str]]:
    key = load_der_private_key(base64.b64decode(private_key_b64), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)

    def sign(payload: bytes) -> dict[str, str]:
        stamp = str(int(time.time()))
        signature = base64.b64encode(key.sign(stamp.encode() + payload, ec.ECDSA(hashes.SHA256()))).decode()
        return {"Content-Type": "application/json", "X-Twilio-Email-Event-Webhook-Signature": signature,
                "X-Twilio-Email-Event-Webhook-Timestamp": stamp}

    return sign


def sendgrid_item(kind: str, personalization: Mapping[str, Any], batch_id: str, index: int) -> dict[str, Any]:
    """One event of SendGrid's Event Webhook for a personalization of an accepted request."""
    args = {k: str(v) for k, v in (personalization.get("custom_args") or {}).items()}
    email = personalization["to"][0]["email"]
    item: dict[str, Any] = {"email": email, "timestamp": int(time.time()), "sg_event_id": base64.urlsafe_b64encode(
        hashlib.blake2b(f"{batch_id}:{index}:{kind}".encode(), digest_size=16).digest()).decode().rstrip("="),
        "sg_message_id": f"{batch_id}.{index}", "event": kind, **args}
    if kind == "bounce":
        item |= {"type": "bounce", "reason": "550 5.1.1 The email account that you tried to reach does not exist",
                 "status": "5.1.1"}
    elif kind == "blocked":
        item |= {"event": "bounce", "type": "blocked", "reason": "421 4.7.0 Try again later", "status": "4.7.0"}
    elif kind == "open":
        item |= {"useragent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
                 "ip": "198.51.100.23", "sg_machine_open": False}
    elif kind == "machine_open":
        item |= {"event": "open", "useragent": "Mozilla/5.0", "ip": "17.58.101.4", "sg_machine_open": True}
    elif kind == "click":
        item |= {"url": "https://herald.local/clicked", "useragent": "Mozilla/5.0 (Macintosh)", "ip": "198.51.100.23"}
    return item


def twilio_request(auth_token: str, callback: str, form: dict[str, str]) -> tuple[str, bytes, dict[str, str]]:
    body = urlencode(form).encode()
    return callback, body, {"Content-Type": "application/x-www-form-urlencoded",
                            "X-Twilio-Signature": twilio_signature(auth_token, callback, form.items())}


def sendgrid_requests(url: str, sign: Callable[[bytes], dict[str, str]], max_events: int = 1000
                      ) -> Callable[[list[dict]], list[tuple[str, bytes, dict[str, str]]]]:
    def requests(items: list[dict]) -> list[tuple[str, bytes, dict[str, str]]]:
        out = []
        for i in range(0, len(items), max_events):
            body = orjson.dumps(items[i:i + max_events])
            out.append((url, body, sign(body)))
        return out
    return requests
