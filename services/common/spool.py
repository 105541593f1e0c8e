"""A durable, ordered local spool of opaque records, kept in a SQLite file.

Records wait here while the service they are for is unreachable. Each append
is one committed transaction (WAL, synchronous=FULL), so a record that was
appended survives a crash of the process or the machine; records come back
oldest first and are deleted only when the caller acknowledges them.
Records the receiver rejects for good are moved to a dead-letter table with
the error, so one bad record cannot block the rest forever.

One process owns a spool file: opening takes an exclusive flock on a sidecar
``.lock`` file, which the kernel releases when the process dies, however it
dies. Methods block on disk I/O; async callers run them in a worker thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from services.common.clock import Clock, SystemClock
from services.common.errors import ConfigError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY,
    payload BLOB NOT NULL,
    error TEXT NOT NULL,
    failed_at REAL NOT NULL
);
"""


class SpoolLockedError(ConfigError):
    """Another live process holds the spool file."""


class SpoolEntry(NamedTuple):
    seq: int
    payload: bytes


class DeadLetter(NamedTuple):
    seq: int
    payload: bytes
    error: str
    failed_at: float


def _lock(spool_path: Path) -> int:
    fd = os.open(spool_path.with_name(spool_path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise SpoolLockedError(
            f"spool {spool_path} is in use by another process (pid {holder}); "
            "every process needs a spool file of its own"
        ) from None
    # The holder's pid, only to make the message above useful; the flock is what excludes.
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


class Spool:
    """Use open(); every method is safe to call from any thread."""

    def __init__(self, conn: sqlite3.Connection, lock_fd: int, path: Path, clock: Clock) -> None:
        self._conn = conn
        self._lock_fd = lock_fd
        self._clock = clock
        self._mutex = threading.Lock()
        self.path = path
        # Kept here rather than counted per call: this process is the only writer.
        self._count = int(conn.execute("SELECT COUNT(*) FROM spool").fetchone()[0])

    @classmethod
    def open(cls, path: Path, clock: Clock | None = None) -> Spool:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock(path)
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before append returns, so a power cut loses nothing either.
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(conn, lock_fd, path, clock or SystemClock())

    @property
    def count(self) -> int:
        """Records waiting (dead letters not included)."""
        return self._count

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._mutex:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def append(self, payloads: Sequence[bytes]) -> None:
        """Add records after every record already here, all or none."""
        if not payloads:
            return
        with self._transaction() as conn:
            conn.executemany("INSERT INTO spool (payload) VALUES (?)", [(p,) for p in payloads])
        self._count += len(payloads)

    def peek(self, limit: int) -> list[SpoolEntry]:
        """The oldest records, oldest first; they stay until acknowledged."""
        with self._mutex:
            rows = self._conn.execute("SELECT seq, payload FROM spool ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [SpoolEntry(int(seq), bytes(payload)) for seq, payload in rows]

    def ack(self, seqs: Sequence[int]) -> None:
        """Delete delivered records."""
        with self._transaction() as conn:
            deleted = conn.executemany("DELETE FROM spool WHERE seq = ?", [(s,) for s in seqs]).rowcount
        self._count -= deleted

    def bury(self, seqs: Sequence[int], error: str) -> None:
        """Move records the receiver will never accept to the dead-letter table."""
        with self._transaction() as conn:
            for seq in seqs:
                conn.execute(
                    "INSERT INTO dead_letters (seq, payload, error, failed_at) "
                    "SELECT seq, payload, ?, ? FROM spool WHERE seq = ?",
                    (error, self._clock.now(), seq),
                )
            deleted = conn.executemany("DELETE FROM spool WHERE seq = ?", [(s,) for s in seqs]).rowcount
        self._count -= deleted

    def dead_letters(self) -> list[DeadLetter]:
        with self._mutex:
            rows = self._conn.execute("SELECT seq, payload, error, failed_at FROM dead_letters ORDER BY seq").fetchall()
        return [DeadLetter(int(s), bytes(p), str(e), float(t)) for s, p, e, t in rows]

    def close(self) -> None:
        with self._mutex:
            if self._lock_fd < 0:
                return
            self._conn.close()
            os.close(self._lock_fd)
            self._lock_fd = -1
