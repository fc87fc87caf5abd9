"""SMS through an HTTP provider shaped like Twilio's Messages API.

    POST {sms_url}   (…/2010-04-01/Accounts/{AccountSid}/Messages.json)
    Authorization: Basic account_sid:auth_token
    Content-Type: application/x-www-form-urlencoded
    To=+15551234567&From=+15550100000&Body=...&StatusCallback={public_url}/callbacks/twilio/status?herald_mid=…
    -> 201 {"sid": "SM…", "status": "queued", ...}
    -> 4xx {"code": 21211, "message": "The 'To' number … is not a valid phone number.", "status": 400, ...}

Errors carry Twilio's numeric code. Those that say the *recipient* cannot
get messages (invalid or unreachable number, not a mobile, opted out with
STOP) are permanent with ``recipient_problem`` so the pipeline suppresses the
number; 429 and 5xx are transient; other 4xx (our credentials, our sender)
are permanent but not the recipient's fault.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlencode

from config import Settings
from pipeline.channels.base import ConcurrentSends, Message, SendResult
from pipeline.channels.http import HTTP_ERRORS, http_client, status_failure, transport_failure
from pipeline.pii import redact  # providers quote the number back; reasons are stored and logged

# 21211 invalid To, 21214 To cannot be reached, 21408 region not enabled for To,
# 21610 recipient replied STOP, 21612 To/From cannot be connected, 21614 To is not a mobile number
RECIPIENT_CODES = frozenset({21211, 21214, 21408, 21610, 21612, 21614})
STATUS_CALLBACK_PATH = "/callbacks/twilio/status"


class TwilioSms(ConcurrentSends):
    name = "sms"

    def __init__(self, settings: Settings, connections: int = 8) -> None:
        self.url = settings.sms_url
        self.sender = settings.sms_from
        # Twilio posts each status change of a message here (api/callbacks.py); its query names the message.
        self.status_callback = f"{settings.public_url.rstrip('/')}{STATUS_CALLBACK_PATH}" \
            if settings.sms_status_callbacks else None
        self.concurrency = connections
        self.client = http_client(settings, connections, auth=(settings.sms_account_sid, settings.sms_auth_token))

    async def send(self, message: Message) -> SendResult:
        form = {"To": message.to, "From": self.sender, "Body": message.parts.get("body", "")}
        if self.status_callback and message.callback:
            form["StatusCallback"] = f"{self.status_callback}?{urlencode(message.callback)}"
        try:
            response = await self.client.post(self.url, data=form)
        except HTTP_ERRORS as exc:
            return transport_failure(exc, self.url)
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        if response.is_success:
            if answer.get("status") == "failed" or answer.get("error_code"):
                return SendResult.permanent(
                    redact(str(answer.get("error_message") or "the provider marked the message failed")),
                    code=str(answer.get("error_code")),
                )
            return SendResult.sent(answer.get("sid"))
        code = answer.get("code")
        reason = f"{response.status_code} {code or ''} {answer.get('message') or response.reason_phrase}"
        return status_failure(
            response, redact(" ".join(reason.split())), code=None if code is None else str(code),
            recipient_problem=isinstance(code, int) and code in RECIPIENT_CODES,
        )

    async def aclose(self) -> None:
        await self.client.aclose()


__all__: Sequence[str] = ["RECIPIENT_CODES", "TwilioSms"]
