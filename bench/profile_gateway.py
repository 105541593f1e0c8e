"""Where Interlock's CPU goes under load: py-spy on every process while chat-64c runs.

    python -m bench.profile_gateway [--modes colocated,microservices] [--workers N]
        [--seconds 15] [--connections 64] [--stream] [--out DIR]

For each mode in turn (both by default), starts `interlock up --mode M` on the mock
upstream as bench.gateway does, drives chat at --connections from bench.loadgen, and
meanwhile records each Interlock process with py-spy (raw collapsed stacks, GIL-holding
samples only, so the figures are CPU, not waiting). Prints, per process (named as in
`stack.json`: `edge`, `edge-1`, ... for co-located workers), its CPU per request (from
/proc) and where its samples fall: by layer (gRPC, in-process transport, protobuf, HTTP
server, HTTP client, event loop, our code, ...) and the functions with the most self
time. The raw files stay in --out/<mode>/ for flame graphs (`py-spy` raw format is what
inferno/flamegraph.pl read).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.gateway_targets import (
    INTERLOCK_MODES,
    REPO,
    Target,
    interlock_has_modes,
    interlock_stack_file,
    start_interlock,
    start_mock,
    tree_cpu_seconds,
    tree_pids,
)
from bench.harness import markdown_table

# First match wins: a frame's file path fragment → the layer it belongs to.
LAYERS: list[tuple[str, str]] = [
    ("grpc/", "gRPC (grpc.aio)"),
    ("grpc_", "gRPC (grpc.aio)"),
    ("google/protobuf", "protobuf"),
    ("_pb2", "protobuf"),
    ("uvicorn/", "HTTP server (uvicorn/httptools)"),
    ("httptools", "HTTP server (uvicorn/httptools)"),
    ("starlette/", "Starlette"),
    ("httpx/", "HTTP client (httpx/anyio)"),
    ("httpcore/", "HTTP client (httpx/anyio)"),
    ("h11/", "HTTP client (httpx/anyio)"),
    ("anyio/", "HTTP client (httpx/anyio)"),
    ("sniffio/", "HTTP client (httpx/anyio)"),
    ("orjson", "JSON"),
    ("json/", "JSON"),
    ("tiktoken", "tokenizer"),
    ("prometheus_client/", "metrics (prometheus_client)"),
    # Without native frames, C run from the loop (uvloop's I/O, gRPC core's completion
    # queue, protobuf's upb parsing of what gRPC deserializes) shows as the loop's Runner.run.
    ("asyncio/runners.py", "event loop + C run from it (uvloop, gRPC core, upb)"),
    ("asyncio/", "asyncio (tasks, futures)"),
    ("uvloop", "event loop + C run from it (uvloop, gRPC core, upb)"),
    ("sqlite3", "SQLite"),
    ("logging/", "logging"),
    ("/services/common/inprocess", "Interlock: in-process transport"),
    ("/gateway/colocated", "Interlock: co-located router glue"),
    ("/gateway/", "Interlock: edge"),
    ("/services/router/providers/", "Interlock: provider clients"),
    ("/services/router/", "Interlock: router"),
    ("/services/ratelimit/", "Interlock: ratelimit"),
    ("/services/usage/", "Interlock: usage"),
    ("/services/common/", "Interlock: common"),
]


def layer_of(frame: str) -> str:
    for fragment, layer in LAYERS:
        if fragment in frame:
            return layer
    return "other (stdlib, interpreter)"


def parse_raw(path: Path) -> tuple[Counter[str], Counter[str]]:
    """py-spy raw output (`frame;frame;...;leaf count` per line) → self samples per leaf
    function, and inclusive samples per layer (a sample counts once for every layer on its stack)."""
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            frames = stack.split(";")
            leaves[frames[-1]] += int(count)
            for layer in {layer_of(frame) for frame in frames}:
                inclusive[layer] += int(count)
    return leaves, inclusive


def process_names(target: Target) -> dict[int, str]:
    """pid → Interlock process name: from `interlock up`'s stack.json (`edge`, `edge-1`,
    `router`, ...), else from each command line's `-m module`, numbered when repeated."""
    assert target.process is not None
    stack = interlock_stack_file(target)
    if stack.exists():
        pids = json.loads(stack.read_text()).get("pids", {})
        if pids:
            return {int(pid): name for name, pid in pids.items()}
    names: dict[int, str] = {}
    for pid in tree_pids(target.process.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-m" in argv:
            module = argv[argv.index(b"-m") + 1].decode().removeprefix("services.")
            if module != "cli.main":
                taken = sum(1 for name in names.values() if name.split("-")[0] == module)
                names[pid] = f"{module}-{taken}" if taken else module
    return names


@dataclass(frozen=True)
class Profile:
    """One mode's profiled run: its processes, their CPU seconds, the load's result."""

    mode: str
    names: dict[int, str]
    cpu: dict[int, float]
    result: dict[str, Any]
    out: Path
    # pid → (PSS, anonymous PSS) in MiB at the end of the run, `interlock up` itself included.
    memory: dict[int, tuple[float, float]]


def profile(target: Target, mode: str, args: argparse.Namespace, out: Path) -> Profile:
    """py-spy on every process of target during one load run."""
    names = process_names(target)
    spec = target.chat_load(stream=args.stream, connections=args.connections, seconds=args.seconds, warmup=2.0)
    load = subprocess.Popen(
        [sys.executable, "-m", "bench.loadgen", "--spec", json.dumps(asdict(spec))],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    time.sleep(2.0)  # the warm-up: profile the measured window only
    cpu0 = {pid: tree_cpu_seconds([pid]) for pid in names}
    spies = [
        subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-d", str(int(args.seconds)),
             "-r", str(args.rate), "-f", "raw", "--gil", "--nolineno", "--full-filenames",
             "-o", str(out / f"{name}.raw")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid, name in names.items()
    ]  # fmt: skip
    for spy in spies:
        spy.wait()
    cpu = {pid: tree_cpu_seconds([pid]) - cpu0[pid] for pid in names}
    stdout, _ = load.communicate()
    assert target.process is not None
    memory = {pid: pss_mib(pid) for pid in [target.process.pid, *names]}
    return Profile(mode, names, cpu, json.loads(stdout.strip().splitlines()[-1])["result"], out, memory)


def pss_mib(pid: int) -> tuple[float, float]:
    """A process's proportional set size and the anonymous part of it (heaps: not shared
    code), in MiB; zeros for a process that is gone."""
    fields: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("Pss", "Pss_Anon"):
                fields[name] = int(rest.split()[0])
    except OSError:
        return 0.0, 0.0
    return fields.get("Pss", 0) / 1024, fields.get("Pss_Anon", 0) / 1024


def print_profile(run: Profile, args: argparse.Namespace) -> None:
    names, cpu, result, out = run.names, run.cpu, run.result, run.out
    requests = max(result["rps"] * args.seconds, 1.0)
    print(f"# Interlock ({run.mode}) under {'stream' if args.stream else 'chat'} at {args.connections} connections")
    print(f"{result['rps']:.0f} req/s, p50 {result['p50_ms']:.1f} ms; raw profiles in {out}\n")
    by_cpu = sorted(names.items(), key=lambda item: -cpu[item[0]])
    memory = run.memory

    def mib(pid: int) -> list[str]:
        pss, anon = memory.get(pid, (0.0, 0.0))
        return [f"{pss:.1f}", f"{anon:.1f}"]

    rows = [
        [name, f"{1000 * cpu[pid] / requests:.2f}", f"{100 * cpu[pid] / args.seconds:.0f}", *mib(pid)]
        for pid, name in by_cpu
    ]
    supervisors = [pid for pid in memory if pid not in names]
    rows += [["interlock up", "–", "–", *mib(pid)] for pid in supervisors]
    total_pss = sum(pss for pss, _ in memory.values())
    total_anon = sum(anon for _, anon in memory.values())
    all_cpu = sum(cpu.values())
    rows.append(["all", f"{1000 * all_cpu / requests:.2f}", f"{100 * all_cpu / args.seconds:.0f}",
                 f"{total_pss:.1f}", f"{total_anon:.1f}"])  # fmt: skip
    headers = ["process", "CPU ms / request", "CPU % (1 core = 100)", "PSS MB", "of it anonymous MB"]
    print(markdown_table(headers, rows))
    for _pid, name in by_cpu:
        raw = out / f"{name}.raw"
        if not raw.exists():
            print(f"\n{name}: no profile (py-spy could not attach)")
            continue
        leaves, inclusive = parse_raw(raw)
        total = sum(leaves.values()) or 1
        layers: Counter[str] = Counter()
        for leaf, count in leaves.items():
            layers[layer_of(leaf)] += count
        print(f"\n## {name}: {sum(leaves.values())} samples while holding the GIL\n")
        if not leaves:
            # An idle process (the catalog, in a short run) may never hold the GIL when sampled.
            continue
        table = [[k, f"{100 * v / total:.1f}", f"{100 * inclusive[k] / total:.1f}"] for k, v in layers.most_common()]
        print(markdown_table(["layer", "self %", "on the stack %"], table))
        print()
        top = [[_short(leaf), f"{100 * count / total:.1f}"] for leaf, count in leaves.most_common(args.top)]
        print(markdown_table(["function (self time)", "share %"], top))
    print()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default=",".join(INTERLOCK_MODES), help="comma-separated, profiled in turn")
    parser.add_argument("--workers", type=int, help="co-located edge workers (default: interlock's)")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=None, help="keep the raw profiles here, one folder per mode")
    parser.add_argument("--top", type=int, default=8, help="functions listed per process")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := set(modes) - set(INTERLOCK_MODES):
        parser.error(f"unknown modes: {', '.join(sorted(unknown))} (known: {', '.join(INTERLOCK_MODES)})")
    with_modes = interlock_has_modes()
    if not with_modes and modes != ["microservices"]:
        parser.error("`interlock up` has no --mode in this checkout: only --modes microservices runs")
    root = args.out or Path(tempfile.mkdtemp(prefix="interlock-profile-"))
    mock = start_mock(100.0, 10.0, 20)
    try:
        for mode in modes:
            out = root / mode
            out.mkdir(parents=True, exist_ok=True)
            interlock = start_interlock(mock.base_url + "/v1", mode if with_modes else None, args.workers)
            try:
                run = profile(interlock, mode, args, out)
            finally:
                interlock.stop()
            print_profile(run, args)
    finally:
        mock.stop()


def _short(frame: str) -> str:
    """`fn (/long/path/site-packages/pkg/mod.py)` → `fn (pkg/mod.py)`."""
    name, _, path = frame.partition(" (")
    for marker in ("site-packages/", str(REPO) + "/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path}" if path else name


if __name__ == "__main__":
    main()
