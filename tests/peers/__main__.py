"""Run every provider peer on the ports Herald's settings point at, until Ctrl-C.

    python -m tests.peers            # SMTP on smtp_port, Twilio on sms_url's port, FCM on push_url's,
                                     # SendGrid on email_batch_url's, webhook on 8094
    python -m tests.peers --quiet    # do not keep what arrives (long benchmarks)
    python -m tests.peers --no-callbacks   # send no delivery callbacks to the API

The SendGrid and Twilio peers call back to the API (``public_url``) as the real providers do, with a
realistic mix (``DEMO_OUTCOMES``: a share of bounces, opens, machine opens, clicks and complaints).
"""

from __future__ import annotations

import argparse
import signal
import threading
from urllib.parse import urlsplit

from config import get_settings
from tests.peers import FcmPeer, LoopThread, SendGridPeer, SmtpPeer, TwilioPeer, WebhookPeer
from tests.peers.callbacks import Outcomes

DEMO_OUTCOMES = Outcomes(bounce=0.02, complaint=0.001, open=0.35, machine_open=0.12, click=0.08, delay_s=(0.5, 8.0))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.peers")
    parser.add_argument("--quiet", action="store_true", help="count messages without keeping them")
    parser.add_argument("--webhook-port", type=int, default=8094)
    parser.add_argument("--no-callbacks", action="store_true", help="send no delivery callbacks to the API")
    args = parser.parse_args()
    settings = get_settings()
    record = not args.quiet
    loop = LoopThread("peers").start()
    sms_url, push_url = urlsplit(settings.sms_url), urlsplit(settings.push_url)
    batch_url = urlsplit(settings.email_batch_url)
    sms_sid = settings.sms_account_sid
    if "/Accounts/" in sms_url.path:
        sms_sid = sms_url.path.split("/Accounts/")[1].split("/")[0]
    project = push_url.path.split("/projects/")[1].split("/")[0] if "/projects/" in push_url.path else "herald"
    peers = [
        SmtpPeer(settings.smtp_host, settings.smtp_port, record=record).start(loop),
        TwilioPeer(sms_sid, settings.sms_auth_token, host=sms_url.hostname or "127.0.0.1", port=sms_url.port or 80,
                   record=record, outcomes=DEMO_OUTCOMES, callbacks=not args.no_callbacks).start(loop),
        FcmPeer(project, settings.push_token, host=push_url.hostname or "127.0.0.1", port=push_url.port or 80,
                record=record).start(loop),
        WebhookPeer(port=args.webhook_port, record=record).start(loop),
        SendGridPeer(settings.email_batch_key, host=batch_url.hostname or "127.0.0.1", port=batch_url.port or 80,
                     record=record, outcomes=DEMO_OUTCOMES,
                     events_url=None if args.no_callbacks else f"{settings.public_url.rstrip('/')}/callbacks/sendgrid/events"
                     ).start(loop),
    ]
    for peer in peers:
        print(f"[peers] {type(peer).__name__} on {peer.host}:{peer.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    for peer in peers:
        peer.stop()
    loop.stop()
    print("[peers] " + ", ".join(f"{type(p).__name__}: {p.count}" for p in peers), flush=True)


if __name__ == "__main__":
    main()
