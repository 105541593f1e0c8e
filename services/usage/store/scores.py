"""What both ledger backends share about evaluation scores: the table's columns, how a
QualityScore becomes a row, and how an AggregateQuery's groups get their scores.

A score row carries the scored request's hour, key, project, model and provider (the
producer copies them in), so score reports group exactly like the usage rollups and
never join the events. Scores that are evaluator errors stay in the table, for the
record, and out of every sum.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from interlock.usage.v1 import usage_pb2 as pb
from services.usage.store import AggregateQuery, AggregateRow, rollup

KEY_COLUMNS = ("request_id", "evaluator", "source")
COLUMNS = (
    "request_id", "evaluator", "source", "kind", "score", "passed", "detail", "error", "time_unix_ms",
    "hour_start_ms", "key_id", "project", "model", "provider",
)  # fmt: skip
UPDATED = [c for c in COLUMNS if c not in KEY_COLUMNS]


def score_row(s: pb.QualityScore) -> tuple[Any, ...]:
    return (
        s.request_id, s.evaluator, int(s.source), s.kind, s.score, s.passed, s.detail, s.error, s.time_unix_ms,
        rollup.hour_start(s.request_time_unix_ms), s.key_id, s.project, s.model, s.provider,
    )  # fmt: skip


def upsert_sql(table: str, source: str) -> str:
    """Write rows (COLUMNS, from source) to table, replacing an existing row of the same key."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in UPDATED)
    return (
        f"INSERT INTO {table} ({', '.join(COLUMNS)}) {source}"
        f" ON CONFLICT ({', '.join(KEY_COLUMNS)}) DO UPDATE SET {updates}"
    )


def aggregate_sql(table: str, query: AggregateQuery, placeholder: str) -> tuple[str, list[object]]:
    """Per group of query, from table (a fixed name, never a caller's): the dims, then the
    requests scored, the sum of their scores and the number of scores."""
    clauses, args = rollup.where_sql(query, placeholder)
    clauses.append(f"error = {placeholder}")
    args.append(False)
    dims = rollup.dimensions_sql(query, placeholder)
    sums = ["CAST(COUNT(DISTINCT request_id) AS BIGINT)", "CAST(SUM(score) AS DOUBLE PRECISION)", "COUNT(*)"]
    text = f"SELECT {', '.join([*dims, *sums])} FROM {table} WHERE {' AND '.join(clauses)}"  # noqa: S608
    if dims:
        text += f" GROUP BY {', '.join(str(n) for n in range(1, len(dims) + 1))}"
    return text, args


def merge(query: AggregateQuery, rows: list[AggregateRow], score_rows: Iterable[Sequence[Any]]) -> list[AggregateRow]:
    """Add each score group to the usage row of the same dims. A group whose requests have no
    usage row yet (their events not delivered yet) is left out until they have."""
    width = len(query.group_by)
    by_dims = {tuple(row.dims[d] for d in query.group_by): row for row in rows}
    for values in score_rows:
        if not values[width + 2]:
            continue  # no group and nothing matched: SQL's one row of NULLs
        row = by_dims.get(tuple(values[:width]))
        if row is not None:
            row.scored_requests = int(values[width])
            row.score_sum = float(values[width + 1])
            row.score_count = int(values[width + 2])
    return rows
