"""A circuit breaker per deployment: keeps a failing provider out of the path.

Closed: traffic flows. After `threshold` consecutive failures it opens for
`cooldown` seconds (or for the provider's Retry-After, if longer); then it is
half-open: one probe is let through, and its outcome closes or reopens it.

Each deployment's state is published as a gauge whenever it is worked out.
Open turns half-open by time alone, so the gauge shows that change when the
breaker is next consulted (the next request that could use the deployment).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from services.common.clock import Clock
from services.router.metrics import BREAKER_STATE


class State(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_GAUGE_VALUES = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}


@dataclass
class _Circuit:
    failures: int = 0
    open_until: float = 0.0
    probing: bool = False


class CircuitBreakers:
    def __init__(self, clock: Clock, threshold: int, cooldown_seconds: float) -> None:
        self._clock = clock
        self._threshold = threshold
        self._cooldown = cooldown_seconds
        self._circuits: dict[str, _Circuit] = {}
        # The state last published per deployment, so the gauge is set only on a change.
        self._shown: dict[str, State] = {}

    def state(self, key: str) -> State:
        circuit = self._circuits.get(key)
        if circuit is None or not circuit.open_until:
            return self._show(key, State.CLOSED)
        return self._show(key, State.OPEN if self._clock.monotonic() < circuit.open_until else State.HALF_OPEN)

    def _show(self, key: str, state: State) -> State:
        if self._shown.get(key) is not state:
            self._shown[key] = state
            BREAKER_STATE.labels(key).set(_GAUGE_VALUES[state])
        return state

    def allows(self, key: str) -> bool:
        """Whether a request may go to key now (without claiming the half-open probe)."""
        state = self.state(key)
        circuit = self._circuits.get(key)
        return state is State.CLOSED or (state is State.HALF_OPEN and circuit is not None and not circuit.probing)

    def begin(self, key: str) -> None:
        """Claim the half-open probe, if the circuit is half-open."""
        if self.state(key) is State.HALF_OPEN:
            self._circuits[key].probing = True

    def success(self, key: str) -> None:
        self._circuits.pop(key, None)
        self._show(key, State.CLOSED)

    def failure(self, key: str, retry_after: float | None = None) -> None:
        circuit = self._circuits.setdefault(key, _Circuit())
        circuit.failures += 1
        circuit.probing = False
        now = self._clock.monotonic()
        if retry_after:
            # The provider said when to come back: stay away until then.
            circuit.open_until = max(circuit.open_until, now + retry_after)
        if circuit.failures >= self._threshold or self.state(key) is State.HALF_OPEN:
            circuit.open_until = max(circuit.open_until, now + self._cooldown)
        self.state(key)  # publish

    def retry_after(self, key: str) -> float:
        """Seconds until key may be tried again (0 when it may be now)."""
        circuit = self._circuits.get(key)
        if circuit is None:
            return 0.0
        return max(0.0, circuit.open_until - self._clock.monotonic())

    def snapshot(self) -> dict[str, str]:
        return {key: self.state(key).value for key in self._circuits}
