"""Live latency per deployment: an exponentially weighted moving average of
time to first token (streams) and total latency (everything else); and live
quality per model, from evaluation scores."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

# Weight of the newest observation: high enough to follow a provider that slows down within a
# few dozen requests, low enough that one slow answer does not flip the ranking.
ALPHA = 0.3


@dataclass
class _Average:
    value: float
    samples: int


class LatencyStats:
    def __init__(self, alpha: float = ALPHA) -> None:
        self._alpha = alpha
        self._averages: dict[tuple[str, bool], _Average] = {}

    def observe(self, deployment: str, milliseconds: float, *, first_token: bool) -> None:
        key = (deployment, first_token)
        current = self._averages.get(key)
        if current is None:
            self._averages[key] = _Average(milliseconds, 1)
        else:
            current.value += self._alpha * (milliseconds - current.value)
            current.samples += 1

    def expected(self, deployment: str, *, first_token: bool) -> float | None:
        """The average in milliseconds, or None before the first observation."""
        current = self._averages.get((deployment, first_token))
        return None if current is None else current.value

    def snapshot(self) -> dict[str, float]:
        return {f"{d}:{'ttft' if t else 'total'}": a.value for (d, t), a in self._averages.items()}


# Scores a model's live quality is averaged over: recent enough to follow a model that got
# worse, long enough that one harsh judge does not flip router:quality.
QUALITY_WINDOW = 100


class QualityScores:
    """Live quality per model: the mean of its last QUALITY_WINDOW evaluation scores
    (0..1), from the evaluations this router ran. Errors are not scores and never get here."""

    def __init__(self, window: int = QUALITY_WINDOW) -> None:
        self._window = window
        self._scores: dict[str, deque[float]] = {}

    def observe(self, model: str, score: float) -> None:
        recent = self._scores.get(model)
        if recent is None:
            recent = self._scores[model] = deque(maxlen=self._window)
        recent.append(score)

    def average(self, model: str, min_samples: int) -> float | None:
        """The mean, or None while the model has fewer than min_samples scores."""
        recent = self._scores.get(model)
        if recent is None or len(recent) < max(1, min_samples):
            return None
        return sum(recent) / len(recent)
