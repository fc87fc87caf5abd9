"""Push through an HTTP provider shaped like FCM's HTTP v1 send API.

    POST {push_url}   (…/v1/projects/{project}/messages:send)
    Authorization: Bearer {token}
    {"message": {"token": "<device token>",
                 "notification": {"title": ..., "body": ..., "image": ...},
                 "data": {"action_url": ..., "message_id": ..., ...},     (string values only)
                 "android": {"notification": {"click_action": ...}},
                 "apns": {"payload": {"aps": {"category": ...}}}}}
    -> 200 {"name": "projects/herald/messages/0:1500415314455276%31bd1c96f9fd7ecd"}
    -> 4xx/5xx {"error": {"code": 404, "status": "NOT_FOUND", "message": ...,
                "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                             "errorCode": "UNREGISTERED"}]}}

The FCM error code (from ``details``, else ``status``) decides: UNREGISTERED,
INVALID_ARGUMENT and SENDER_ID_MISMATCH are permanent and the token's fault
(the pipeline drops it); QUOTA_EXCEEDED, UNAVAILABLE, INTERNAL are transient;
THIRD_PARTY_AUTH_ERROR and other 4xx are permanent but not the token's fault.
"""

from __future__ import annotations

from typing import Any


import orjson

from config import Settings
from pipeline.channels.base import ConcurrentSends, Message, SendResult, retry_after
from pipeline.channels.http import HTTP_ERRORS, http_client, status_failure, transport_failure

TOKEN_ERRORS = frozenset({"UNREGISTERED", "INVALID_ARGUMENT", "SENDER_ID_MISMATCH"})
RETRYABLE_ERRORS = frozenset({"QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL"})


def fcm_message(message: Message) -> dict[str, Any]:
    """The FCM v1 request body for a rendered push message."""
    parts = message.parts
    notification = {"title": parts.get("title", ""), "body": parts.get("body", "")}
    if parts.get("image_url"):
        notification["image"] = parts["image_url"]
    data = {"message_id": message.message_id, **{k: str(v) for k, v in message.data.items()}}
    if message.campaign_id is not None:
        data["campaign_id"] = str(message.campaign_id)
    body: dict[str, Any] = {"token": message.to, "notification": notification, "data": data}
    if parts.get("action_url"):
        data["action_url"] = parts["action_url"]
        body["android"] = {"notification": {"click_action": "OPEN_ACTION_URL"}}
    return {"message": body}


def _fcm_error(answer: Any) -> tuple[str | None, str]:
    error = answer.get("error") if isinstance(answer, dict) else None
    if not isinstance(error, dict):
        return None, ""
    code = error.get("status")
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and detail.get("errorCode"):
            code = detail["errorCode"]
    return code, str(error.get("message") or "")


class FcmPush(ConcurrentSends):
    name = "push"

    def __init__(self, settings: Settings, connections: int = 8) -> None:
        self.url = settings.push_url
        self.concurrency = connections
        self.client = http_client(settings, connections, headers={"Authorization": f"Bearer {settings.push_token}"})

    async def send(self, message: Message) -> SendResult:
        body = message.raw or orjson.dumps(fcm_message(message))
        try:
            response = await self.client.post(self.url, content=body, headers={"Content-Type": "application/json"})
        except HTTP_ERRORS as exc:
            return transport_failure(exc, self.url)
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if response.is_success:
            return SendResult.sent(answer.get("name") if isinstance(answer, dict) else None)
        code, text = _fcm_error(answer)
        reason = " ".join(f"{response.status_code} {code or ''} {text or response.reason_phrase}".split())
        if code in RETRYABLE_ERRORS:
            wait = retry_after(response.headers.get("retry-after"))
            return SendResult.transient(reason, code=code, retry_after_s=wait)
        if code in TOKEN_ERRORS:
            return SendResult.permanent(reason, code=code, recipient_problem=True)
        return status_failure(response, reason, code=code)

    async def aclose(self) -> None:
        await self.client.aclose()
