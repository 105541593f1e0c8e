"""Evaluation hooks end to end: a real stack whose catalog gives models a JSON-schema
evaluator and a judge (served by a fake OpenAI upstream that answers scores), requests
through the edge, and the scores read back from the ledger, the stats, /v1/usage and
POST /v1/feedback; router:quality switching to the better-scored model on live scores."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from interlock.usage.v1 import usage_pb2
from tests.support.browser import PageWatch, chromium_context, require_chromium
from tests.support.fake_judge import FakeJudge
from tests.support.limits import auth, create_key_record, create_project
from tests.support.stack import Stack, stack_on_catalog

pytestmark = pytest.mark.e2e
UPSTREAM_KEY = "sk-judge-test"
SCHEMA = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
JUDGE = {"type": "judge", "name": "judge", "model": "judge-chat", "rubric": "Is the answer strong?"}
SCORE_COLUMNS = "request_id, evaluator, kind, source, score, passed, error, detail"
TEAM = "eval-team"  # a project with catalog evaluators of its own


def _catalog(fake: FakeJudge) -> dict[str, Any]:
    fake_provider = {"kind": "openai", "base_url": fake.base_url, "api_key_env": "FAKE_UPSTREAM_KEY"}

    def chat(model_id: str, upstream: str, **extra: Any) -> dict[str, Any]:
        return {"id": model_id, "type": "chat", "pricing": {"input": 1.0, "output": 2.0},
                "deployments": [{"provider": "fake", "model": upstream}], **extra}  # fmt: skip

    return {
        "providers": {"fake": fake_provider},
        "models": [
            chat("judge-chat", "judge"),
            chat("json-chat", "verbatim", evaluators=[
                {"type": "json_schema", "name": "schema", "schema": SCHEMA, "sample_rate": 1.0},
                {**JUDGE, "sample_rate": 1.0},
            ]),
            chat("plain-chat", "verbatim"),
            chat("unsampled-chat", "verbatim", evaluators=[{"type": "json", "sample_rate": 0.0},
                                                           {**JUDGE, "sample_rate": 0.0}]),
            chat("weak-chat", "weak", quality=9, evaluators=[JUDGE]),
            chat("strong-chat", "strong", quality=1, evaluators=[JUDGE]),
        ],
        "profiles": [
            {"id": "router:quality", "strategy": "quality", "candidates": ["weak-chat", "strong-chat"]},
            {"id": "router:quality-live", "strategy": "quality", "candidates": ["weak-chat", "strong-chat"],
             "use_live_scores": True, "min_live_scores": 2},
        ],
        "evaluators": {"projects": {TEAM: [{"type": "length", "name": "team-length", "max_chars": 1000}]}},
        "plans": [{"id": "roomy", "requests_per_minute": 100000, "tokens_per_minute": 100000000, "burst": 100000}],
    }  # fmt: skip


@pytest.fixture(scope="module")
def judge() -> Iterator[FakeJudge]:
    with FakeJudge(required_api_key=UPSTREAM_KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, judge: FakeJudge) -> Iterator[Stack]:
    # One worker: live quality scores are kept by each router process (as router replicas keep
    # theirs), and the profile test follows one router's.
    with stack_on_catalog(
        tmp_path_factory.mktemp("evaluation"), _catalog(judge), {"FAKE_UPSTREAM_KEY": UPSTREAM_KEY}, workers=1
    ) as running:
        yield running


@pytest.fixture
def fake(judge: FakeJudge) -> Iterator[FakeJudge]:
    judge.reset()
    judge.required_api_key = UPSTREAM_KEY
    yield judge
    judge.reset()
    judge.required_api_key = UPSTREAM_KEY


def _chat(
    stack: Stack, model: str, content: str, headers: dict[str, str] | None = None, **extra: Any
) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(f"{stack.base_url}/chat/completions", json=body, headers=headers or stack.headers(), timeout=30)


def _ok(reply: httpx.Response) -> str:
    assert reply.status_code == 200, reply.text
    return reply.headers["x-request-id"]


def _db(stack: Stack) -> sqlite3.Connection:
    db = sqlite3.connect(f"file:{stack.data_dir / 'usage.db'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    return db


def _scores(stack: Stack, request_ids: list[str]) -> list[dict[str, Any]]:
    with closing(_db(stack)) as db:
        marks = ",".join("?" * len(request_ids))
        query = f"SELECT {SCORE_COLUMNS} FROM scores WHERE request_id IN ({marks}) ORDER BY request_id, evaluator"
        return [dict(row) for row in db.execute(query, request_ids)]


def _wait_for_scores(stack: Stack, request_ids: list[str], count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Scores are produced after the answer and batched: wait until count rows are there."""
    deadline = time.monotonic() + timeout
    rows = _scores(stack, request_ids)
    while len(rows) < count and time.monotonic() < deadline:
        time.sleep(0.05)
        rows = _scores(stack, request_ids)
    time.sleep(0.3)  # let an unexpected extra row show itself
    return _scores(stack, request_ids)


def _by_evaluator(rows: list[dict[str, Any]], request_id: str) -> dict[str, dict[str, Any]]:
    return {r["evaluator"]: r for r in rows if r["request_id"] == request_id}


def _today() -> str:
    return dt.datetime.now(dt.UTC).date().isoformat()


# -- catalog evaluators, sampling, judges -------------------------------------------------------


@pytest.fixture(scope="module")
def evaluated(stack: Stack, judge: FakeJudge) -> dict[str, str]:
    """Traffic on the evaluated, plain and unsampled models, with its scores in the ledger."""
    judge.reset()
    ids = {
        "valid": _ok(_chat(stack, "json-chat", '{"name": "ada"}')),
        "invalid": _ok(_chat(stack, "json-chat", "not json at all")),
        "plain": _ok(_chat(stack, "plain-chat", '{"name": "ada"}')),
        "unsampled": _ok(_chat(stack, "unsampled-chat", '{"name": "ada"}')),
    }
    with httpx.stream(
        "POST",
        f"{stack.base_url}/chat/completions",
        json={"model": "json-chat", "stream": True, "messages": [{"role": "user", "content": '{"name": "s"}'}]},
        headers=stack.headers(),
        timeout=30,
    ) as streamed:
        assert streamed.status_code == 200
        ids["stream"] = streamed.headers["x-request-id"]
        streamed.read()
    _wait_for_scores(stack, [ids["valid"], ids["invalid"], ids["stream"]], 6)
    return ids


def test_sampled_requests_get_schema_and_judge_scores(stack: Stack, evaluated: dict[str, str]) -> None:
    rows = _scores(stack, list(evaluated.values()))
    valid, invalid = _by_evaluator(rows, evaluated["valid"]), _by_evaluator(rows, evaluated["invalid"])
    assert set(valid) == set(invalid) == {"schema", "judge"}
    assert (valid["schema"]["score"], valid["schema"]["passed"], valid["schema"]["kind"]) == (1.0, 1, "json_schema")
    assert valid["schema"]["source"] == usage_pb2.SCORE_SOURCE_EVALUATOR
    assert (invalid["schema"]["score"], invalid["schema"]["passed"]) == (0.0, 0)
    assert "not valid JSON" in invalid["schema"]["detail"]
    # The fake judge gives 0.2 to an answer without "strong"; below the 0.5 threshold.
    for judged in (valid["judge"], invalid["judge"]):
        assert (judged["score"], judged["passed"], judged["error"], judged["kind"]) == (0.2, 0, 0, "judge")
        assert judged["source"] == usage_pb2.SCORE_SOURCE_JUDGE and judged["detail"] == "fake"
    # A stream is evaluated on the text it streamed (the fake echoes streams: "Echo: {...}", not JSON).
    streamed = _by_evaluator(rows, evaluated["stream"])
    assert streamed["schema"]["score"] == 0.0 and streamed["judge"]["score"] == 0.2
    # No evaluators, or a sample rate of 0: nothing.
    assert _by_evaluator(rows, evaluated["plain"]) == {} and _by_evaluator(rows, evaluated["unsampled"]) == {}


def test_judge_calls_are_ledgered_under_no_key(stack: Stack, evaluated: dict[str, str]) -> None:
    with closing(_db(stack)) as db:
        judged = [dict(r) for r in db.execute("SELECT * FROM events WHERE endpoint = '/internal/evaluate'")]
    by_target = {json.loads(r["metadata_json"])["evaluates"]: r for r in judged}
    for name in ("valid", "invalid", "stream"):
        row = by_target[evaluated[name]]
        assert (row["model"], row["key_id"], row["project"], row["status"]) == ("judge-chat", "", "", 1)
        assert row["cost_usd"] > 0 and row["request_id"].startswith("eval_")
    assert evaluated["plain"] not in by_target and evaluated["unsampled"] not in by_target


def test_stats_and_usage_report_quality(stack: Stack, evaluated: dict[str, str]) -> None:
    with closing(_db(stack)) as db:
        scores = [r[0] for r in db.execute("SELECT score FROM scores WHERE model = 'json-chat' AND error = 0")]
        scored = db.execute("SELECT COUNT(DISTINCT request_id) FROM scores WHERE model = 'json-chat'").fetchone()[0]
    reply = httpx.post(
        f"{stack.url}/sdk/models/stats",
        json={"startDay": _today(), "endDay": _today(), "modelId": "json-chat"},
        headers=stack.headers(),
        timeout=10,
    )
    assert reply.status_code == 201, reply.text
    metrics = reply.json()[0]["aggregateMetrics"]
    assert metrics["evaluatedRequests"] == scored >= 3
    assert metrics["avgQualityScore"] == round(sum(scores) / len(scores), 4)
    [by_key] = reply.json()[0]["metricsByApiKey"]
    assert by_key["aggregateMetrics"]["evaluatedRequests"] == scored
    # An unscored model keeps the seed's exact shape.
    plain = httpx.post(
        f"{stack.url}/sdk/models/stats",
        json={"startDay": _today(), "endDay": _today(), "modelId": "plain-chat"},
        headers=stack.headers(),
        timeout=10,
    ).json()[0]["aggregateMetrics"]
    assert "avgQualityScore" not in plain and "evaluatedRequests" not in plain
    usage = httpx.get(f"{stack.base_url}/usage", params={"group_by": "model"}, headers=stack.headers(), timeout=10)
    assert usage.status_code == 200, usage.text
    rows = {r["model"]: r for r in usage.json()["rows"]}
    # int64, so a string in proto3 JSON, like the other counts of a usage row.
    assert rows["json-chat"]["evaluated_requests"] == str(scored)
    assert rows["json-chat"]["avg_quality_score"] == metrics["avgQualityScore"]
    assert (rows["plain-chat"]["evaluated_requests"], rows["plain-chat"]["avg_quality_score"]) == ("0", 0)
    # The CSV export carries the same two columns, for billing and quality reviews in a spreadsheet.
    export = httpx.get(
        f"{stack.base_url}/usage/export", params={"group_by": "model"}, headers=stack.headers(), timeout=10
    )
    assert export.status_code == 200, export.text
    header, *lines = export.text.strip().split("\r\n")
    cells = {
        row["model"]: row for row in (dict(zip(header.split(","), line.split(","), strict=True)) for line in lines)
    }
    assert cells["json-chat"]["evaluated_requests"] == str(scored)
    assert float(cells["json-chat"]["avg_quality_score"]) == metrics["avgQualityScore"]
    assert (cells["plain-chat"]["evaluated_requests"], float(cells["plain-chat"]["avg_quality_score"])) == ("0", 0)


def test_dashboard_shows_the_quality_tile(stack: Stack, evaluated: dict[str, str]) -> None:
    require_chromium()
    usage = httpx.get(
        f"{stack.base_url}/usage", params={"group_by": "model"}, headers=stack.admin_headers(), timeout=10
    )
    rows = [r for r in usage.json()["rows"] if int(r["evaluated_requests"])]
    scored = sum(int(r["evaluated_requests"]) for r in rows)
    expected = sum(r["avg_quality_score"] * int(r["evaluated_requests"]) for r in rows) / scored
    with chromium_context() as browser:
        watch = PageWatch()
        tab = watch.attach(browser.new_page())
        tab.set_default_timeout(15_000)
        tab.goto(f"{stack.url}/dashboard#key={stack.admin_key}")
        tab.wait_for_selector("body[data-state=ready]")
        value = tab.locator("#tile-quality .value")
        assert float(value.get_attribute("data-value") or "nan") == pytest.approx(expected)
        assert value.inner_text() == f"{expected:.2f}"
        assert f"{scored} evaluated requests" in tab.locator("#tile-quality .sub").inner_text()
        assert watch.problems() == []  # no CSP violations, no script errors


def test_a_junk_judge_reply_is_an_evaluator_error(stack: Stack, fake: FakeJudge) -> None:
    fake.judge_reply = "It reads well, I suppose."
    request_id = _ok(_chat(stack, "json-chat", '{"name": "junk"}'))
    rows = _by_evaluator(_wait_for_scores(stack, [request_id], 2), request_id)
    assert (rows["judge"]["error"], rows["judge"]["passed"]) == (1, 0)
    assert "no score" in rows["judge"]["detail"]
    assert (rows["schema"]["error"], rows["schema"]["score"]) == (0, 1.0)  # the other evaluator is unaffected


# -- per-request evaluators --------------------------------------------------------------------


def test_a_request_brings_its_own_evaluators(stack: Stack, fake: FakeJudge) -> None:
    evaluate = [
        {"type": "regex", "pattern": r"\bada\b"},
        {"type": "length", "name": "short", "max_chars": 5},
        {"type": "refusal"},
        {"type": "json", "sample_rate": 0.0},
    ]
    request_id = _ok(_chat(stack, "plain-chat", '{"name": "ada"}', evaluate=evaluate))
    rows = _by_evaluator(_wait_for_scores(stack, [request_id], 3), request_id)
    assert set(rows) == {"regex", "short", "refusal"}
    assert (rows["regex"]["passed"], rows["short"]["passed"], rows["refusal"]["passed"]) == (1, 0, 1)
    # Never sent upstream.
    assert all("evaluate" not in (r["json"] or {}) for r in fake.requests)


def test_a_projects_catalog_evaluators_apply_to_its_keys_only(stack: Stack, evaluated: dict[str, str]) -> None:
    reply = httpx.post(f"{stack.base_url}/projects", json={"id": TEAM}, headers=stack.admin_headers(), timeout=10)
    assert reply.status_code == 200, reply.text
    secret, _ = create_key_record(stack, [stack.url], project=TEAM)
    request_id = _ok(_chat(stack, "plain-chat", "team work", auth(secret)))
    rows = _by_evaluator(_wait_for_scores(stack, [request_id], 1), request_id)
    assert list(rows) == ["team-length"] and rows["team-length"]["passed"] == 1
    assert _by_evaluator(_scores(stack, [evaluated["plain"]]), evaluated["plain"]) == {}  # another project's key


@pytest.mark.parametrize(
    ("evaluate", "param"),
    [
        ({"type": "json"}, "evaluate"),
        ([{"type": "regex", "pattern": "("}], "evaluate[0].pattern"),
        ([{"type": "json_schema", "schema": {"type": 12}}], "evaluate[0].schema"),
        ([{"type": "json", "sample_rate": 2}], "evaluate[0].sample_rate"),
        ([{"type": "vibes"}], "evaluate[0].type"),
        ([{"type": "judge", "model": "no-such-model", "rubric": "r"}], "evaluate[0].model"),
        ([{"type": "json", "colour": "red"}], "evaluate[0].colour"),
    ],
)
def test_bad_evaluate_is_400_naming_the_field(stack: Stack, evaluate: Any, param: str) -> None:
    reply = _chat(stack, "plain-chat", "hi", evaluate=evaluate)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


def test_a_request_judge_must_be_a_model_the_key_may_use(stack: Stack) -> None:
    scoped, _ = create_key_record(stack, [stack.url], models=["plain-chat"])
    judge = [{"type": "judge", "model": "judge-chat", "rubric": "r"}]
    reply = _chat(stack, "plain-chat", "hi", auth(scoped), evaluate=judge)
    assert reply.status_code == 403, reply.text
    assert (reply.json()["error"]["code"], reply.json()["error"]["param"]) == ("model_not_allowed", "evaluate[0].model")


# -- client feedback ---------------------------------------------------------------------------


def _feedback(stack: Stack, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/feedback", json=body, headers=headers or stack.headers(), timeout=10)


def test_feedback_is_recorded_for_the_requests_own_key(stack: Stack) -> None:
    request_id = _ok(_chat(stack, "plain-chat", "rate me"))
    assert stack.wait_for_events(1, request_id=request_id) == 1
    reply = _feedback(stack, {"request_id": request_id, "score": 0.8, "comment": "nice"})
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"request_id": request_id, "score": 0.8, "comment": "nice"}
    [row] = _scores(stack, [request_id])
    assert (row["evaluator"], row["source"], row["score"], row["passed"], row["detail"]) == (
        "feedback",
        usage_pb2.SCORE_SOURCE_FEEDBACK,
        0.8,
        1,
        "nice",
    )
    # Thumbs down replaces it; the admin key may rate too.
    assert _feedback(stack, {"request_id": request_id, "thumbs": "down"}).status_code == 200
    assert _feedback(stack, {"request_id": request_id, "thumbs": "down"}, stack.admin_headers()).status_code == 200
    [row] = _scores(stack, [request_id])
    assert (row["score"], row["passed"], row["detail"]) == (0.0, 0, "")


def test_feedback_on_unknown_or_foreign_requests_is_404(stack: Stack) -> None:
    request_id = _ok(_chat(stack, "plain-chat", "mine"))
    assert stack.wait_for_events(1, request_id=request_id) == 1
    unknown = _feedback(stack, {"request_id": "req_does_not_exist", "score": 1})
    assert unknown.status_code == 404, unknown.text
    assert (unknown.json()["error"]["type"], unknown.json()["error"]["code"]) == (
        "not_found_error",
        "request_not_found",
    )
    other_secret, _ = create_key_record(stack, [stack.url], project=create_project(stack))
    foreign = _feedback(stack, {"request_id": request_id, "score": 1}, auth(other_secret))
    assert foreign.status_code == 404, foreign.text
    assert _scores(stack, [request_id]) == []


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"score": 0.5},
        {"request_id": "REQ", "score": 1.5},
        {"request_id": "REQ", "score": -0.1},
        {"request_id": "REQ"},
        {"request_id": "REQ", "score": 1, "thumbs": "up"},
        {"request_id": "REQ", "thumbs": "sideways"},
        {"request_id": "REQ", "score": "high"},
        {"request_id": "REQ", "score": 1, "stars": 5},
        {"request_id": "REQ", "score": 1, "comment": "x" * 2001},
    ],
)
def test_bad_feedback_is_400(stack: Stack, body: dict[str, Any], tmp_path: Path) -> None:
    request_id = _ok(_chat(stack, "plain-chat", "bad feedback"))
    assert stack.wait_for_events(1, request_id=request_id) == 1
    payload = {k: (request_id if v == "REQ" else v) for k, v in body.items()}
    reply = _feedback(stack, payload)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert _scores(stack, [request_id]) == []


def test_feedback_needs_a_key(stack: Stack) -> None:
    reply = httpx.post(f"{stack.base_url}/feedback", json={"request_id": "x", "score": 1}, timeout=10)
    assert reply.status_code == 401


# -- router:quality on live scores -------------------------------------------------------------


def _routed_model(reply: httpx.Response) -> tuple[str, str]:
    assert reply.status_code == 200, reply.text
    decision = reply.json()["choices"][0]["routing_decision"]
    return decision["model"], decision["reason"]


def test_router_quality_follows_live_scores_when_enabled(stack: Stack) -> None:
    # Static tiers: weak-chat (9) over strong-chat (1), and no live scores yet.
    assert _routed_model(_chat(stack, "router:quality-live", "q")) == ("weak-chat", "profile:quality:live")
    scored = [_ok(_chat(stack, "weak-chat", "q"))]
    scored += [_ok(_chat(stack, "strong-chat", "q")) for _ in range(2)]
    # The judge scores "strong answer" 0.9 and "weak answer" 0.2; once the router has two of each...
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if _routed_model(_chat(stack, "router:quality-live", "q"))[0] == "strong-chat":
            break
        time.sleep(0.1)
    else:
        raise AssertionError("router:quality-live never switched to the better-scored model")
    rows = _wait_for_scores(stack, scored, 3)  # the router's averages can be ahead of the ledger
    assert {(r["request_id"], r["score"]) for r in rows} == {(scored[0], 0.2), (scored[1], 0.9), (scored[2], 0.9)}
    # A profile without use_live_scores keeps the static order.
    assert _routed_model(_chat(stack, "router:quality", "q")) == ("weak-chat", "profile:quality")
