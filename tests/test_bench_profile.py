"""Smoke test of the profile harness (bench/profile_gateway.py): it starts the stack in each mode,
loads it, attaches py-spy to every Interlock process (named as in stack.json) and attributes the
samples. A test of the harness, never of speed."""

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


def process_rows(section: str) -> list[list[str]]:
    """The cells of each body row of a mode's process table (the block that starts `| process`)."""
    block = next(b for b in section.split("\n\n") if b.startswith("| process"))
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in block.splitlines()[2:]]


def test_profile_runs_against_the_real_stack_in_both_modes(tmp_path: Path) -> None:
    out = tmp_path / "profiles"
    argv = [sys.executable, "-m", "bench.profile_gateway", "--modes", "colocated,microservices", "--workers", "2"]
    argv += ["--seconds", "3", "--connections", "8", "--out", str(out)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    text = done.stdout
    colocated, microservices = text.split("# Interlock (microservices)")
    assert colocated.startswith("# Interlock (colocated)")
    # Named as in stack.json: two co-located edge workers with the router inside, or the router apart.
    expected = {
        "colocated": ("edge", "edge-1", "ratelimit", "usage"),
        "microservices": ("edge", "router", "ratelimit", "usage"),
    }
    for (mode, names), section in zip(expected.items(), (colocated, microservices), strict=True):
        assert "| process" in section and "CPU ms / request" in section and "PSS MB" in section
        # Every process's memory, the supervisor's too, and a total that is their sum.
        pss = {row[0]: float(row[3]) for row in process_rows(section)}
        assert pss["interlock up"] > 5 and all(value > 5 for value in pss.values()), pss
        assert abs(pss["all"] - sum(v for k, v in pss.items() if k != "all")) < 0.5, pss
        for name in names:
            assert (out / mode / f"{name}.raw").exists(), section
            assert f"## {name}:" in section

    # The processes that serve chat were sampled while doing the work: the router and the edge,
    # or the two edge workers together (the kernel may hand one of them most connections).
    def samples(mode: str, name: str) -> int:
        return sum(parse_raw(out / mode / f"{name}.raw")[0].values())

    assert samples("microservices", "edge") > 20
    assert samples("microservices", "router") > 20
    assert samples("colocated", "edge") + samples("colocated", "edge-1") > 40
    assert not (out / "microservices" / "edge-1.raw").exists()
    assert not (out / "colocated" / "router.raw").exists()
