"""``POST /api/v1/dead-letters/replay``: send dead-lettered messages through their outbox again.

The same replay as ``make dlq-replay`` (``pipeline.dlq``), for operators who work
through the API: admins only, audited, and ``dry_run`` to see what would go.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.auth import require_role
from api.errors import parse_body
from api.openapi import operation
from pipeline import audit
from pipeline.dlq import replay


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    campaign_id: int | None = Field(default=None, gt=0, description="only this campaign's letters")
    dry_run: bool = Field(default=False, description="count what would be replayed, send nothing")


class ReplayResult(BaseModel):
    letters: int = Field(description="dead letters read")
    replayed: int = Field(description="message batches sent back to their outbox")
    skipped: int = Field(description="letters that are not a sender's (or not the campaign's)")
    dry_run: bool


@require_role("admin")
@operation("Replay dead-lettered messages", body=ReplayRequest, responses={200: ReplayResult})
async def replay_dead_letters(request: Request) -> Response:
    """Put the dead-lettered messages of senders (all, or one campaign's) back on their outbox topics."""
    body = await parse_body(request, ReplayRequest)
    counts = await replay(request.app.state.settings, body.campaign_id, body.dry_run)
    result = ReplayResult(**counts, dry_run=body.dry_run)
    if not body.dry_run:
        async with request.app.state.postgres.acquire() as conn:
            await audit.record(conn, request.state.caller, "dead_letters.replayed", "dead_letters",
                               body.campaign_id, None, result.model_dump())
    return JSONResponse(result.model_dump())


routes = [Route("/api/v1/dead-letters/replay", replay_dead_letters, methods=["POST"])]
