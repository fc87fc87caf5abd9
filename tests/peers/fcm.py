"""A peer shaped like FCM's HTTP v1 send API (``POST /v1/projects/{project}/messages:send``).

Checks the bearer token and the message shape as FCM does (a target, string
values in ``data``, title/body strings) and answers ``{"name": "projects/…/messages/…"}``
or FCM's error body (``error.status`` plus an ``FcmError`` detail with ``errorCode``).
Tokens starting with "unregistered" (or registered with ``unregister``) get
404 UNREGISTERED, as an uninstalled app's token does.
"""

from __future__ import annotations

import secrets

from tests.peers.http import HttpPeer, Request, Response

_STATUS = {"INVALID_ARGUMENT": 400, "UNREGISTERED": 404, "SENDER_ID_MISMATCH": 403, "QUOTA_EXCEEDED": 429,
           "UNAVAILABLE": 503, "INTERNAL": 500, "THIRD_PARTY_AUTH_ERROR": 401}
_RPC_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
               429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}


def fcm_error(error_code: str, message: str) -> Response:
    status = _STATUS[error_code]
    return Response(status, {"error": {"code": status, "message": message, "status": _RPC_STATUS[status], "details": [
        {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}]}})


class FcmPeer(HttpPeer):
    def __init__(self, project: str = "herald", token: str = "herald-local", **kwargs) -> None:
        super().__init__(**kwargs)
        self.project = project
        self.token = token
        self.path = f"/v1/projects/{project}/messages:send"
        self.unregistered: set[str] = set()

    def unregister(self, device_token: str) -> None:
        self.unregistered.add(device_token)

    def handle(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return Response(401, {"error": {"code": 401, "message": "Request had invalid authentication credentials.",
                                            "status": "UNAUTHENTICATED"}})
        if request.method != "POST" or request.path != self.path:
            return Response(404, {"error": {"code": 404, "message": "Not found", "status": "NOT_FOUND"}})
        try:
            message = request.json()["message"]
        except Exception:  # noqa: BLE001 - any malformed body
            return fcm_error("INVALID_ARGUMENT", "Invalid JSON payload received.")
        token = message.get("token")
        if not isinstance(token, str) or not token or not (message.keys() & {"token", "topic", "condition"}):
            return fcm_error("INVALID_ARGUMENT", "The registration token is not a valid FCM registration token")
        data = message.get("data") or {}
        for i, (key, value) in enumerate(data.items()):
            if not isinstance(value, str):
                reason = f"Invalid value at 'message.data[{i}].value' (TYPE_STRING), {value}"
                return fcm_error("INVALID_ARGUMENT", reason)
        notification = message.get("notification") or {}
        if any(not isinstance(notification.get(k, ""), str) for k in ("title", "body", "image")):
            return fcm_error("INVALID_ARGUMENT", "Invalid value at 'message.notification'")
        if token.startswith("unregistered") or token in self.unregistered:
            return fcm_error("UNREGISTERED", "Requested entity was not found.")
        if len(request.body) > 4096 + 512:
            return fcm_error("INVALID_ARGUMENT", "Message is too big")
        return Response(200, {"name": f"projects/{self.project}/messages/0:{secrets.token_hex(8)}"})
