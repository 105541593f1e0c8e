"""The deterministic evaluators, sampling, the judge-score parser and the spec validator."""

from __future__ import annotations

from typing import Any

import pytest

from interlock.catalog.v1 import catalog_pb2 as cpb
from services.common.evaluators import EvaluatorSpecError, parse_evaluator, parse_evaluators
from services.router.evaluation.checks import (
    REFUSAL_PHRASES,
    check_json,
    check_json_schema,
    check_length,
    check_refusal,
    check_regex,
    run_check,
    sampled,
)
from services.router.evaluation.judge import JudgeReplyError, judge_messages, parse_judge_score

SCHEMA = '{"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}'


def test_json_check() -> None:
    assert check_json('{"a": [1, 2]}').passed
    assert check_json("42").score == 1.0
    bad = check_json("Echo: {not json")
    assert (bad.passed, bad.score) == (False, 0.0)
    assert "not valid JSON" in bad.detail


def test_json_schema_check_names_the_failing_place() -> None:
    assert check_json_schema(SCHEMA, '{"name": "ada"}').passed
    wrong_type = check_json_schema(SCHEMA, '{"name": 7}')
    assert not wrong_type.passed and wrong_type.detail.startswith("name: ")
    missing = check_json_schema(SCHEMA, "{}")
    assert not missing.passed and "'name' is a required property" in missing.detail
    assert not check_json_schema(SCHEMA, "not json").passed


def test_regex_check_searches() -> None:
    assert check_regex(r"\d{3}-\d{4}", "call 555-1234 now").passed
    assert not check_regex(r"^\d+$", "12a").passed


@pytest.mark.parametrize(
    ("min_chars", "max_chars", "text", "passed"),
    [(3, 0, "abc", True), (4, 0, "abc", False), (0, 3, "abc", True), (0, 2, "abc", False), (1, 5, "", False)],
)
def test_length_check(min_chars: int, max_chars: int, text: str, passed: bool) -> None:
    outcome = check_length(min_chars, max_chars, text)
    assert outcome.passed is passed
    assert outcome.score == (1.0 if passed else 0.0)


def test_refusal_check_uses_the_documented_phrases() -> None:
    assert not check_refusal("I'm sorry, but I can't help with that.").passed
    # Typographic apostrophes count too.
    assert not check_refusal("I\u2019m unable to do this").passed
    assert check_refusal("Here is the haiku you asked for.").passed
    for phrase in REFUSAL_PHRASES:
        assert not check_refusal(f"Well. {phrase.upper()} sorry.").passed, phrase


def test_run_check_dispatches_by_kind() -> None:
    spec = cpb.Evaluator(kind="length", max_chars=2)
    assert not run_check(spec, "abc").passed
    unknown = run_check(cpb.Evaluator(kind="vibes"), "abc")
    assert unknown.error


def test_sampling_is_deterministic_and_respects_the_rate() -> None:
    ids = [f"req_{n}" for n in range(2000)]
    assert all(sampled(r, "e", 1.0) for r in ids)
    assert not any(sampled(r, "e", 0.0) for r in ids)
    chosen = [r for r in ids if sampled(r, "e", 0.25)]
    assert 400 < len(chosen) < 600
    assert chosen == [r for r in ids if sampled(r, "e", 0.25)]


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ('{"score": 0.8, "reason": "good"}', 0.8),
        ('Sure! ```json\n{"score": 1, "reason": "exact"}\n```', 1.0),
        ("Score: 0.25", 0.25),
        ("score = 7/10 because it is fine", 0.7),
        ("0.6", 0.6),
        ("  1 ", 1.0),
    ],
)
def test_judge_score_parser_accepts(reply: str, score: float) -> None:
    assert parse_judge_score(reply)[0] == pytest.approx(score)


def test_judge_score_parser_keeps_the_reason() -> None:
    assert parse_judge_score('{"score": 0.5, "reason": "half right"}') == (0.5, "half right")


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "I think it is pretty good.",
        '{"score": "high"}',
        '{"score": true}',
        '{"score": 1.5}',
        "Score: -0.2",
        "score: 12/10",
        "score: 3/0",
        "1.2",
    ],
)
def test_judge_score_parser_refuses_junk(reply: str) -> None:
    with pytest.raises(JudgeReplyError):
        parse_judge_score(reply)


def test_judge_prompt_carries_rubric_prompt_and_answer() -> None:
    system, user = judge_messages("Be concise.", "What is 2+2?", "4")
    assert "JSON object" in system.content
    assert "RUBRIC:\nBe concise." in user.content and "PROMPT:\nWhat is 2+2?" in user.content
    assert user.content.endswith("ANSWER:\n4")


# -- the spec validator (catalog YAML and the request's `evaluate`) ---------------------------


def test_specs_get_defaults() -> None:
    spec = parse_evaluator({"type": "json_schema", "schema": {"type": "object"}}, "e")
    assert (spec.name, spec.kind, spec.sample_rate, spec.schema_json) == (
        "json_schema",
        "json_schema",
        1.0,
        '{"type":"object"}',
    )
    judge = parse_evaluator({"type": "judge", "model": "m", "rubric": "r", "sample_rate": 0}, "e")
    assert (judge.judge_model, judge.rubric, judge.pass_threshold, judge.sample_rate) == ("m", "r", 0.5, 0.0)


@pytest.mark.parametrize(
    ("raw", "path", "problem"),
    [
        ("json", "e", "must be an object"),
        ({"type": "vibes"}, "e.type", "must be one of"),
        ({"type": "json", "pattern": "x"}, "e.pattern", "is not a key of a json evaluator"),
        ({"type": "json", "sample_rate": 1.5}, "e.sample_rate", "between 0 and 1"),
        ({"type": "json", "sample_rate": True}, "e.sample_rate", "must be a number"),
        ({"type": "json_schema"}, "e.schema", "is required"),
        ({"type": "json_schema", "schema": {"type": "nope"}}, "e.schema", "not a valid JSON Schema"),
        ({"type": "regex", "pattern": "("}, "e.pattern", "not a valid regular expression"),
        ({"type": "regex"}, "e.pattern", "is required"),
        ({"type": "length"}, "e", "needs min_chars or max_chars"),
        ({"type": "length", "min_chars": 5, "max_chars": 2}, "e.max_chars", "must not be below"),
        ({"type": "length", "min_chars": -1}, "e.min_chars", "non-negative"),
        ({"type": "judge", "rubric": "r"}, "e.model", "is required"),
        ({"type": "judge", "model": "m", "rubric": ""}, "e.rubric", "non-empty"),
        ({"type": "judge", "model": "m", "rubric": "r", "pass_threshold": 2}, "e.pass_threshold", "between"),
    ],
)
def test_bad_specs_name_path_and_problem(raw: Any, path: str, problem: str) -> None:
    with pytest.raises(EvaluatorSpecError) as info:
        parse_evaluator(raw, "e")
    assert info.value.path == path
    assert problem in info.value.problem


def test_spec_lists_refuse_duplicates_and_overlong_lists() -> None:
    with pytest.raises(EvaluatorSpecError, match="duplicate evaluator name"):
        parse_evaluators([{"type": "json"}, {"type": "json"}], "evaluate")
    with pytest.raises(EvaluatorSpecError, match="at most 2"):
        parse_evaluators([{"type": "json", "name": str(n)} for n in range(3)], "evaluate", limit=2)
    with pytest.raises(EvaluatorSpecError, match="must be a list"):
        parse_evaluators({"type": "json"}, "evaluate")
