"""The usage ledger benchmark: how fast the usage reports read the hourly rollups, and
what the same answers cost when summed from the raw events.

    python -m bench.usage_stats [--events 1000000 10000000] [--backend sqlite|postgres]
                                [--database-url postgresql://...] [--repeat 20] [--raw-repeat 3]
                                [--batch 10000] [--seed 2] [--keep] [--json PATH]

For each size it loads a fresh ledger through the store's own insert (the path the
service uses, so the rollups are the ones production builds), then runs each report
query (QUERIES) once untimed and --repeat times timed through store.aggregate(), and
the equivalent GROUP BY over the events table once untimed and --raw-repeat times
timed. Every rollup answer is compared with the raw one; any difference fails the run.

The data: 30 days of events ending at END_MS, in time order, 50 API keys in 10 projects, 20 models
over 4 providers, keys and models drawn with Zipf-like weights, ~60% streams, ~5%
failures (half of the errors never reached a model, so they count against the model
asked for), a tenth of the requests through a routing profile. Fixed seed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from bench.harness import markdown_table, percentile
from interlock.usage.v1 import usage_pb2 as pb
from services.usage.store import AggregateQuery, AggregateRow, EventStore
from services.usage.store.postgres import PostgresEventStore
from services.usage.store.rollup import DAY_MS, HOUR_MS, SUM_COLUMNS, to_rows
from services.usage.store.sqlite import SqliteEventStore

END_MS = 1_767_225_600_000  # 2026-01-01T00:00Z, exclusive
DAYS = 30
PROJECTS = [f"proj-{n:02d}" for n in range(10)]
KEYS = [(f"key-{n:03d}", PROJECTS[n % len(PROJECTS)]) for n in range(50)]
PROVIDERS = ["openai", "anthropic", "gemini", "azure"]
# (model, provider, USD per input token, USD per output token)
MODELS = [(f"model-{n:02d}", PROVIDERS[n % 4], (n % 5 + 1) * 2e-7, (n % 5 + 1) * 8e-7) for n in range(20)]
ENDPOINTS = ["/v1/chat/completions"] * 16 + ["/v1/embeddings"] * 3 + ["/v1/completions"]


def _zipf(count: int) -> list[float]:
    """Cumulative weights 1/n^1.1: a few heavy users and models, a long tail."""
    total, cumulative = 0.0, []
    for n in range(1, count + 1):
        total += 1 / n**1.1
        cumulative.append(total)
    return cumulative


_KEY_WEIGHTS = _zipf(len(KEYS))
_MODEL_WEIGHTS = _zipf(len(MODELS))

# The reports the API runs. The busiest model and key: the heaviest case of each.
TOP_MODEL, TOP_KEY, TOP_PROJECT = MODELS[0][0], KEYS[0][0], KEYS[0][1]
QUERIES: dict[str, AggregateQuery] = {
    "model stats by key,hour (31 d)": AggregateQuery(END_MS - 31 * DAY_MS, END_MS, ("key", "hour"), model=TOP_MODEL),
    "model stats by key,hour, one key": AggregateQuery(
        END_MS - 31 * DAY_MS, END_MS, ("key", "hour"), key_id=TOP_KEY, model=TOP_MODEL
    ),
    "usage by model,day (30 d)": AggregateQuery(END_MS - DAYS * DAY_MS, END_MS, ("model", "day")),
    "usage by key (30 d)": AggregateQuery(END_MS - DAYS * DAY_MS, END_MS, ("key",)),
    "one project by model,day (30 d)": AggregateQuery(
        END_MS - DAYS * DAY_MS, END_MS, ("model", "day"), project=TOP_PROJECT
    ),
}


def generate(count: int, seed: int, batch: int) -> Iterator[list[pb.UsageEvent]]:
    """count events in batches of batch, the same ones for the same seed."""
    rng = random.Random(seed)
    start, span = END_MS - DAYS * DAY_MS, DAYS * DAY_MS
    made = 0
    while made < count:
        size = min(batch, count - made)
        keys = rng.choices(range(len(KEYS)), cum_weights=_KEY_WEIGHTS, k=size)
        models = rng.choices(MODELS, cum_weights=_MODEL_WEIGHTS, k=size)
        # Each batch covers the next slice of the 30 days, as the service receives them: the
        # ledger is written in time order, which is what keeps its indexes cheap to grow.
        first, last = start + span * made // count, start + span * (made + size) // count
        times = sorted(rng.randrange(first, max(last, first + 1)) for _ in range(size))
        events = []
        for n, (key, (model, provider, price_in, price_out), at) in enumerate(zip(keys, models, times, strict=True)):
            roll, routed = rng.random(), rng.random() < 0.1
            status = pb.STATUS_ERROR if roll < 0.04 else pb.STATUS_CANCELLED if roll < 0.05 else pb.STATUS_OK
            answered = status != pb.STATUS_ERROR or roll < 0.02  # half the errors had no deployment
            prompt = int(rng.expovariate(1 / 800)) + 1
            completion = int(rng.expovariate(1 / 250)) if status == pb.STATUS_OK else 0
            endpoint = ENDPOINTS[int(roll * 1000) % len(ENDPOINTS)]
            stream = endpoint == ENDPOINTS[0] and rng.random() < 0.7
            latency = 150 + completion * 12 + int(rng.expovariate(1 / 200))
            key_id, project = KEYS[key]
            events.append(
                pb.UsageEvent(
                    request_id=f"req-{seed}-{made + n:010d}", time_unix_ms=at,
                    key_id=key_id, project=project, client_ip=f"10.0.{key}.{n % 8}", endpoint=endpoint,
                    model_requested="router:fast" if routed else model, model=model if answered else "",
                    provider=provider if answered else "", deployment=f"{provider}/{model}" if answered else "",
                    prompt_tokens=prompt, completion_tokens=completion,
                    cached_tokens=prompt // 4 if roll > 0.8 else 0, cost_usd=prompt * price_in + completion * price_out,
                    latency_ms=latency, ttft_ms=min(latency, 80 + int(rng.expovariate(1 / 150))) if stream else 0,
                    status=status, error_code="upstream_error" if status == pb.STATUS_ERROR else "",
                    attempts=2 if roll < 0.03 else 1, stream=stream,
                )
            )  # fmt: skip
        made += size
        yield events


# -- the same answers from the raw events ------------------------------------------------------

_RAW_DIMENSIONS = {
    "key": "key_id",
    "project": "project",
    "model": "CASE WHEN model <> '' THEN model ELSE model_requested END",
    "provider": "provider",
    "day": "time_unix_ms - time_unix_ms {mod} 86400000",  # event times here are all after 1970
    "hour": "time_unix_ms - time_unix_ms {mod} 3600000",
}
_RAW_SUMS = tuple(
    f"CAST({s} AS {'DOUBLE PRECISION' if s == 'SUM(cost_usd)' else 'BIGINT'})"
    for s in (
        "COUNT(*)", "SUM(CASE WHEN status = 1 THEN 1 ELSE 0 END)", "SUM(CASE WHEN status <> 1 THEN 1 ELSE 0 END)",
        "SUM(latency_ms)", "SUM(prompt_tokens)", "SUM(completion_tokens)", "SUM(cached_tokens)", "SUM(cost_usd)",
        "SUM(CASE WHEN ttft_ms > 0 THEN ttft_ms ELSE 0 END)", "SUM(CASE WHEN ttft_ms > 0 THEN 1 ELSE 0 END)",
    )
)  # fmt: skip
assert len(_RAW_SUMS) == len(SUM_COLUMNS)


def raw_sql(query: AggregateQuery, table: str, placeholder: str) -> tuple[str, list[object]]:
    """The GROUP BY over the events that answers query (whose bounds are whole hours)."""
    assert query.start_ms % HOUR_MS == 0 and query.end_ms % HOUR_MS == 0
    modulo = "%%" if placeholder == "%s" else "%"
    clauses = [f"time_unix_ms >= {placeholder}", f"time_unix_ms < {placeholder}"]
    args: list[object] = [query.start_ms, query.end_ms]
    for name, column in (("key_id", "key_id"), ("project", "project"), ("model", _RAW_DIMENSIONS["model"]),
                         ("provider", "provider")):  # fmt: skip
        if getattr(query, name):
            clauses.append(f"{column} = {placeholder}")
            args.append(getattr(query, name))
    dims = [_RAW_DIMENSIONS[d].format(mod=modulo) for d in query.group_by]
    text = f"SELECT {', '.join([*dims, *_RAW_SUMS])} FROM {table} WHERE {' AND '.join(clauses)}"
    if dims:
        positions = ", ".join(str(n) for n in range(1, len(dims) + 1))
        text += f" GROUP BY {positions} ORDER BY {positions}"
    return text, args


def same_answer(a: Sequence[AggregateRow], b: Sequence[AggregateRow]) -> bool:
    """Equal rows, except that float costs summed in another order may differ in the last bits."""
    return len(a) == len(b) and all(
        replace(x, cost_usd=0.0) == replace(y, cost_usd=0.0) and math.isclose(x.cost_usd, y.cost_usd, rel_tol=1e-9)
        for x, y in zip(a, b, strict=True)
    )


# -- one ledger per size --------------------------------------------------------------------------


@dataclass
class Ledger:
    """A fresh ledger of one backend: its store, a raw-SQL runner over its events, and its size."""

    store: EventStore
    raw: Callable[[AggregateQuery], list[AggregateRow]]
    sizes: Callable[[], dict[str, float | None]]
    drop: Callable[[], None]
    where: str


def sqlite_ledger(directory: Path) -> Ledger:
    path = directory / "usage.db"
    store = SqliteEventStore(path)
    reader = sqlite3.connect(path)

    def raw(query: AggregateQuery) -> list[AggregateRow]:
        return to_rows(query, reader.execute(*raw_sql(query, "events", "?")).fetchall())

    def sizes() -> dict[str, float | None]:
        reader.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        per_table: dict[str, float | None] = {"events": None, "rollups": None}
        try:  # dbstat is a compile-time option of SQLite
            for name, size in reader.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
                kind = "rollups" if name.startswith("usage_hourly") else "events" if "events" in name else None
                if kind:
                    per_table[kind] = (per_table[kind] or 0) + size / 2**20
        except sqlite3.OperationalError:
            pass
        return {**per_table, "total": sum(p.stat().st_size for p in directory.iterdir()) / 2**20}

    def drop() -> None:
        reader.close()
        store.close()

    return Ledger(store, raw, sizes, drop, str(path))


def postgres_ledger(url: str, keep: bool) -> Ledger:
    schema = f"usage_bench_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(url, autocommit=True)
    admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    scoped = make_conninfo(url, options=f"-c search_path={schema}")
    store = PostgresEventStore(scoped, statement_timeout_ms=3_600_000)  # raw scans of 10M rows are slow
    reader = psycopg.connect(scoped, autocommit=True)
    # The session settings the store gives its own connection, so both sides plan alike.
    reader.execute("SELECT set_config('work_mem', '32MB', false) FROM pg_settings WHERE name = 'work_mem'"
                   " AND setting::int < 32768")  # fmt: skip
    reader.execute("SET plan_cache_mode = force_custom_plan")

    def raw(query: AggregateQuery) -> list[AggregateRow]:
        return to_rows(query, reader.execute(*raw_sql(query, "usage_events", "%s")).fetchall())

    def sizes() -> dict[str, float | None]:
        reader.execute("VACUUM ANALYZE")  # what autovacuum would have done by the time anyone reads
        row = reader.execute(
            "SELECT pg_total_relation_size('usage_events'), pg_total_relation_size('usage_hourly')"
        ).fetchone()
        assert row is not None
        return {"events": row[0] / 2**20, "rollups": row[1] / 2**20, "total": (row[0] + row[1]) / 2**20}

    def drop() -> None:
        reader.close()
        store.close()
        if not keep:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        admin.close()

    return Ledger(store, raw, sizes, drop, f"schema {schema}")


@dataclass
class QueryResult:
    events: int
    query: str
    groups: int
    rollup_p50_ms: float
    rollup_p95_ms: float
    raw_p50_ms: float
    raw_p95_ms: float
    same_answer: bool


@dataclass
class SizeResult:
    backend: str
    events: int
    generate_s: float = 0.0
    load_s: float = 0.0
    rollup_rows: int = 0
    mib: dict[str, float | None] = field(default_factory=dict)
    queries: list[QueryResult] = field(default_factory=list)


def timed(run: Callable[[], list[AggregateRow]], repeat: int) -> tuple[list[AggregateRow], list[float]]:
    """run() once to warm caches, then repeat times timed (ms, ascending); returns the answer and the times."""
    answer = run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        run()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return answer, sorted(times)


def run_size(ledger: Ledger, backend: str, count: int, args: argparse.Namespace) -> SizeResult:
    result = SizeResult(backend, count)
    stream = generate(count, args.seed, args.batch)
    while True:
        started = time.perf_counter()
        batch = next(stream, None)
        result.generate_s += time.perf_counter() - started
        if batch is None:
            break
        started = time.perf_counter()
        stored, duplicates = ledger.store.insert(batch)
        result.load_s += time.perf_counter() - started
        assert (stored, duplicates) == (len(batch), 0), (stored, duplicates)
    result.mib = ledger.sizes()
    everything = AggregateQuery(0, 2**62, ("hour", "key", "project", "model", "provider"))
    result.rollup_rows = len(ledger.store.aggregate(everything))
    for name, query in QUERIES.items():
        answer, rollup_ms = timed(lambda q=query: ledger.store.aggregate(q), args.repeat)  # type: ignore[misc]
        raw_answer, raw_ms = timed(lambda q=query: ledger.raw(q), args.raw_repeat)  # type: ignore[misc]
        result.queries.append(
            QueryResult(
                count, name, len(answer), statistics.median(rollup_ms), percentile(rollup_ms, 95),
                statistics.median(raw_ms), percentile(raw_ms, 95), same_answer(answer, raw_answer),
            )
        )  # fmt: skip
    return result


def report(results: Sequence[SizeResult]) -> str:
    load = markdown_table(
        ["backend", "events", "generate s", "load s", "events/s", "rollup rows", "events MiB", "rollups MiB",
         "DB MiB"],
        [[r.backend, r.events, r.generate_s, r.load_s, r.events / r.load_s, r.rollup_rows, r.mib.get("events"),
          r.mib.get("rollups"), r.mib.get("total")] for r in results],
    )  # fmt: skip
    queries = markdown_table(
        ["backend", "events", "query", "groups", "rollup p50 ms", "rollup p95 ms", "raw p50 ms", "raw p95 ms",
         "raw / rollup", "same answer"],
        [[r.backend, q.events, q.query, q.groups, q.rollup_p50_ms, q.rollup_p95_ms, q.raw_p50_ms, q.raw_p95_ms,
          q.raw_p50_ms / q.rollup_p50_ms if q.rollup_p50_ms else None, "yes" if q.same_answer else "NO"]
         for r in results for q in r.queries],
    )  # fmt: skip
    return f"{load}\n\n{queries}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.usage_stats", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--database-url", default=os.environ.get("INTERLOCK_USAGE_DATABASE_URL", ""))
    parser.add_argument("--repeat", type=int, default=20, help="timed runs of each rollup query")
    parser.add_argument("--raw-repeat", type=int, default=3, help="timed runs of each raw-event query")
    parser.add_argument("--batch", type=int, default=10_000, help="events per insert call")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep each generated ledger and say where")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.backend == "postgres" and not args.database_url:
        parser.error("--backend postgres needs --database-url")
    results = []
    for count in args.events:
        directory = Path(tempfile.mkdtemp(prefix="usage-bench-")) if args.backend == "sqlite" else None
        ledger = sqlite_ledger(directory) if directory else postgres_ledger(args.database_url, args.keep)
        try:
            results.append(run_size(ledger, args.backend, count, args))
        finally:
            ledger.drop()
            if args.keep:
                print(f"kept the {count:,}-event ledger: {ledger.where}", file=sys.stderr)
            elif directory:
                shutil.rmtree(directory)
        print(report(results[-1:]), file=sys.stderr, flush=True)  # progress, for long runs
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0 if all(q.same_answer for r in results for q in r.queries) else 1


if __name__ == "__main__":
    sys.exit(main())
