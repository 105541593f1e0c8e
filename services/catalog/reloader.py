"""Reloading the catalog file while the service runs.

A reload is triggered by SIGHUP or by the file changing on disk. The new
file is loaded and validated whole before anything is swapped: on success
the caller's on_change receives the new Catalog (the server publishes it,
replacing the old snapshot in one assignment, so requests already holding
the old one finish with it); on any problem the old catalog stays and a
warning says why. A reload never raises.

Everything runs on the event loop's thread, so on_change may touch
loop-bound state (such as services.common.broadcast.Latest) directly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Mapping
from pathlib import Path

from services.catalog.config import Catalog, CatalogConfigError, load_catalog

# What identifies one version of the file: (st_mtime_ns, st_size, st_ino); None when it cannot be read.
_Stamp = tuple[int, int, int] | None


class CatalogReloader:
    """Reloads the catalog at `path` on SIGHUP or when the file changes.

    Create it right after loading the initial catalog: it remembers the file as
    it is now, so only later changes trigger a reload.
    """

    def __init__(
        self,
        path: Path,
        env: Mapping[str, str],
        on_change: Callable[[Catalog], None],
        *,
        poll_seconds: float = 1.0,
        log: logging.Logger | None = None,
    ) -> None:
        if poll_seconds <= 0:
            raise ValueError(f"poll_seconds must be positive (got {poll_seconds})")
        self._path = path
        self._env = env
        self._on_change = on_change
        self._poll_seconds = poll_seconds
        self._log = log or logging.getLogger(__name__)
        self._stamp = self._read_stamp()

    @property
    def path(self) -> Path:
        return self._path

    def _read_stamp(self) -> _Stamp:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def changed(self) -> bool:
        """Whether the file differs from the one last loaded (or is gone, or is back)."""
        return self._read_stamp() != self._stamp

    def reload(self) -> bool:
        """Load the file now; True when on_change got a new catalog, False when the old one stays."""
        # Taken before reading, so a write racing this read is seen as a change by the next poll.
        self._stamp = self._read_stamp()
        try:
            catalog = load_catalog(self._path, self._env)
        except CatalogConfigError as exc:
            self._log.warning("catalog reload failed, keeping the previous catalog: %s", exc)
            return False
        except Exception:  # noqa: BLE001 - a loader bug must not take the service down; keep the old catalog
            self._log.exception("catalog reload failed, keeping the previous catalog: unexpected error")
            return False
        try:
            self._on_change(catalog)
        except Exception:  # noqa: BLE001 - reload never raises: not into run(), not into the signal handler
            self._log.exception("catalog reload: applying the new catalog failed")
            return False
        self._log.info(
            "catalog reloaded from %s: %d providers, %d models and profiles, %d plans",
            self._path,
            len(catalog.providers),
            len(catalog.models),
            len(catalog.plans),
        )
        return True

    async def run(self) -> None:
        """Poll the file every poll_seconds and reload when it changes; runs until cancelled.

        A change is loaded once it has held still for one poll, so a file caught
        half-written by an editor saving in place is not reported as broken.
        """
        previous = self._stamp
        while True:
            await asyncio.sleep(self._poll_seconds)
            stamp = self._read_stamp()
            if stamp != self._stamp and stamp == previous:
                self.reload()
            previous = stamp

    def install_sighup(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make SIGHUP reload the catalog (Unix only; undo with loop.remove_signal_handler(signal.SIGHUP))."""
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self) -> None:
        self._log.info("SIGHUP: reloading the catalog from %s", self._path)
        self.reload()
