"""Inbound SMS: the replies people send to Herald's number, and the keywords among them.

    POST /callbacks/twilio/inbound    Twilio's incoming-message webhook (form; X-Twilio-Signature)

Public like the status callback (api/callbacks.py), and refused with 403 unless Twilio's
signature checks against ``Settings.public_url``. The body's keyword (pipeline/sms_keywords.py:
whole message, trimmed, any case; Twilio's ``OptOutType`` wins when present) decides:

    STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE, OPTOUT   SMS consent withdrawn, channel off
    START, UNSTOP, YES                                             SMS consent granted, channel on
    HELP                                                           answered with Settings.sms_help_text

for every user with that phone number, through the preferences API's own path
(api/preferences.py ``change_preferences``: PostgreSQL, the audit log, an ``unsubscribes`` row
for an opt-out, and the whole new state on ``preference-updates`` before the answer), so the
gate refuses the next SMS as soon as its replica has the record (well within a second).
Consent source ``sms_keyword``. STOP and STOPALL both switch the whole SMS channel off, so every
category of SMS stops. The answer is TwiML (``<Response><Message>..``), which Twilio sends back as
the reply; an unknown number or an ordinary message gets an empty ``<Response/>``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from xml.sax.saxutils import escape

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.callbacks import signed_twilio_form
from api.openapi import ANY_QUERY, operation
from api.preferences import UserNotFound, change_preferences
from api.ratelimit import limited_by_address
from pipeline.pii import phone_index
from pipeline.sms_keywords import keyword_action
from schemas.preferences import record_consent

log = structlog.get_logger()

SOURCE = "sms_keyword"
_ACTOR = "sms-keyword"  # the audit trail's actor: the person's own phone, not an API key
_TWIML = "application/xml"


def twiml(message: str | None = None) -> Response:
    """Twilio's reply document: one message back to the sender, or none."""
    inner = f"<Message>{escape(message)}</Message>" if message else ""
    body = f'<?xml version="1.0" encoding="UTF-8"?><Response>{inner}</Response>' if inner else \
        '<?xml version="1.0" encoding="UTF-8"?><Response/>'
    return Response(body, media_type=_TWIML)


@limited_by_address("callbacks")
@operation("Twilio incoming SMS webhook (STOP, START, HELP)", responses={200: _TWIML}, query=ANY_QUERY)
async def twilio_inbound(request: Request) -> Response:
    """A reply to Herald's number; its keyword opts the sender out of SMS, back in, or asks for help.

    Form fields as Twilio posts them (``From``, ``To``, ``Body``, ``MessageSid``, and ``OptOutType`` when
    Twilio's Advanced Opt-Out is on). Answers TwiML: the reply for a keyword, else an empty Response.
    """
    form = await signed_twilio_form(request)
    settings = request.app.state.settings
    action = keyword_action(form.get("Body"), form.get("OptOutType"))
    if action is None:
        return twiml()
    if action == "help":
        return twiml(settings.sms_help_text)
    phone = (form.get("From") or "").strip()
    user_ids = [r["user_id"] for r in await request.app.state.postgres.fetch(
        "SELECT user_id FROM users WHERE phone_idx = $1 OR phone = $2 ORDER BY user_id",  # plaintext: before 012
        phone_index(request.app.state.pii, phone), phone)] if phone else []
    if not user_ids:
        return twiml()
    granted = action == "opt_in"
    now = datetime.now(timezone.utc)
    for user_id in user_ids:
        try:
            await change_preferences(
                request, user_id, lambda current: record_consent(current, "sms", granted, SOURCE, now),
                actor=_ACTOR, action=f"preferences.sms_{'opt_in' if granted else 'opt_out'}", source=SOURCE,
                reason=None if granted else f"replied {(form.get('Body') or form.get('OptOutType') or '').strip()[:40]}",
            )
        except UserNotFound:
            continue  # deleted meanwhile: nobody left to write to
    log.info("sms keyword", action=action, users=len(user_ids), message_sid=form.get("MessageSid"))
    return twiml(settings.sms_start_text if granted else settings.sms_stop_text)


routes = [
    Route("/callbacks/twilio/inbound", twilio_inbound, methods=["POST"]),
]
