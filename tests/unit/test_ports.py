"""The port picker stays out of the kernel's ephemeral range and never repeats itself."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from services.common import ports


def test_ports_come_from_below_the_ephemeral_range_and_are_bindable() -> None:
    low = ports.ephemeral_low()
    picked = [ports.free_port() for _ in range(50)]
    assert len(set(picked)) == len(picked)
    for port in picked:
        assert 10_000 <= port < low
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_held_by_someone_else_is_never_picked(monkeypatch: pytest.MonkeyPatch) -> None:
    draws: list[int] = []
    real_draw = ports._random.randrange
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]

        def draw(low: int, high: int) -> int:
            # The held port twice first, then honest draws.
            draws.append(taken if len(draws) < 2 else real_draw(low, high))
            return draws[-1]

        monkeypatch.setattr(ports, "ephemeral_low", lambda: 65_535)
        monkeypatch.setattr(ports._random, "randrange", draw)
        port = ports.free_port()
    assert draws[:2] == [taken, taken] and len(draws) >= 3
    assert port != taken


def test_the_ephemeral_range_is_read_from_the_kernel(tmp_path: Path) -> None:
    range_file = tmp_path / "range"
    range_file.write_text("40000\t60999\n")
    assert ports.ephemeral_low(range_file) == 40_000
    range_file.write_text("garbage")
    assert ports.ephemeral_low(range_file) == 32_768
    assert ports.ephemeral_low(tmp_path / "missing") == 32_768


def test_no_room_below_the_range_falls_back_to_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "ephemeral_low", lambda: 10_500)
    # The kernel's own pick: from its ephemeral range, which starts at or above 1024.
    assert 1024 <= ports.free_port() <= 65_535
