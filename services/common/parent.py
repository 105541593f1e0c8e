"""Die with the supervisor: a child of `interlock up` asks Linux for SIGTERM when its
parent goes away, even if the parent is killed outright.

The child asks for itself, at start, instead of the supervisor doing it between fork
and exec (preexec_fn): Python code run there can deadlock on a lock (malloc, the dynamic
loader) that one of the supervisor's gRPC threads held at the moment of the fork.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Mapping

PARENT_PID_ENV = "INTERLOCK_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent(env: Mapping[str, str]) -> None:
    """When started by the supervisor (it names itself in the environment), follow it."""
    expected = env.get(PARENT_PID_ENV, "")
    if not expected.isdigit() or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(expected):
        # The supervisor died before the request above took effect.
        os.kill(os.getpid(), signal.SIGTERM)
