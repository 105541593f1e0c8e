"""Judge models: the prompt that asks a catalog model to score an answer, and the
parser of its reply. A reply without a usable score is a JudgeReplyError, which
the runner records as an evaluator error; it never fails anything else."""

from __future__ import annotations

import json
import re
from typing import Any

from interlock.router.v1 import router_pb2 as pb

# The answer and prompt are cut to this many characters in the judge's prompt.
MAX_QUOTED_CHARS = 12_000
INSTRUCTIONS = (
    "You are a strict evaluator. Score the ANSWER to the PROMPT against the RUBRIC. "
    'Reply with only a JSON object: {"score": <number from 0 to 1>, "reason": "<one sentence>"}.'
)
_SCORE_TEXT = re.compile(r"score[\s:=\"']*(-?\d+(?:\.\d+)?)\s*(?:/\s*(\d+(?:\.\d+)?))?", re.IGNORECASE)
_BARE_NUMBER = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*(\d+(?:\.\d+)?))?\s*\.?\s*")
_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


class JudgeReplyError(ValueError):
    """The judge's reply carries no score in 0..1."""


def judge_messages(rubric: str, prompt: str, answer: str) -> list[pb.Message]:
    body = f"RUBRIC:\n{rubric}\n\nPROMPT:\n{prompt[-MAX_QUOTED_CHARS:]}\n\nANSWER:\n{answer[:MAX_QUOTED_CHARS]}"
    return [
        pb.Message(role=pb.ROLE_SYSTEM, content=INSTRUCTIONS),
        pb.Message(role=pb.ROLE_USER, content=body),
    ]


def _in_range(value: float, scale: float | None) -> float:
    if scale is not None:
        if scale <= 0:
            raise JudgeReplyError(f"score out of {scale:g}")
        value /= scale
    if not 0.0 <= value <= 1.0:
        raise JudgeReplyError(f"score {value:g} is outside 0..1")
    return value


def _from_json(text: str) -> tuple[float, str] | None:
    match = _JSON_OBJECT.search(text)
    if match is None:
        return None
    try:
        document: Any = json.loads(match.group(0))
    except ValueError:
        return None
    if not isinstance(document, dict) or "score" not in document:
        return None
    score = document["score"]
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise JudgeReplyError(f"score is not a number: {score!r}")
    reason = document.get("reason")
    return _in_range(float(score), None), reason if isinstance(reason, str) else ""


def parse_judge_score(text: str) -> tuple[float, str]:
    """(score in 0..1, reason) from a judge's reply: a JSON object with `score`, a
    "score: 0.8" (or "Score: 8/10") line, or a bare number."""
    parsed = _from_json(text)
    if parsed is not None:
        return parsed
    match = _SCORE_TEXT.search(text) or _BARE_NUMBER.fullmatch(text)
    if match is None:
        raise JudgeReplyError(f"no score in the judge's reply: {text[:200]!r}")
    scale = float(match.group(2)) if match.group(2) else None
    return _in_range(float(match.group(1)), scale), ""
