"""Gateway overhead: the same load sent straight to a mock upstream, through Interlock in
both modes, through LiteLLM proxy and through two reference floors, interleaved, so that
machine drift hits every target alike.

    python -m bench.gateway [--quick] [--reps 3] [--seconds 10] [--skip-litellm]
        [--targets direct,colocated,microservices,floor-hop,floor-nohop,litellm] [--json out.json]

Every target is started once: the mock upstream `bench.mock_upstream` (`direct`);
`interlock up --mode colocated` and `--mode microservices` with a catalog whose one
provider is the mock, API key auth, rate limits checked but never reached, the usage
ledger on; the floors of bench/floors/ (`floor-hop`: uvicorn + raw ASGI, one grpc.aio
hop, raw upstream client; `floor-nohop`: the same without the hop; non-stream only);
`litellm --config` in `.venv-litellm`, installed by `bench/litellm/setup.sh` when
missing. Then, for each repetition and each scenario, every target takes the load in
turn (`bench.loadgen` in a process of its own). Reported per target: throughput, latency
percentiles, time to first token, errors by status, CPU of all the target's processes
(100% = one core), their peak RSS summed (VmHWM, reset before each run) and PSS, and the
mock's CPU, to show it had headroom. Then the overhead of each gateway (its figure minus
direct's, per repetition, and the median), a summary with every target side by side, and
issue 16's goals for each mode, pass or fail.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.gateway_targets import (
    FLOORS,
    INTERLOCK_MODES,
    REPO,
    Target,
    install_litellm,
    interlock_has_modes,
    reset_peak_rss,
    start_floor,
    start_interlock,
    start_litellm,
    start_mock,
    tree_cpu_seconds,
    tree_peak_rss_mib,
    tree_pss_mib,
)
from bench.harness import markdown_table


@dataclass(frozen=True)
class Scenario:
    name: str
    stream: bool
    connections: int
    rate: float = 0.0


SCENARIOS = [
    Scenario("chat-1c", False, 1),
    Scenario("chat-64c", False, 64),
    Scenario("stream-8c", True, 8),
    Scenario("stream-1c", True, 1),
    # Open loop: 50 requests/s whatever the answers do, latency from each scheduled send time
    # (a rate both gateways sustain, so it shows latency under load, not a queue).
    Scenario("chat-50rps", False, 64, rate=50.0),
]
# Issue 16's targets for Interlock: (scenario, metric, co-located goal, microservices goal,
# higher is better). Every gateway is checked against both, the floors included, so each
# verdict has the limit of the shape beside it.
GOALS = [
    ("chat-1c", "added p50 ms", 1.0, 2.0, False),
    ("chat-1c", "added p99 ms", 3.0, 5.0, False),
    ("chat-64c", "req/s", 2000.0, 1000.0, True),
    ("chat-64c", "errors", 0.0, 0.0, False),
    ("stream-8c", "added TTFT p50 ms", 1.0, 2.0, False),
    ("all", "PSS MB", 200.0, 300.0, False),
]
# The summary's rows (the "where it stands" table): (scenario, metric).
SUMMARY = [
    ("chat-1c", "added p50 ms"),
    ("chat-1c", "added p99 ms"),
    ("chat-64c", "req/s"),
    ("chat-64c", "CPU ms / request"),
    ("stream-8c", "added TTFT p50 ms"),
    ("all", "PSS MB"),
    ("all", "peak RSS MB"),
]
TARGETS = ["direct", "colocated", "microservices", "floor-hop", "floor-nohop", "litellm"]


def run_once(target: Target, mock: Target, scenario: Scenario, seconds: float, warmup: float) -> dict[str, Any]:
    """One loadgen run of scenario against target, with the target's and the mock's CPU and memory."""
    spec = target.chat_load(
        stream=scenario.stream, connections=scenario.connections, rate=scenario.rate, seconds=seconds, warmup=warmup
    )
    pids = [] if target is mock else target.pids()
    mock_pids = mock.pids()
    reset_peak_rss(pids)
    cpu0, mock0, t0 = tree_cpu_seconds(pids), tree_cpu_seconds(mock_pids), time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", "--spec", json.dumps(asdict(spec))],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    wall = time.monotonic() - t0
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed against {target.name}: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])["result"]
    # CPU over the whole loadgen run (warm-up included), as a share of one core.
    result["cpu_pct"] = 100 * (tree_cpu_seconds(pids) - cpu0) / wall if pids else None
    result["upstream_cpu_pct"] = 100 * (tree_cpu_seconds(mock_pids) - mock0) / wall
    result["rss_mb"] = tree_peak_rss_mib(pids) if pids else None
    result["pss_mb"] = tree_pss_mib(pids) if pids else None
    result["processes"] = len(pids)
    return result


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _errors(runs: list[dict[str, Any]]) -> str:
    total: dict[str, int] = {}
    for run in runs:
        for kind, count in run["errors"].items():
            total[kind] = total.get(kind, 0) + count
    return ", ".join(f"{k}: {v}" for k, v in sorted(total.items())) or "0"


def report(results: dict[str, dict[str, list[dict[str, Any]]]], unavailable: dict[str, str]) -> str:
    """results[scenario][target] = one run per repetition."""
    out: list[str] = []
    for scenario, by_target in results.items():
        rows = []
        for name, runs in by_target.items():
            m = {k: _median([r[k] for r in runs]) for k in runs[0] if k not in ("errors", "error_samples", "mode")}
            rows.append([name, m["rps"], m["p50_ms"], m["p90_ms"], m["p99_ms"], m["max_ms"], m["ttft_p50_ms"],
                         _errors(runs), m["cpu_pct"], m["upstream_cpu_pct"], m["rss_mb"], m["pss_mb"]])  # fmt: skip
        out += [f"### {scenario} (median of {len(next(iter(by_target.values())))} runs)", ""]
        headers = ["target", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "TTFT p50 ms", "errors", "CPU %",
                   "upstream CPU %", "peak RSS MB", "PSS MB"]  # fmt: skip
        out += [markdown_table(headers, rows), ""]
    out += ["### Overhead vs direct (per repetition; median)", ""]
    rows = []
    for scenario, by_target in results.items():
        direct = by_target.get("direct", [])
        for name, runs in by_target.items():
            if name == "direct":
                continue
            key = "ttft_p50_ms" if "stream" in scenario else "p50_ms"
            pairs = [(r, d) for r, d in zip(runs, direct, strict=False) if r["ok"] and d["ok"]]
            p50 = [r[key] - d[key] for r, d in pairs if r[key] is not None and d[key] is not None]
            p99 = [r["p99_ms"] - d["p99_ms"] for r, d in pairs]
            ratio = [r["rps"] / d["rps"] for r, d in pairs if d["rps"]]
            rows.append([scenario, name, "TTFT p50" if "stream" in scenario else "p50", _reps(p50),
                         _median(list(p50)), _reps(p99), _median(list(p99)), _median(list(ratio))])  # fmt: skip
    headers = ["scenario", "target", "of", "added ms per rep", "median", "added p99 ms per rep", "median",
               "req/s ratio"]  # fmt: skip
    out += [markdown_table(headers, rows), ""]
    out += ["### Summary: every figure beside its floors (median; added = minus direct)", ""]
    names = _names(results)
    summary: list[list[object]] = []
    for scenario, metric in SUMMARY:
        label = metric if scenario == "all" else f"{metric} ({scenario})"
        summary.append([label, *(_value(results, scenario, name, metric) for name in names)])
    out += [markdown_table(["", *names], summary), ""]
    out += ["### Targets (issue 16's goals for each mode, checked for every gateway)", ""]
    goals: list[list[object]] = []
    for name in (n for n in names if n != "direct"):
        for scenario, metric, colocated, microservices, higher in GOALS:
            value = _value(results, scenario, name, metric)
            ran = scenario == "all" or bool(results.get(scenario, {}).get(name))
            row: list[object] = [name, scenario, metric, value]
            for limit in (colocated, microservices):
                if value is None:
                    verdict = "FAIL (no answers)" if ran else "not run"
                else:
                    verdict = "PASS" if (value >= limit if higher else value <= limit) else "FAIL"
                row += [(">= " if higher else "<= ") + f"{limit:g}", verdict]
            goals.append(row)
    headers = ["target", "scenario", "metric", "measured", "co-located goal", "verdict", "microservices goal",
               "verdict"]  # fmt: skip
    out += [markdown_table(headers, goals), ""]
    direct_64 = results.get("chat-64c", {}).get("direct", [])
    if direct_64:
        busiest = max(
            (r["upstream_cpu_pct"] for by in results.values() for n, rs in by.items() if n != "direct" for r in rs),
            default=0.0,
        )
        out.append(
            f"Mock upstream headroom: direct at 64 connections {_median([r['rps'] for r in direct_64]):,.0f} req/s "
            f"with the mock at {_median([r['upstream_cpu_pct'] for r in direct_64]):.0f}% of a core (the load "
            f"generator shares the machine); while a gateway was measured the mock used at most {busiest:.0f}%."
        )
    for scenario, by_target in results.items():
        for name, runs in by_target.items():
            for status, sample in sorted({k: v for r in runs for k, v in r["error_samples"].items()}.items()):
                out.append(f"{scenario} {name}: a {status} answer: {sample[:200]!r}")
    for name, why in unavailable.items():
        out.append(f"{name}: unavailable: {why}")
    return "\n".join(out)


def _reps(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values) or "–"


def _names(results: dict[str, dict[str, list[dict[str, Any]]]]) -> list[str]:
    """Every target measured in any scenario, in the order they ran."""
    return list(dict.fromkeys(name for by_target in results.values() for name in by_target))


def _value(results: dict[str, dict[str, list[dict[str, Any]]]], scenario: str, name: str, metric: str) -> float | None:
    """One figure of one target: a median over repetitions, or for "all" the most over every run."""
    if scenario == "all":
        key = {"PSS MB": "pss_mb", "peak RSS MB": "rss_mb"}[metric]
        values = [r[key] for by in results.values() for r in by.get(name, []) if r[key] is not None]
        return max(values) if values else None
    runs, direct = results.get(scenario, {}).get(name, []), results.get(scenario, {}).get("direct", [])
    if not runs:
        return None
    if metric == "req/s":
        return _median([r["rps"] for r in runs])
    if metric == "errors":
        return float(sum(sum(r["errors"].values()) for r in runs))
    if metric == "CPU ms / request":
        # CPU is counted over the whole run, warm-up included, at the same rate as the measured part.
        return _median([10 * r["cpu_pct"] / r["rps"] for r in runs if r["cpu_pct"] is not None and r["rps"]])
    if name == "direct":
        return None
    key = {"added p50 ms": "p50_ms", "added p99 ms": "p99_ms", "added TTFT p50 ms": "ttft_p50_ms"}[metric]
    return _median(
        [r[key] - d[key] for r, d in zip(runs, direct, strict=False) if r["ok"] and d["ok"] and r[key] and d[key]]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3, help="repetitions of the whole interleaved round")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each run")
    parser.add_argument("--quick", action="store_true", help="1 repetition, 3 s runs, 1 s warm-up")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help="comma-separated, from: " + ", ".join(TARGETS) + " (direct always runs)")  # fmt: skip
    parser.add_argument("--skip-litellm", action="store_true", help="leave LiteLLM out of --targets")
    parser.add_argument("--litellm-workers", default="1", help="comma-separated worker counts, e.g. 1,2")
    parser.add_argument("--interlock-workers", type=int, help="co-located edge workers (default: interlock's)")
    parser.add_argument("--scenarios", default=",".join(s.name for s in SCENARIOS), help="which scenarios to run")
    parser.add_argument("--ttft-ms", type=float, default=100.0, help="mock upstream time to first token")
    parser.add_argument("--token-delay-ms", type=float, default=10.0, help="mock upstream delay between tokens")
    parser.add_argument("--tokens", type=int, default=20, help="mock upstream completion tokens")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.seconds, args.warmup = 1, 3.0, 1.0
    wanted = {name.strip() for name in args.targets.split(",") if name.strip()}
    if unknown := wanted - set(TARGETS):
        parser.error(f"unknown targets: {', '.join(sorted(unknown))} (known: {', '.join(TARGETS)})")
    if args.skip_litellm:
        wanted.discard("litellm")
    scenarios = [s for s in SCENARIOS if s.name in args.scenarios.split(",")]
    mock = start_mock(args.ttft_ms, args.token_delay_ms, args.tokens)
    targets: list[Target] = [mock]
    unavailable: dict[str, str] = {}
    try:
        targets += start_targets(mock.base_url + "/v1", wanted, args, unavailable)
        results: dict[str, dict[str, list[dict[str, Any]]]] = {
            s.name: {t.name: [] for t in targets if t.streams or not s.stream} for s in scenarios
        }
        for rep in range(args.reps):
            for scenario in scenarios:
                for target in (t for t in targets if t.name in results[scenario.name]):
                    print(f"rep {rep + 1}/{args.reps} {scenario.name} {target.name}", file=sys.stderr)
                    results[scenario.name][target.name].append(
                        run_once(target, mock, scenario, args.seconds, args.warmup)
                    )
        processes = ", ".join(f"{t.name} {len(t.pids())}" for t in targets)
        print(f"\n## Gateway overhead: {os.cpu_count()} CPUs, {args.reps} reps x {args.seconds:g} s "
              f"(+{args.warmup:g} s warm-up); processes per target: {processes}\n")  # fmt: skip
        print(report(results, unavailable))
        if args.json:
            args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": results,
                                             "unavailable": unavailable}, indent=2))  # fmt: skip
    finally:
        for target in reversed(targets):
            target.stop()


def start_targets(
    upstream_v1: str, wanted: set[str], args: argparse.Namespace, unavailable: dict[str, str]
) -> list[Target]:
    """Every wanted target but direct, in TARGETS order, started once for the whole run. Interlock
    and the floors must start; LiteLLM (and a mode this checkout lacks) is reported unavailable."""
    started: list[Target] = []
    try:
        modes = [m for m in INTERLOCK_MODES if m in wanted]
        if modes and not interlock_has_modes():
            # Before `interlock up --mode`, the stack it starts is the microservices one.
            modes = [m for m in modes if m == "microservices"]
            if "colocated" in wanted:
                unavailable["colocated"] = "`interlock up` has no --mode in this checkout"
            for mode in modes:
                print(f"starting interlock ({mode}, without --mode)", file=sys.stderr)
                started.append(start_interlock(upstream_v1))
                started[-1].name = mode
        else:
            for mode in modes:
                print(f"starting interlock --mode {mode}", file=sys.stderr)
                started.append(start_interlock(upstream_v1, mode, args.interlock_workers))
        for floor in (f for f in FLOORS if f in wanted):
            print(f"starting {floor}", file=sys.stderr)
            started.append(start_floor(upstream_v1, floor))
        if "litellm" not in wanted:
            unavailable["litellm"] = "skipped (--skip-litellm)" if args.skip_litellm else "not in --targets"
            return started
        try:
            print("installing / starting LiteLLM proxy (first time: a few minutes)", file=sys.stderr)
            install_litellm()
            for workers in (int(w) for w in args.litellm_workers.split(",")):
                started.append(start_litellm(upstream_v1, workers))
        except RuntimeError as exc:
            unavailable["litellm"] = str(exc).splitlines()[0][:300]
        return started
    except BaseException:
        for target in reversed(started):
            target.stop()
        raise


if __name__ == "__main__":
    main()
