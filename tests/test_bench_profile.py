"""Smoke test of the profile harness (bench/profile_gateway.py): it starts the stack, loads it,
attaches py-spy to every Interlock process and attributes the samples. A test of the harness,
never of speed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import markdown_table
from bench.profile_gateway import layer_of, parse_raw

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]


def test_raw_stacks_are_attributed_to_leaves_and_layers(tmp_path: Path) -> None:
    raw = tmp_path / "p.raw"
    raw.write_text(
        "run (/x/asyncio/runners.py);check (/r/services/ratelimit/limiter.py);"
        "acquire (/r/services/ratelimit/backends/memory.py) 7\n"
        "run (/x/asyncio/runners.py);send (/s/site-packages/httpx/_client.py);send (/s/site-packages/anyio/_x.py) 3\n"
        "run (/x/asyncio/runners.py) 5\n"
    )  # fmt: skip
    leaves, inclusive = parse_raw(raw)
    assert leaves["acquire (/r/services/ratelimit/backends/memory.py)"] == 7
    assert sum(leaves.values()) == 15
    assert inclusive["HTTP client (httpx/anyio)"] == 3
    assert inclusive["Interlock: ratelimit"] == 7
    assert inclusive[layer_of("run (/x/asyncio/runners.py)")] == 15
    assert layer_of("f (/usr/lib/python3.11/json/decoder.py)") == "JSON"
    assert layer_of("f (/somewhere/else.py)").startswith("other")


def test_a_table_without_rows_is_just_its_header() -> None:
    # An idle process can have no samples at all; its table must still print.
    assert markdown_table(["layer", "self %"], []).splitlines() == ["| layer | self % |", "|-------|--------|"]
    assert markdown_table(["n"], [[12345]]).splitlines()[2] == "| 12,345 |"


def test_profile_runs_against_the_real_stack(tmp_path: Path) -> None:
    out = tmp_path / "profiles"
    done = subprocess.run(
        [sys.executable, "-m", "bench.profile_gateway", "--seconds", "3", "--connections", "8", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = done.stdout
    assert "| process" in text and "CPU ms / request" in text
    for name in ("gateway", "router", "ratelimit", "usage"):
        raw = out / f"{name}.raw"
        assert raw.exists(), text
        assert f"## {name}:" in text
    # The two busiest processes were sampled while doing the work.
    for name in ("gateway", "router"):
        leaves, _ = parse_raw(out / f"{name}.raw")
        assert sum(leaves.values()) > 20, name
