"""The two signals that tell a serving model its world has changed: the audited quality (the
model's fraction of the optimum on the few decisions also solved exactly) and a label-free test
of the incoming gains against the distribution the model was trained on.

Pure NumPy and state, no I/O and no clocks, so each can be tested on its own with exact labels.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

__all__ = ["QUALITY_MIN_AUDITS", "QUALITY_Z", "DistributionTest", "QualityWindow", "Reference"]

# Audited decisions a quality verdict needs: fewer are noise (one hard row can sit at 95 %).
QUALITY_MIN_AUDITS = 20
# Standard errors below the threshold before the audits call the quality too low.
QUALITY_Z = 3.0


@dataclass(frozen=True)
class Reference:
    """What "the training distribution" is for the test: per-channel mean and std of the gains
    the serving model learned from."""

    mean: np.ndarray
    std: np.ndarray
    # Per-channel variance of (g - mean)^2, when the reference is data (None: only the
    # model's normalisation is known, so the window's own estimate stands in).
    var_of_square: np.ndarray | None = None

    @classmethod
    def of(cls, gains: np.ndarray) -> Reference:
        g = np.asarray(gains, dtype=np.float64)
        mean, std = g.mean(axis=0), g.std(axis=0)
        dev2 = (g - mean) ** 2
        return cls(mean, std, (dev2 * dev2).mean(axis=0) - std**4)


class QualityWindow:
    """The model's fraction of the optimum over the last ``window`` audited decisions (sum of
    the model's rates over sum of the optimum's, the measure every report uses), and whether
    it is *significantly* below a threshold: a model at 99.2 % of the optimum has single rows
    at 95 %, so a window of 20 audits alone would cross 99 % now and then by chance."""

    def __init__(self, window: int) -> None:
        self.model: deque[float] = deque(maxlen=window)
        self.optimum: deque[float] = deque(maxlen=window)

    def add(self, model_rates: np.ndarray, optimum_rates: np.ndarray) -> None:
        self.model.extend(np.asarray(model_rates, dtype=np.float64).tolist())
        self.optimum.extend(np.asarray(optimum_rates, dtype=np.float64).tolist())

    def __len__(self) -> int:
        return len(self.model)

    @property
    def fraction(self) -> float | None:
        """The window's fraction of the optimum, or None before any audit (or with an optimum
        of 0: nothing to win)."""
        total = sum(self.optimum)
        return sum(self.model) / total if self.model and total > 0 else None

    def below(self, threshold: float) -> bool:
        """Whether the quality is known (at least QUALITY_MIN_AUDITS audits) and below
        ``threshold`` by more than QUALITY_Z standard errors of the per-row fractions."""
        frac = self.fraction
        if frac is None or len(self) < min(QUALITY_MIN_AUDITS, self.model.maxlen or 1):
            return False
        got, opt = np.asarray(self.model), np.asarray(self.optimum)
        rows = got[opt > 0] / opt[opt > 0]
        se = float(rows.std() / np.sqrt(len(rows))) if len(rows) > 1 else 0.0
        return frac + QUALITY_Z * se < threshold

    def reset(self) -> None:
        self.model.clear()
        self.optimum.clear()


class DistributionTest:
    """A label-free drift test on the last ``window`` gain vectors: per channel, a z-score of
    the window's mean against the reference mean (known std) and of its variance against the
    reference variance (the standard error from the window's own fourth moment, so heavy
    tails do not fire it). ``score`` is the largest |z| over channels and both moments;
    ``fired`` when it exceeds ``threshold`` with the window full.

    Windows overlap, so a stationary stream tests the same rows many times: the threshold is
    set far out (default 8 sigma) and real drift still clears it within a few hundred rows.
    """

    def __init__(self, reference: Reference, window: int, threshold: float) -> None:
        self.window, self.threshold = int(window), float(threshold)
        self.buf: np.ndarray | None = None
        self.filled = self.pos = 0
        self.reset(reference)

    def reset(self, reference: Reference) -> None:
        """Start again against ``reference`` (the new model's data), with an empty window."""
        self.reference = reference
        self.filled = self.pos = 0
        self.last_score = 0.0

    def add(self, gains: np.ndarray) -> None:
        g = np.asarray(gains, dtype=np.float64)
        if g.ndim != 2 or not len(g):
            return
        if self.buf is None or self.buf.shape[1] != g.shape[1]:
            self.buf = np.empty((self.window, g.shape[1]))
        g = g[-self.window:]
        end = self.pos + len(g)
        if end <= self.window:
            self.buf[self.pos:end] = g
        else:
            first = self.window - self.pos
            self.buf[self.pos:] = g[:first]
            self.buf[: end - self.window] = g[first:]
        self.pos = end % self.window
        self.filled = min(self.window, self.filled + len(g))

    @property
    def full(self) -> bool:
        return self.filled >= self.window

    def score(self) -> float:
        """The largest |z| over channels, means and variances (0 until the window is full)."""
        if not self.full or self.buf is None:
            return 0.0
        w, n = self.buf, self.window
        ref = self.reference
        mean = w.mean(axis=0)
        dev = w - mean
        var = (dev * dev).mean(axis=0)
        m4 = (dev**4).mean(axis=0)
        ref_std = np.maximum(ref.std, 1e-12)
        z_mean = (mean - ref.mean) / (ref_std / np.sqrt(n))
        # Var of the sample variance ~ (m4 - var^2) / n. Heavy tails (shadowing) make the
        # window's own m4 small whenever it holds no extreme row, so the reference's, when
        # known, is a floor; so is a tiny one, so a constant window gives a finite z, not 0/0.
        v4 = np.maximum(m4 - var * var, (1e-3 * ref_std**2) ** 2)
        if ref.var_of_square is not None:
            v4 = np.maximum(v4, ref.var_of_square)
        se_var = np.sqrt(v4 / n)
        z_var = (var - ref_std**2) / se_var
        self.last_score = float(np.max(np.maximum(np.abs(z_mean), np.abs(z_var))))
        return self.last_score

    def fired(self) -> bool:
        return self.score() > self.threshold
