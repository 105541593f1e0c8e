"""The deterministic evaluators, and which requests are sampled.

Each check maps (spec, answer text) to an Outcome with a score in 0..1. They are
pure and cheap, but still run off the request path with the judges.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Final

import jsonschema
import regex

from interlock.catalog.v1 import catalog_pb2 as cpb

# Refusal detection: an answer containing one of these (case-insensitive) is a refusal,
# scored 0. Deliberately short and literal, so a result can be explained by the phrase.
REFUSAL_PHRASES: Final = (
    "i can't help with",
    "i cannot help with",
    "i can't assist with",
    "i cannot assist with",
    "i'm sorry, but i can't",
    "i'm sorry, but i cannot",
    "i am sorry, but i cannot",
    "i'm unable to",
    "i am unable to",
    "i won't be able to",
    "as an ai language model",
    "i must decline",
)
# Detail text kept in the ledger is cut to this many characters.
DETAIL_CHARS = 500
# A regex evaluator comes from the client: the `regex` engine stops a catastrophic one after
# this long (and matches without holding the GIL), where `re` would spin forever.
REGEX_TIMEOUT_SECONDS = 1.0


@dataclass(frozen=True)
class Outcome:
    score: float
    passed: bool
    detail: str = ""
    # The evaluator could not run (a judge answering junk); score means nothing then.
    error: bool = False


def sampled(request_id: str, evaluator: str, rate: float) -> bool:
    """Deterministic by request id, so a replay or a test sees the same choice."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    digest = hashlib.sha256(f"{request_id}\0{evaluator}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def _verdict(ok: bool, why: str) -> Outcome:
    return Outcome(1.0 if ok else 0.0, ok, why[:DETAIL_CHARS])


def check_json(answer: str) -> Outcome:
    try:
        json.loads(answer)
    except ValueError as exc:
        return _verdict(False, f"not valid JSON: {exc}")
    return _verdict(True, "valid JSON")


def check_json_schema(schema_json: str, answer: str) -> Outcome:
    try:
        document = json.loads(answer)
    except ValueError as exc:
        return _verdict(False, f"not valid JSON: {exc}")
    schema = json.loads(schema_json)
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return _verdict(False, f"{where}: {error.message}")
    return _verdict(True, "matches the schema")


def check_regex(pattern: str, answer: str, timeout_seconds: float = REGEX_TIMEOUT_SECONDS) -> Outcome:
    try:
        found = regex.search(pattern, answer, timeout=timeout_seconds, concurrent=True)
    except TimeoutError:
        return Outcome(0.0, False, f"the pattern ran for over {timeout_seconds:g}s; not evaluated", error=True)
    return _verdict(found is not None, "pattern found" if found else "pattern not found")


def check_length(min_chars: int, max_chars: int, answer: str) -> Outcome:
    size = len(answer)
    if size < min_chars:
        return _verdict(False, f"{size} characters, fewer than {min_chars}")
    if max_chars and size > max_chars:
        return _verdict(False, f"{size} characters, more than {max_chars}")
    return _verdict(True, f"{size} characters")


def check_refusal(answer: str) -> Outcome:
    lowered = answer.lower().replace("\u2019", "'")
    for phrase in REFUSAL_PHRASES:
        if phrase in lowered:
            return _verdict(False, f"refusal: contains {phrase!r}")
    return _verdict(True, "no refusal phrase")


def run_check(spec: cpb.Evaluator, answer: str) -> Outcome:
    """A deterministic evaluator's outcome; judges are run elsewhere (they call a model)."""
    if spec.kind == "json":
        return check_json(answer)
    if spec.kind == "json_schema":
        return check_json_schema(spec.schema_json, answer)
    if spec.kind == "regex":
        return check_regex(spec.pattern, answer)
    if spec.kind == "length":
        return check_length(spec.min_chars, spec.max_chars, answer)
    if spec.kind == "refusal":
        return check_refusal(answer)
    return Outcome(0.0, False, f"unknown evaluator kind {spec.kind!r}", error=True)
