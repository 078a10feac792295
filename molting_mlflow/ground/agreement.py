"""How far a score agrees with a person's reading: per dimension and overall, over the answers a person
labelled, n, Spearman's rank correlation, the mean absolute distance and the signed bias (score − human:
above 0, the score is kinder than the person), and the answers they disagree on most.

Pure arithmetic on pairs; where the pairs come from (human assessments on MLflow traces, the rubric's
and a judge's points) is the store's (store/assessments.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

OVERALL = "overall"          # the whole score: 0 to the rubric's maximum, where a person gave one (or all dimensions)


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing the mean of the ranks they span (Spearman's convention)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def pearson(x: list[float], y: list[float]) -> float | None:
    """Pearson's r, or None where either side is constant (no order to agree on) or there are < 2 pairs."""
    n = len(x)
    if n < 2:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sx = math.sqrt(sum((a - mx) ** 2 for a in x))
    sy = math.sqrt(sum((b - my) ** 2 for b in y))
    if sx == 0 or sy == 0:
        return None
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / (sx * sy)


# Below this many pairs a rank correlation says nothing: two points always rank in the same or the opposite order
MIN_RANKED = 3


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho: Pearson's r of the ranks (ties averaged); None under MIN_RANKED pairs."""
    return pearson(ranks(x), ranks(y)) if len(x) >= MIN_RANKED else None


@dataclass(frozen=True)
class Agreement:
    """One score against the person on one dimension (or OVERALL)."""
    dimension: str
    n: int
    spearman: float | None
    mean_abs: float | None      # mean |score − human|
    bias: float | None          # mean (score − human): > 0, the score is kinder than the person

    def as_metrics(self, prefix: str) -> dict:
        """agreement.<scorer>.<what> for OVERALL, agreement.<scorer>.<dimension>.<what> otherwise, to 3 decimals
        (MLflow's runs table prints every digit of a metric: 0.7999999999999998); None left out."""
        head = prefix if self.dimension == OVERALL else f"{prefix}.{self.dimension}"
        values = {"n": self.n, "spearman": self.spearman, "mean_abs": self.mean_abs, "bias": self.bias}
        return {f"{head}.{k}": round(v, 3) for k, v in values.items() if v is not None}


def agree(dimension: str, pairs: list[tuple[float, float]]) -> Agreement:
    """The agreement of (score, human) pairs."""
    if not pairs:
        return Agreement(dimension, 0, None, None, None)
    scores, human = [p[0] for p in pairs], [p[1] for p in pairs]
    diffs = [s - h for s, h in pairs]
    return Agreement(dimension, len(pairs), spearman(scores, human), sum(abs(d) for d in diffs) / len(diffs),
                     sum(diffs) / len(diffs))
