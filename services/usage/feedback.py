"""POST /v1/feedback: a client's own score of an answer, stored with the evaluators'.

The request must be in the ledger already (its event is delivered within the router's
flush interval, a fraction of a second after the answer) and visible to the caller: the
key that made it, another key of its project, or the admin key. Anything else is not
found, so request ids cannot be probed. Sending feedback again replaces the earlier one.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

from interlock.usage.v1 import usage_pb2 as pb
from services.common.clock import Clock
from services.common.errors import InvalidRequestError, NotFoundError
from services.usage.callers import Caller
from services.usage.store import EventStore

FEEDBACK = "feedback"
MAX_COMMENT_CHARS = 2000
THUMBS = {"up": 1.0, "down": 0.0}
# A thumbs-up, or a score at least this high, counts as passed.
PASS_SCORE = 0.5


def _may_see(caller: Caller, event: pb.UsageEvent) -> bool:
    if caller.key is None:
        return True
    own = caller.key
    return event.key_id == own.id or bool(own.project and event.project == own.project)


def _score(request: pb.RecordFeedbackRequest) -> float:
    has_score = request.HasField("score")
    if has_score == bool(request.thumbs):
        raise InvalidRequestError(
            "Give either 'score' (0 to 1) or 'thumbs' ('up' or 'down').", code="ERR_MISSING_FIELD", param="score"
        )
    if has_score:
        if not math.isfinite(request.score) or not 0.0 <= request.score <= 1.0:
            raise InvalidRequestError("'score' must be between 0 and 1.", code="ERR_INVALID_VALUE", param="score")
        return request.score
    if request.thumbs not in THUMBS:
        raise InvalidRequestError("'thumbs' must be 'up' or 'down'.", code="ERR_INVALID_VALUE", param="thumbs")
    return THUMBS[request.thumbs]


class Feedback:
    def __init__(
        self, store: EventStore, clock: Clock, write: Callable[[list[pb.QualityScore]], Awaitable[int]]
    ) -> None:
        self._store = store
        self._clock = clock
        # Stores scores the way RecordScores does (under the servicer's write lock).
        self._write = write

    async def record(self, caller: Caller, request: pb.RecordFeedbackRequest) -> pb.RecordFeedbackResponse:
        if not request.request_id:
            raise InvalidRequestError("Missing 'request_id' field.", code="ERR_MISSING_FIELD", param="request_id")
        score = _score(request)
        if len(request.comment) > MAX_COMMENT_CHARS:
            raise InvalidRequestError(
                f"'comment' must be at most {MAX_COMMENT_CHARS} characters.", code="ERR_INVALID_VALUE", param="comment"
            )
        event = await asyncio.to_thread(self._store.find_event, request.request_id)
        if event is None or not _may_see(caller, event):
            raise NotFoundError(
                f"No request '{request.request_id}' that this key may rate.",
                code="request_not_found",
                param="request_id",
            )
        record = pb.QualityScore(
            request_id=event.request_id,
            evaluator=FEEDBACK,
            kind=FEEDBACK,
            source=pb.SCORE_SOURCE_FEEDBACK,
            score=score,
            passed=score >= PASS_SCORE,
            detail=request.comment,
            time_unix_ms=int(self._clock.now() * 1000),
            request_time_unix_ms=event.time_unix_ms,
            key_id=event.key_id,
            project=event.project,
            model=event.model or event.model_requested,
            provider=event.provider,
        )
        await self._write([record])
        return pb.RecordFeedbackResponse(request_id=event.request_id, score=score, comment=request.comment)
