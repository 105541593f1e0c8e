"""The processes bench.gateway drives: the mock upstream, Interlock in either mode, LiteLLM
proxy and the reference floors (bench/floors/), each started on a free port and stopped on
the way out, plus CPU and memory readings of a process and all its descendants (Linux /proc)."""

from __future__ import annotations

import json
import os
import signal
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
import yaml

from bench.harness import cpu_seconds, peak_rss_kib
from bench.loadgen import LoadSpec
from services.common.ports import free_port

REPO = Path(__file__).resolve().parent.parent
LITELLM_VENV = REPO / ".venv-litellm"
LITELLM_DIR = Path(__file__).resolve().parent / "litellm"
# `interlock up --mode`: co-located (the router inside each edge worker) or microservices.
INTERLOCK_MODES = ("colocated", "microservices")
CHAT_BODY = {"messages": [{"role": "user", "content": "Say hello to the benchmark."}], "max_tokens": 32}


def tree_pids(root: int) -> list[int]:
    """root and every descendant still alive (from /proc/<pid>/task/*/children)."""
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return [p for p in pids if Path(f"/proc/{p}").exists()]


def tree_cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:
            continue
    return total


def reset_peak_rss(pids: list[int]) -> bool:
    """Reset each process's VmHWM to its current RSS (needs root or the same user); False if refused."""
    done = True
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            done = False
    return done


def tree_peak_rss_mib(pids: list[int]) -> float:
    """The processes' peak RSS (VmHWM) summed: an upper bound of their peak together."""
    total = 0
    for pid in pids:
        try:
            total += peak_rss_kib(pid)
        except (OSError, RuntimeError):
            continue
    return total / 1024


def tree_pss_mib(pids: list[int]) -> float:
    """The processes' proportional set size now (shared pages split between sharers), summed."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _http_ok(url: str, headers: dict[str, str] | None = None, body: bytes | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status), reply.read(2000).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read(2000).decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


@dataclass
class Target:
    """A process (tree) serving an OpenAI-compatible API at base_url, with the processes it
    calls that are not its children (companions: the floor's gRPC hop), measured with it."""

    name: str
    base_url: str
    headers: dict[str, str]
    chat_model: str
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    workdir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)
    streams: bool = True  # the floors answer non-stream chat only
    companions: list[Target] = field(default_factory=list)

    def pids(self) -> list[int]:
        own = tree_pids(self.process.pid) if self.process is not None else []
        return own + [pid for companion in self.companions for pid in companion.pids()]

    def chat_load(
        self, *, stream: bool, connections: int, seconds: float, warmup: float, rate: float = 0.0
    ) -> LoadSpec:
        """The benchmark's chat request against this target, as a load run."""
        body = {**CHAT_BODY, "model": self.chat_model, **({"stream": True} if stream else {})}
        return LoadSpec(
            url=self.base_url + "/v1/chat/completions",
            body=json.dumps(body),
            headers=self.headers,
            stream=stream,
            connections=connections,
            rate=rate,
            seconds=seconds,
            warmup=warmup,
        )

    def log_text(self) -> str:
        text = "".join(companion.log_text() for companion in self.companions)
        if self.log is None:
            return text
        self.log.flush()
        self.log.seek(0)
        return text + self.log.read().decode(errors="replace")[-4000:]

    def wait_ready(self, health_path: str, timeout: float) -> None:
        """Poll health_path, then send one chat request, which must answer 200."""
        deadline = time.monotonic() + timeout
        while _http_ok(self.base_url + health_path)[0] != 200:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready within {timeout:.0f}s:\n{self.log_text()}")
            time.sleep(0.2)
        body = json.dumps({**CHAT_BODY, "model": self.chat_model}).encode()
        headers = {**self.headers, "Content-Type": "application/json"}
        status, text = _http_ok(self.base_url + "/v1/chat/completions", headers, body)
        if status != 200:
            raise RuntimeError(f"{self.name}: a first chat request got {status}: {text}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log is not None:
            self.log.close()
        if self.workdir is not None:
            self.workdir.cleanup()
        # After this target: the edge stops before the hop it calls.
        for companion in self.companions:
            companion.stop()


def _spawn(args: list[str], env: dict[str, str], name: str) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    log = tempfile.TemporaryFile(prefix=f"bench-{name}-")  # noqa: SIM115 - closed by Target.stop
    # Own session, so that stopping the target never signals the benchmark.
    process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return process, log


def start_mock(ttft_ms: float, token_delay_ms: float, tokens: int) -> Target:
    port = free_port()
    args = [sys.executable, "-m", "bench.mock_upstream", "--port", str(port), "--ttft-ms", str(ttft_ms)]
    args += ["--token-delay-ms", str(token_delay_ms), "--tokens", str(tokens)]
    process, log = _spawn(args, {**os.environ, "PYTHONPATH": str(REPO)}, "mock")
    target = Target(
        "direct", f"http://127.0.0.1:{port}", {"Authorization": "Bearer bench"}, "bench-model", process, log
    )
    target.wait_ready("/healthz", 15)
    return target


def interlock_catalog(upstream_v1: str) -> dict[str, object]:
    """A catalog whose one provider is the mock, with prices (the ledger costs every request) and a
    default plan whose limits are checked on every request but never reached."""
    deployment = [{"provider": "mock", "model": "bench-model"}]
    return {
        "providers": {
            "mock": {"kind": "openai", "base_url": upstream_v1, "api_key_env": "BENCH_UPSTREAM_KEY",
                     "timeout_seconds": 30},
        },
        "models": [
            {"id": "bench-chat", "type": "chat", "capabilities": ["chat", "streaming"], "context_window": 128000,
             "max_output_tokens": 4096, "pricing": {"input": 1.0, "output": 2.0}, "deployments": deployment},
            {"id": "bench-embed", "type": "embedding", "dims": 8, "pricing": {"input": 0.02},
             "deployments": deployment},
        ],
        "plans": [{"id": "bench", "requests_per_minute": 100_000_000, "tokens_per_minute": 100_000_000_000,
                   "burst": 100_000_000}],
        "default_plan": "bench",
    }  # fmt: skip


def interlock_has_modes() -> bool:
    """Whether `interlock up` takes --mode (older checkouts run microservices only, without it)."""
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "up", "--help"],
        capture_output=True, text=True, check=False, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    return "--mode" in done.stdout


def start_interlock(upstream_v1: str, mode: str | None = None, workers: int | None = None) -> Target:
    """`interlock up [--mode M] [--workers N]` with the bench catalog, embedded defaults; the
    target is named after its mode (`interlock` without one). --workers applies to co-located."""
    workdir = tempfile.TemporaryDirectory(prefix="bench-interlock-")
    config = Path(workdir.name) / "catalog.yaml"
    config.write_text(yaml.safe_dump(interlock_catalog(upstream_v1)))
    port, key = free_port(), "il-bench-" + os.urandom(16).hex()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERLOCK_")}
    env |= {"INTERLOCK_API_KEY": key, "INTERLOCK_LOG_LEVEL": "warning", "BENCH_UPSTREAM_KEY": "bench-upstream-key"}
    args = [sys.executable, "-m", "services.cli.main", "up", "--port", str(port)]
    args += ["--data-dir", str(Path(workdir.name) / "data"), "--config", str(config)]
    if mode is not None:
        args += ["--mode", mode]
    if mode == "colocated" and workers is not None:
        args += ["--workers", str(workers)]
    name = mode or "interlock"
    process, log = _spawn(args, env | {"PYTHONPATH": str(REPO)}, name)
    target = Target(name, f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}, "bench-chat")
    target.process, target.log, target.workdir = process, log, workdir
    try:
        # The edge may answer before `interlock up` has every worker healthy: the stack is up
        # when it has written stack.json, which also names every process.
        _wait_for_file(target, interlock_stack_file(target), 60)
        target.wait_ready("/healthz", 60)
    except RuntimeError:
        target.stop()
        raise
    return target


def interlock_stack_file(target: Target) -> Path:
    """`<data-dir>/stack.json` of an Interlock target: addresses, mode and each process's pid by name."""
    assert target.workdir is not None
    return Path(target.workdir.name) / "data" / "stack.json"


def _wait_for_file(target: Target, path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if target.process is not None and target.process.poll() is not None:
            raise RuntimeError(f"{target.name} exited with {target.process.returncode}:\n{target.log_text()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{target.name}: no {path.name} within {timeout:.0f}s:\n{target.log_text()}")
        time.sleep(0.2)


def install_litellm() -> None:
    """Run bench/litellm/setup.sh (a no-op once installed); raises with its output on failure."""
    done = subprocess.run(
        ["bash", str(LITELLM_DIR / "setup.sh"), str(LITELLM_VENV)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench/litellm/setup.sh failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]}")


def start_litellm(upstream_v1: str, workers: int) -> Target:
    """`litellm --config` on the mock: no database, no telemetry, `workers` uvicorn workers."""
    workdir = tempfile.TemporaryDirectory(prefix="bench-litellm-")
    key = "sk-bench-" + os.urandom(8).hex()
    template = string.Template((LITELLM_DIR / "config.template.yaml").read_text())
    config = Path(workdir.name) / "config.yaml"
    config.write_text(template.substitute(UPSTREAM=upstream_v1, MASTER_KEY=key))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PYTHONPATH")}
    env |= {"LITELLM_TELEMETRY": "False", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    args = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    if workers > 1:
        args += ["--num_workers", str(workers)]
    process, log = _spawn(args, env, "litellm")
    name = "litellm" if workers == 1 else f"litellm-{workers}w"
    target = Target(name, f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}, "bench-chat")
    target.process, target.log, target.workdir = process, log, workdir
    try:
        target.wait_ready("/health/liveliness", 120)
    except RuntimeError:
        target.stop()
        raise
    return target


FLOORS = ("floor-hop", "floor-nohop")


def start_floor(upstream_v1: str, name: str) -> Target:
    """A reference floor on the mock (bench/floors/): `floor-hop` is the edge and its gRPC hop,
    two processes; `floor-nohop` the edge alone, calling the mock itself."""
    if name not in FLOORS:
        raise ValueError(f"no floor {name!r}; floors are {', '.join(FLOORS)}")
    chat_url = upstream_v1 + "/chat/completions"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    companions: list[Target] = []
    where = ["--upstream", chat_url]
    if name == "floor-hop":
        hop_address = f"127.0.0.1:{free_port()}"
        hop_args = [sys.executable, "-m", "bench.floors.hop", "--port", hop_address.rsplit(":", 1)[1]]
        process, log = _spawn([*hop_args, "--upstream", chat_url], env, "floor-hop-grpc")
        hop = Target("floor-hop (gRPC side)", f"grpc://{hop_address}", {}, "", process, log)
        companions, where = [hop], ["--hop", hop_address]
        try:
            _wait_grpc(hop, hop_address, 30)
        except RuntimeError:
            hop.stop()
            raise
    port = free_port()
    process, log = _spawn([sys.executable, "-m", "bench.floors.edge", "--port", str(port), *where], env, name)
    target = Target(name, f"http://127.0.0.1:{port}", {"Authorization": "Bearer bench"}, "bench-model", process, log,
                    streams=False, companions=companions)  # fmt: skip
    try:
        target.wait_ready("/healthz", 30)
    except RuntimeError:
        target.stop()
        raise
    return target


def _wait_grpc(target: Target, address: str, timeout: float) -> None:
    """Until a channel to address connects (the hop has no health service: it is a floor)."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        ready = grpc.channel_ready_future(channel)
        while True:
            try:
                ready.result(timeout=0.5)
                return
            except grpc.FutureTimeoutError:
                if target.process is not None and target.process.poll() is not None:
                    raise RuntimeError(f"{target.name} exited:\n{target.log_text()}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{target.name} not listening within {timeout:.0f}s") from None
