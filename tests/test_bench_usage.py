"""Smoke test of the usage ledger benchmark (bench/usage_stats.py): it runs end to end on a
tiny ledger of each backend, reports every query, and its raw-event comparison is right
(the raw answers equal the rollups' and what tests/test_usage_store.py sums by hand).
A test of the harness, never of speed: no figure here is compared with a threshold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bench import usage_stats
from services.usage.store.sqlite import SqliteEventStore
from tests.support.keystore import PG_URL
from tests.test_usage_store import reference

ROOT = Path(__file__).resolve().parents[1]
EVENTS = 2000


def run_bench(tmp_path: Path, *args: str) -> tuple[str, list[dict[str, Any]]]:
    out = tmp_path / "bench.json"
    scratch = tmp_path / "tmp"  # the benchmark's temporary directory goes here
    scratch.mkdir()
    argv = [sys.executable, "-m", "bench.usage_stats", "--events", str(EVENTS), "--repeat", "2", "--raw-repeat", "1"]
    done = subprocess.run(
        [*argv, "--json", str(out), *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "TMPDIR": str(scratch)},
    )  # fmt: skip
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert list(scratch.iterdir()) == []  # the generated ledger was deleted
    return done.stdout, json.loads(out.read_text())


def bench_schemas(admin: psycopg.Connection) -> list[tuple[str]]:
    return admin.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'usage_bench_%'").fetchall()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_bench_reports_every_query_with_matching_answers(
    tmp_path: Path, backend: str, admin: psycopg.Connection
) -> None:
    schemas = bench_schemas(admin)
    stdout, [result] = run_bench(tmp_path, "--backend", backend, "--database-url", PG_URL)
    assert bench_schemas(admin) == schemas  # a PostgreSQL run drops its schema
    assert result["backend"] == backend and result["events"] == EVENTS
    assert 0 < result["rollup_rows"] < EVENTS
    assert result["mib"]["total"] > 0
    queries = result["queries"]
    assert [q["query"] for q in queries] == list(usage_stats.QUERIES)
    for q in queries:
        assert q["same_answer"] is True, q
        assert q["groups"] > 0
        assert 0 < q["rollup_p50_ms"] <= q["rollup_p95_ms"]
        assert 0 < q["raw_p50_ms"] <= q["raw_p95_ms"]
    table_rows = [line for line in stdout.splitlines() if line.startswith(f"| {backend} ")]
    assert len(table_rows) == 1 + len(usage_stats.QUERIES)  # the load row, then one per query
    for name in usage_stats.QUERIES:
        assert sum(name in line for line in table_rows) == 1


def test_raw_queries_answer_what_the_rollups_and_the_events_say(tmp_path: Path) -> None:
    events = [e for batch in usage_stats.generate(EVENTS, seed=5, batch=300) for e in batch]
    assert len({e.request_id for e in events}) == EVENTS
    assert min(e.time_unix_ms for e in events) >= usage_stats.END_MS - usage_stats.DAYS * 86_400_000
    assert max(e.time_unix_ms for e in events) < usage_stats.END_MS
    assert 0.02 < sum(e.status != 1 for e in events) / EVENTS < 0.08  # ~5% failures
    with closing(SqliteEventStore(tmp_path / "usage.db")) as store:
        store.insert(events)
    ledger = usage_stats.sqlite_ledger(tmp_path)
    try:
        for name, query in usage_stats.QUERIES.items():
            raw = ledger.raw(query)
            expected = reference(events, query)
            assert raw, name
            assert usage_stats.same_answer(raw, expected), name
            assert usage_stats.same_answer(ledger.store.aggregate(query), expected), name
    finally:
        ledger.drop()
