"""A peer shaped like Twilio's Messages API (``POST /2010-04-01/Accounts/{sid}/Messages.json``).

It checks what Twilio checks first (basic auth against the account, To/From/Body
present, To in E.164) and answers with Twilio's JSON: 201 with ``sid`` and
``status: "queued"``, or an error with Twilio's numeric ``code``. Twilio's
magic test numbers behave as on Twilio's test credentials:

    +15005550001  21211 invalid number       +15005550004  21610 recipient replied STOP
    +15005550002  21612 cannot route         +15005550009  21614 not a mobile number
    +15005550003  21408 no permission for the region

``inbound_sms`` builds the signed webhook Twilio posts when someone texts Herald's number (a reply, a
STOP, a HELP), with ``OptOutType`` when Twilio's Advanced Opt-Out recognised a keyword.

Given ``callbacks=True``, a message sent with a ``StatusCallback`` gets Twilio's signed status callbacks there (sent, then
delivered, or undelivered 30003 for numbers ending in 0003: tests/peers/callbacks.py).
"""

from __future__ import annotations

import base64
import re
import secrets

from tests.peers.callbacks import CallbackPoster, Outcomes, sms_fate, twilio_request
from tests.peers.http import HttpPeer, Request, Response

E164 = re.compile(r"\+[1-9]\d{6,14}")
MAGIC = {
    "+15005550001": (21211, "The 'To' number {to} is not a valid phone number."),
    "+15005550002": (21612, "The 'To' phone number: {to}, is not currently reachable using the 'From' phone number."),
    "+15005550003": (21408, "Permission to send an SMS has not been enabled for the region of the 'To' number: {to}."),
    "+15005550004": (21610, "Attempt to send to unsubscribed recipient"),
    "+15005550009": (21614, "'To' number {to} is not a valid mobile number"),
}


class TwilioPeer(HttpPeer):
    def __init__(self, account_sid: str = "ACherald", auth_token: str = "herald-local",
                 outcomes: Outcomes | None = None, callbacks: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.outcomes = outcomes or Outcomes()
        # Status callbacks to each message's StatusCallback (tests/peers/callbacks.py), when asked for: a peer
        # whose Herald runs no API would otherwise retry posts to nowhere for minutes.
        self.send_callbacks = callbacks
        self.callbacks = CallbackPoster(
            lambda items: [twilio_request(self.auth_token, url, form) for url, form in items])
        self.path = f"/2010-04-01/Accounts/{account_sid}/Messages.json"

    async def _closing(self) -> None:
        await self.callbacks.close()

    def _error(self, status: int, code: int, message: str) -> Response:
        more_info = f"https://www.twilio.com/docs/errors/{code}"
        return Response(status, {"code": code, "message": message, "more_info": more_info, "status": status})

    def handle(self, request: Request) -> Response:
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if request.headers.get("authorization") != expected:
            return self._error(401, 20003, "Authenticate")
        if request.method != "POST" or request.path != self.path:
            return self._error(404, 20404, f"The requested resource {request.path} was not found")
        form = request.form()
        to, sender, body = form.get("To", ""), form.get("From", ""), form.get("Body", "")
        if not to:
            return self._error(400, 21604, "A 'To' phone number is required.")
        if not sender:
            return self._error(400, 21603, "A 'From' phone number is required.")
        if not body:
            return self._error(400, 21602, "Message body is required.")
        if to in MAGIC:
            code, text = MAGIC[to]
            return self._error(400, code, text.format(to=to))
        if not E164.fullmatch(to):
            return self._error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if len(body) > 1600:
            return self._error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        sid = "SM" + secrets.token_hex(16)
        callback = form.get("StatusCallback")
        if callback and self.send_callbacks:
            for delay, status, code in sms_fate(sid, to, self.outcomes):
                fields = {"MessageSid": sid, "SmsSid": sid, "AccountSid": self.account_sid, "From": sender, "To": to,
                          "MessageStatus": status, "SmsStatus": status, "ApiVersion": "2010-04-01"}
                if code:
                    fields["ErrorCode"] = code
                self.callbacks.schedule(delay, (callback, fields))
        return Response(201, {"sid": sid, "account_sid": self.account_sid, "to": to, "from": sender, "body": body,
                              "status": "queued", "num_segments": "1", "error_code": None, "error_message": None,
                              "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json"})


def inbound_sms(auth_token: str, url: str, sender: str, body: str, to: str = "+15550100000",
                opt_out_type: str | None = None, account_sid: str = "ACherald") -> tuple[str, bytes, dict[str, str]]:
    """(url, body, headers) of Twilio's incoming-message webhook to ``url``, signed with ``auth_token``:
    the fields Twilio posts for an SMS, in its order."""
    sid = "SM" + secrets.token_hex(16)
    form = {"ToCountry": "US", "ToState": "", "SmsMessageSid": sid, "NumMedia": "0", "ToCity": "", "FromZip": "",
            "SmsSid": sid, "FromState": "", "SmsStatus": "received", "FromCity": "", "Body": body, "FromCountry": "",
            "To": to, "MessagingServiceSid": "", "ToZip": "", "NumSegments": "1", "MessageSid": sid,
            "AccountSid": account_sid, "From": sender, "ApiVersion": "2010-04-01"}
    if opt_out_type is not None:
        form["OptOutType"] = opt_out_type
    return twilio_request(auth_token, url, form)
