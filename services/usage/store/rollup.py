"""What both ledger backends share about the hourly rollups: how events become rollup
rows, and how an AggregateQuery becomes one SELECT over them.

A rollup row sums the events of one (hour, key, project, model, provider). The stores
add the rows built here to the table in the same transaction that stores the events,
from the events that transaction newly stored only, so a replayed batch counts once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from interlock.usage.v1 import usage_pb2 as pb
from services.usage.store import DIMENSIONS, AggregateQuery, AggregateRow

HOUR_MS = 3_600_000
DAY_MS = 86_400_000

TABLE = "usage_hourly"
KEY_COLUMNS = ("hour_start_ms", "key_id", "project", "model", "provider")
# Summed columns, in AggregateRow's field order (cost_usd is the only float).
SUM_COLUMNS = (
    "requests", "successful", "failed", "latency_ms_sum", "prompt_tokens", "completion_tokens", "cached_tokens",
    "cost_usd", "ttft_ms_sum", "ttft_count",
)  # fmt: skip
COLUMNS = KEY_COLUMNS + SUM_COLUMNS

# Each dimension's SQL expression over the rollup table: a fixed table, so no caller's text
# ever reaches the SQL. "day" floors like "hour" does (the double modulo keeps times before
# 1970 in the right bucket, where SQL's % truncates towards zero); {mod} is the % operator.
_DIMENSION_SQL = {
    "key": "key_id",
    "project": "project",
    "model": "model",
    "provider": "provider",
    "day": f"hour_start_ms - ((hour_start_ms {{mod}} {DAY_MS}) + {DAY_MS}) {{mod}} {DAY_MS}",
    "hour": "hour_start_ms",
}
assert tuple(_DIMENSION_SQL) == DIMENSIONS
_FILTERS = (("key_id", "key_id"), ("project", "project"), ("model", "model"), ("provider", "provider"))

RollupKey = tuple[int, str, str, str, str]


def hour_start(time_unix_ms: int) -> int:
    return time_unix_ms - time_unix_ms % HOUR_MS


def rollup_model(event: pb.UsageEvent) -> str:
    """The model an event counts against: the one that answered, else the one asked for."""
    return event.model or event.model_requested


def first_of_each_id(events: Sequence[pb.UsageEvent]) -> list[pb.UsageEvent]:
    """The batch without repeated request ids, first occurrence kept: what the insert would store."""
    seen: dict[str, pb.UsageEvent] = {}
    for event in events:
        seen.setdefault(event.request_id, event)
    return list(seen.values())


def rollup_rows(events: Iterable[pb.UsageEvent]) -> list[tuple[Any, ...]]:
    """Sum events into one row per rollup key, columns in COLUMNS order."""
    sums: dict[RollupKey, list[Any]] = {}
    for e in events:
        key = (hour_start(e.time_unix_ms), e.key_id, e.project, rollup_model(e), e.provider)
        row = sums.get(key)
        if row is None:
            row = sums[key] = [0, 0, 0, 0, 0, 0, 0, 0.0, 0, 0]
        ok = e.status == pb.STATUS_OK
        row[0] += 1
        row[1] += ok
        row[2] += not ok
        row[3] += e.latency_ms
        row[4] += e.prompt_tokens
        row[5] += e.completion_tokens
        row[6] += e.cached_tokens
        row[7] += e.cost_usd
        if e.ttft_ms > 0:
            row[8] += e.ttft_ms
            row[9] += 1
    return [(*key, *row) for key, row in sums.items()]


def upsert_sql(source: str) -> str:
    """Add rows (COLUMNS, from source: a VALUES list or a SELECT) to the table, summing into existing keys."""
    additions = ", ".join(f"{c} = {TABLE}.{c} + excluded.{c}" for c in SUM_COLUMNS)
    return (
        f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) {source}"
        f" ON CONFLICT ({', '.join(KEY_COLUMNS)}) DO UPDATE SET {additions}"
    )


def where_sql(query: AggregateQuery, placeholder: str) -> tuple[list[str], list[object]]:
    """The time window and filters of query, over any table with hour_start_ms and the filter columns."""
    clauses = [f"hour_start_ms >= {placeholder}", f"hour_start_ms < {placeholder}"]
    args: list[object] = [query.start_ms, query.end_ms]
    for field, column in _FILTERS:
        value = getattr(query, field)
        if value:
            clauses.append(f"{column} = {placeholder}")
            args.append(value)
    return clauses, args


def dimensions_sql(query: AggregateQuery, placeholder: str) -> list[str]:
    """The SQL expressions of query.group_by, over any table with hour_start_ms and the key columns."""
    # psycopg reads a lone % as the start of a placeholder.
    modulo = "%%" if placeholder == "%s" else "%"
    return [_DIMENSION_SQL[d].format(mod=modulo) for d in query.group_by]


def aggregate_sql(query: AggregateQuery, placeholder: str) -> tuple[str, list[object]]:
    """The SELECT answering query, with its bound values.

    Selects the dimensions in query.group_by order, then SUM_COLUMNS; placeholder is the
    driver's ("?" or "%s"). Values are always bound, never written into the text. With no
    group_by and nothing matched, SQL still answers one row, of NULLs, which to_rows drops.
    """
    unknown = [d for d in query.group_by if d not in _DIMENSION_SQL]
    if unknown:
        raise ValueError(f"unknown dimensions {unknown}; known: {list(DIMENSIONS)}")
    if len(set(query.group_by)) != len(query.group_by):
        raise ValueError(f"repeated dimension in {list(query.group_by)}")
    clauses, args = where_sql(query, placeholder)
    dims = dimensions_sql(query, placeholder)
    # Cast, so both drivers hand back ints and a float (PostgreSQL's SUM of a BIGINT is a NUMERIC).
    sums = [f"CAST(SUM({c}) AS {'DOUBLE PRECISION' if c == 'cost_usd' else 'BIGINT'})" for c in SUM_COLUMNS]
    text = f"SELECT {', '.join([*dims, *sums])} FROM {TABLE} WHERE {' AND '.join(clauses)}"  # noqa: S608
    if dims:
        positions = ", ".join(str(n) for n in range(1, len(dims) + 1))
        text += f" GROUP BY {positions} ORDER BY {positions}"
    return text, args


def to_rows(query: AggregateQuery, rows: Iterable[Sequence[Any]]) -> list[AggregateRow]:
    """AggregateRows from aggregate_sql's result rows, whose values already have the right types."""
    width = len(query.group_by)
    names = query.group_by
    # Reports can have tens of thousands of groups: nothing per row but the row itself.
    return [
        AggregateRow(dict(zip(names, row[:width], strict=True)), *row[width:]) for row in rows if row[width] is not None
    ]
