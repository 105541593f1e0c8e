"""The local spool: ordered, acknowledged, durable across a crash, owned by one process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.clock import ManualClock
from services.common.errors import ConfigError
from services.common.spool import Spool, SpoolLockedError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "router-1.db"  # the directory does not exist yet


@pytest.fixture
def spool(path: Path) -> Iterator[Spool]:
    opened = Spool.open(path)
    yield opened
    opened.close()


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True, timeout=30
    )


def _payloads(spool: Spool, limit: int = 1000) -> list[bytes]:
    return [entry.payload for entry in spool.peek(limit)]


def test_records_come_back_oldest_first_across_appends(spool: Spool) -> None:
    spool.append([b"a", b"b"])
    spool.append([b"c"])
    spool.append([])
    assert spool.count == 3
    assert _payloads(spool) == [b"a", b"b", b"c"]
    assert _payloads(spool, 2) == [b"a", b"b"]
    assert spool.count == 3  # peeking takes nothing away


def test_ack_deletes_only_the_acknowledged_records(spool: Spool) -> None:
    spool.append([b"a", b"b", b"c", b"d"])
    first = spool.peek(2)
    spool.ack([entry.seq for entry in first])
    assert spool.count == 2
    assert _payloads(spool) == [b"c", b"d"]
    spool.ack([entry.seq for entry in first])  # acknowledging twice changes nothing
    assert spool.count == 2
    spool.append([b"e"])
    assert _payloads(spool) == [b"c", b"d", b"e"]


def test_sequence_numbers_keep_growing_after_the_spool_empties(spool: Spool) -> None:
    spool.append([b"a", b"b"])
    old = spool.peek(10)
    spool.ack([e.seq for e in old])
    assert spool.count == 0 and spool.peek(10) == []
    spool.append([b"c"])
    assert spool.peek(1)[0].seq > max(e.seq for e in old)


def test_contents_survive_close_and_reopen(path: Path) -> None:
    first = Spool.open(path)
    first.append([b"a", b"b", b"c"])
    first.ack([first.peek(1)[0].seq])
    first.close()
    again = Spool.open(path)
    try:
        assert again.count == 2
        assert _payloads(again) == [b"b", b"c"]
    finally:
        again.close()


def test_contents_survive_a_crash(path: Path) -> None:
    # The writer dies without closing anything, as under kill -9.
    crash = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from services.common.spool import Spool
        spool = Spool.open(Path({str(path)!r}))
        spool.append([b"one", b"two"])
        spool.append([b"three"])
        os._exit(0)
    """)
    assert _python(crash).returncode == 0
    assert Path(str(path) + "-wal").exists()  # committed but not checkpointed: recovery reads the WAL
    recovered = Spool.open(path)  # the dead process's lock is gone with it
    try:
        assert recovered.count == 3
        assert _payloads(recovered) == [b"one", b"two", b"three"]
    finally:
        recovered.close()


def test_bury_moves_records_to_the_dead_letters_with_the_error(path: Path) -> None:
    clock = ManualClock(start=1_700_000_000.0)
    spool = Spool.open(path, clock)
    try:
        spool.append([b"good", b"bad", b"good too"])
        bad = spool.peek(3)[1]
        spool.bury([bad.seq], "INVALID_ARGUMENT: no request_id")
        assert spool.count == 2
        assert _payloads(spool) == [b"good", b"good too"]
        [dead] = spool.dead_letters()
        assert (dead.seq, dead.payload, dead.error, dead.failed_at) == (
            bad.seq,
            b"bad",
            "INVALID_ARGUMENT: no request_id",
            1_700_000_000.0,
        )
    finally:
        spool.close()
    reopened = Spool.open(path)
    try:
        assert [d.payload for d in reopened.dead_letters()] == [b"bad"]
        assert reopened.count == 2
    finally:
        reopened.close()


def test_a_second_owner_is_refused_until_the_first_closes(path: Path) -> None:
    first = Spool.open(path)
    try:
        # flock locks belong to the open file, so a second open in this same process conflicts
        # exactly as another process's would.
        with pytest.raises(SpoolLockedError) as refused:
            Spool.open(path)
        assert isinstance(refused.value, ConfigError)  # so the service exits with a clear message
        assert str(path) in str(refused.value)
        assert "in use by another process" in str(refused.value)
        first.append([b"still mine"])
    finally:
        first.close()
    second = Spool.open(path)
    try:
        assert _payloads(second) == [b"still mine"]
    finally:
        second.close()


def test_another_process_is_refused(path: Path, spool: Spool) -> None:
    probe = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from services.common.spool import Spool, SpoolLockedError
        try:
            Spool.open(Path({str(path)!r}))
        except SpoolLockedError as exc:
            print(exc)
            sys.exit(3)
    """)
    done = _python(probe)
    assert done.returncode == 3, done.stderr
    assert f"pid {os.getpid()}" in done.stdout
