"""Statistics the benchmark reports share."""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence


def median_ci(ratios: Sequence[float], level: float = 0.95, resamples: int = 2000) -> list[float]:
    """Percentile-bootstrap confidence interval of the median of `ratios` (seeded: renders are stable)."""
    rng = random.Random(0)
    meds = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return [meds[int(resamples * (1 - level) / 2)], meds[int(resamples * (1 + level) / 2) - 1]]
