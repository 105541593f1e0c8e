"""The read side of the ledger: usage rows, their CSV export and seed 002's model stats.

Every answer is summed from the hourly rollups, never from the raw events, so a
month of stats costs the same at a thousand events or ten million. A caller with
an API key sees only its own project (a key without a project: only itself);
the admin key sees everything.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
from collections.abc import Iterable

from interlock.usage.v1 import usage_pb2 as pb
from services.common import keys
from services.common.clock import Clock
from services.common.errors import InvalidRequestError, PermissionDeniedError
from services.usage.callers import Caller, CallerResolver
from services.usage.store import DIMENSIONS, AggregateQuery, AggregateRow, EventStore

DAY_MS = 86_400_000
# Seed 002: "startDay cannot be more than 31 days in the past".
STATS_MAX_DAYS_BACK = 31
USAGE_DEFAULT_DAYS = 30
USAGE_MAX_DAYS = 366

CSV_COLUMNS = (
    "key_id", "key_masked", "project", "model", "provider", "day", "hour", "requests", "successful_requests",
    "failed_requests", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd", "avg_latency_ms",
    "avg_ttft_ms", "avg_quality_score", "evaluated_requests",
)  # fmt: skip


def parse_day(value: str, param: str) -> dt.date:
    try:
        if len(value) != 10:
            raise ValueError(value)
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidRequestError(
            f"'{param}' must be a date as YYYY-MM-DD.", code="ERR_INVALID_VALUE", param=param
        ) from exc


def day_start_ms(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)


def iso_hour(ms: int) -> str:
    """2026-04-03T14:00:00.000Z: the seed's timestamp form."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def iso_day(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d")


def _mean(total: float, count: int) -> float:
    return round(total / count, 2) if count else 0.0


class Reports:
    def __init__(self, store: EventStore, callers: CallerResolver, clock: Clock) -> None:
        self._store = store
        self._callers = callers
        self._clock = clock

    def _today(self) -> dt.date:
        return dt.datetime.fromtimestamp(self._clock.now(), dt.UTC).date()

    def _scope(self, caller: Caller, project: str, key_id: str) -> tuple[str, str]:
        """The project and key filters a caller may use: its own project only, unless admin."""
        if caller.key is None:
            return project, key_id
        own = caller.key.project
        if project and project != own:
            raise PermissionDeniedError("An API key sees only its own project's usage.", code="usage_forbidden")
        if not own:
            # A key outside any project sees only itself.
            if key_id and key_id != caller.key.id:
                raise PermissionDeniedError("An API key sees only its own usage.", code="usage_forbidden")
            return "", caller.key.id
        return own, key_id

    # --- GET /v1/usage -------------------------------------------------------------

    async def query_usage(self, caller: Caller, request: pb.QueryUsageRequest) -> pb.QueryUsageResponse:
        today = self._today()
        end = parse_day(request.end_day, "end_day") if request.end_day else today
        start = (
            parse_day(request.start_day, "start_day")
            if request.start_day
            else end - dt.timedelta(days=USAGE_DEFAULT_DAYS - 1)
        )
        if end < start:
            raise InvalidRequestError("'end_day' must not be before 'start_day'.", param="end_day")
        if (end - start).days + 1 > USAGE_MAX_DAYS:
            raise InvalidRequestError(f"A usage query spans at most {USAGE_MAX_DAYS} days.", param="start_day")
        group_by = tuple(request.group_by)
        for dimension in group_by:
            if dimension not in DIMENSIONS:
                raise InvalidRequestError(
                    f"'group_by' must be one of {', '.join(DIMENSIONS)}; got {dimension!r}.", param="group_by"
                )
        if len(set(group_by)) != len(group_by):
            raise InvalidRequestError("'group_by' names a dimension twice.", param="group_by")
        project, key_id = self._scope(caller, request.project, request.key_id)
        query = AggregateQuery(
            start_ms=day_start_ms(start),
            end_ms=day_start_ms(end) + DAY_MS,
            group_by=group_by,
            key_id=key_id,
            project=project,
            model=request.model,
            provider=request.provider,
        )
        rows = await asyncio.to_thread(self._store.aggregate, query)
        masked = self._callers.masked_by_id()
        return pb.QueryUsageResponse(
            start_day=start.isoformat(), end_day=end.isoformat(), rows=[_usage_row(r, masked) for r in rows]
        )

    @staticmethod
    def to_csv(response: pb.QueryUsageResponse) -> bytes:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(CSV_COLUMNS)
        for row in response.rows:
            writer.writerow([_csv_cell(getattr(row, column)) for column in CSV_COLUMNS])
        return out.getvalue().encode()

    # --- POST /sdk/models/stats ------------------------------------------------------

    async def model_stats(self, caller: Caller, request: pb.GetModelStatsRequest) -> pb.GetModelStatsResponse:
        if not request.start_day:
            raise InvalidRequestError("'startDay' is required.", code="ERR_MISSING_FIELD", param="startDay")
        if not request.end_day:
            raise InvalidRequestError("'endDay' is required.", code="ERR_MISSING_FIELD", param="endDay")
        if not request.model_id:
            raise InvalidRequestError("'modelId' is required.", code="ERR_MISSING_FIELD", param="modelId")
        start = parse_day(request.start_day, "startDay")
        end = parse_day(request.end_day, "endDay")
        if (self._today() - start).days > STATS_MAX_DAYS_BACK:
            raise InvalidRequestError(
                f"'startDay' cannot be more than {STATS_MAX_DAYS_BACK} days in the past.",
                code="ERR_INVALID_VALUE",
                param="startDay",
            )
        if end < start:
            raise InvalidRequestError(
                "'endDay' must not be before 'startDay'.", code="ERR_INVALID_VALUE", param="endDay"
            )
        project, key_id = self._scope(caller, "", "")
        if request.api_key:
            wanted = self._key_filter(request.api_key)
            if wanted is None or (key_id and wanted != key_id):
                return pb.GetModelStatsResponse()  # nothing this caller may see matches: []
            key_id = wanted
        query = AggregateQuery(
            start_ms=day_start_ms(start),
            end_ms=day_start_ms(end) + DAY_MS,
            group_by=("key", "hour"),
            key_id=key_id,
            project=project,
            model=request.model_id,
        )
        rows = await asyncio.to_thread(self._store.aggregate, query)
        if not any(row.requests for row in rows):
            return pb.GetModelStatsResponse()
        own_id = caller.key.id if caller.key is not None else ""
        stats = pb.ModelStats(
            model_id=request.model_id,
            time_range=pb.TimeRange(start=start.isoformat(), end=end.isoformat()),
            aggregate_metrics=_metrics(rows),
            metrics_by_api_key=self._by_key(rows, own_id),
        )
        return pb.GetModelStatsResponse(results=[stats])

    def _key_filter(self, api_key: str) -> str | None:
        """The key id an apiKey filter names: a key id as listed, or the key itself."""
        if self._callers.key_by_id(api_key) is not None:
            return api_key
        record = self._callers.key_for_secret(api_key)
        return record.id if record is not None else None

    def _by_key(self, rows: list[AggregateRow], own_id: str) -> list[pb.ApiKeyMetrics]:
        by_key: dict[str, list[AggregateRow]] = {}
        for row in rows:
            key_id = str(row.dims["key"])
            if key_id and row.requests:  # anonymous traffic counts in the totals only
                by_key.setdefault(key_id, []).append(row)
        masked = self._callers.masked_by_id()
        entries = []
        for key_id, key_rows in by_key.items():
            key_rows.sort(key=lambda r: int(r.dims["hour"]))
            entries.append(
                pb.ApiKeyMetrics(
                    api_key=masked.get(key_id) or keys.mask(key_id),
                    owned=key_id == own_id,
                    aggregate_metrics=_metrics(key_rows),
                    time_series=[_point(r) for r in key_rows],
                )
            )
        # Busiest first, then by masked key for a stable order.
        entries.sort(key=lambda e: (-e.aggregate_metrics.total_requests, e.api_key))
        return entries


def _totals(rows: Iterable[AggregateRow]) -> tuple[int, int, int, int, int]:
    requests = successful = failed = latency = tokens = 0
    for row in rows:
        requests += row.requests
        successful += row.successful
        failed += row.failed
        latency += row.latency_ms_sum
        tokens += row.prompt_tokens + row.completion_tokens
    return requests, successful, failed, latency, tokens


def _metrics(rows: Iterable[AggregateRow]) -> pb.AggregateMetrics:
    rows = list(rows)
    requests, successful, failed, latency, tokens = _totals(rows)
    metrics = pb.AggregateMetrics(
        total_requests=requests,
        successful_requests=successful,
        failed_requests=failed,
        avg_latency_ms=_mean(latency, requests),
        avg_tokens_per_request=_mean(tokens, requests),
    )
    scores = sum(r.score_count for r in rows)
    if scores:
        metrics.avg_quality_score = _score_mean(sum(r.score_sum for r in rows), scores)
        # Summing per group counts each request once: all its scores carry its own key and hour.
        metrics.evaluated_requests = sum(r.scored_requests for r in rows)
    return metrics


def _score_mean(total: float, count: int) -> float:
    return round(total / count, 4) if count else 0.0


def _point(row: AggregateRow) -> pb.TimeSeriesPoint:
    return pb.TimeSeriesPoint(
        timestamp=iso_hour(int(row.dims["hour"])),
        requests=row.requests,
        successful_requests=row.successful,
        avg_latency_ms=_mean(row.latency_ms_sum, row.requests),
        avg_tokens_per_request=_mean(row.prompt_tokens + row.completion_tokens, row.requests),
    )


def _usage_row(row: AggregateRow, masked: dict[str, str]) -> pb.UsageRow:
    dims = row.dims
    key_id = str(dims.get("key", ""))
    return pb.UsageRow(
        key_id=key_id,
        key_masked=(masked.get(key_id) or keys.mask(key_id)) if key_id else "",
        project=str(dims.get("project", "")),
        model=str(dims.get("model", "")),
        provider=str(dims.get("provider", "")),
        day=iso_day(int(dims["day"])) if "day" in dims else "",
        hour=iso_hour(int(dims["hour"])) if "hour" in dims else "",
        requests=row.requests,
        successful_requests=row.successful,
        failed_requests=row.failed,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        cached_tokens=row.cached_tokens,
        cost_usd=round(row.cost_usd, 10),
        avg_latency_ms=_mean(row.latency_ms_sum, row.requests),
        avg_ttft_ms=_mean(row.ttft_ms_sum, row.ttft_count),
        avg_quality_score=_score_mean(row.score_sum, row.score_count),
        evaluated_requests=row.scored_requests,
    )


def _csv_cell(value: object) -> str:
    text = str(value)
    # A cell a spreadsheet would run as a formula is quoted as text (CSV injection).
    return "'" + text if text[:1] in ("=", "+", "-", "@") and not _is_number(text) else text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
