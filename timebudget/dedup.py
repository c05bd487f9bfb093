"""Near-duplicate detection: how many near copies of each training row the training set holds.

Why: data gathered at scale repeats itself (web-scraped images copied by Zipf's law, augmented copies saved as new
files, sensor streams sampled faster than they change). Uniform training then spends its budget on the few items that
are copied most, and the model is fitted to the copying rather than to the distinct items; deduplication is standard
practice in data curation (SemDeDup, Abbas et al. 2023, removes near-duplicates by a distance threshold in an
embedding). Here the training rows' own inputs are the embedding: each row is centred and projected to ``DIMS``
random directions (Johnson-Lindenstrauss: pairwise distances kept within tens of percent), and two rows are near
copies when their projected distance is below ``RADIUS`` times the median distance between random pairs of rows.
:func:`count_copies` gives each row the number of rows within that radius, itself included; a sampler that draws row
``i`` with weight ``1 / count[i]`` trains about one copy of each item per draw (see
:mod:`timebudget.strategies.dedup`).

Thresholds, from ``benchmarks/budget_accuracy.py``'s development sets (data seed 100, 28x28 distorted digits
flattened to 784 features): the nearest other row of a copy lay at 0.07-0.12 of the median pair distance (5th to
95th percentile over 256 screened rows), the nearest other row of a distinct digit at 0.36 or more (5th percentile; the
clean, flipped and imbalanced sets). ``RADIUS`` = 0.2 lies near the geometric middle. Low-dimensional tables do not
separate so (scikit-learn's diabetes, 10 features: 7% of rows within 0.2; breast cancer, 30 features: 95%), as rows of
few features are close by nature and an exact repeat there often records a real frequency; so ``auto`` looks only at
inputs of at least ``MIN_FEATURES`` features (images, embeddings), and only acts when the copies would cut an epoch by
at least ``MIN_SAVING``.

Cost: the projection is a matrix product (4,000 rows of 784 features: 5-8 ms on one CPU thread); a screen of ``SCREEN``
random rows against all (2 ms) estimates the saving, and only where it is worth acting are all rows counted (each pair
compared once, about ``n / (2 SCREEN)`` screens: 15 ms for 4,000 rows, 2.4 s for 50,000, quadratic in the rows;
comparing every row with every row and summing booleans took 32 ms and 5.3 s, session 24). The projection is skipped
when its first chunk predicts more than ``COST_SHARE`` of the budget for all rows; the run then trains uniformly.
Counting is allowed more where the screen found more copies (:func:`count_allowance`): uniform training would spend
``saving`` of every epoch on surplus copies, and counting may take up to ``PAYBACK`` of that time (at least
``COST_SHARE`` of the budget). With ``COST_SHARE`` alone a 0.8 s budget allowed 0.04 s, and the benchmark's Zipf-copied
set (saving 75%) went uncounted in 7 of 30 development runs (counting predicted at 0.04-0.05 s), where counting gained
+0.71 point (session 23; ``benchmarks/README.md``); CIFAR-10's 50,000 rows (then about 4 s to count on one thread) went
uncounted below an 80 s budget; with copies saving half an epoch (a 12.5% allowance) and counting at 2.4 s they now go
uncounted below about 20 s.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

DIMS = 32
RADIUS = 0.2
PAIRS = 2048  # random pairs whose median distance sets the scale
SCREEN = 256
MIN_FEATURES = 256
MIN_SAVING = 0.1
COST_SHARE = 0.05
PAYBACK = 0.25  # of the time uniform training would spend on surplus copies that counting them may take
PROJECT_ROWS = 4096  # rows projected at once; the first chunk's time predicts the rest
BLOCK = 1 << 20  # distances compared at once: 4 MiB of float32 stay in cache (4x faster than 64 MiB on one thread)


@dataclass
class Copies:
    """What detection found: ``counts`` (rows within the radius of each row, itself included; ``None`` when the run
    trains every row) and why, for ``summary.json``."""

    counts: torch.Tensor | None
    reason: str
    saving: float = 0.0  # estimated share of an epoch's rows that are surplus copies (1 - mean of 1 / count)
    seconds: float = 0.0
    stats: dict[str, float] = field(default_factory=dict)  # the radius and the scale it came from, once measured

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {"active": self.counts is not None, "reason": self.reason,
                                  "saving": round(self.saving, 4), "seconds": round(self.seconds, 4),
                                  **{key: round(value, 6) for key, value in self.stats.items()}}
        if self.counts is not None:
            out["rows_with_copies"] = int((self.counts > 1).sum())
            out["largest_group"] = int(self.counts.max())
        return out


def count_allowance(budget: float, saving: float) -> float:
    """The most seconds counting all rows may take in a run of ``budget`` seconds whose screen estimated ``saving``:
    ``PAYBACK`` of the ``saving * budget`` seconds uniform training would spend on surplus copies, and never less
    than ``COST_SHARE`` of the budget (what projecting may take, before anything is known of copies)."""
    return budget * max(COST_SHARE, PAYBACK * saving)


def count_copies(x: torch.Tensor, seed: int, forced: bool, budget: float) -> Copies:
    """Near copies of every row of ``x`` (rows, *features), or a :class:`Copies` without counts and the reason.

    ``forced`` skips the feature, saving and cost rules (``dedup: true``); ``budget`` (seconds) sets what projecting
    all rows (``COST_SHARE`` of it) and then counting them (:func:`count_allowance`) may take, as the first chunk's
    and the screen's own times predict them."""
    t0 = time.perf_counter()
    n = len(x)
    features = x[0].numel() if n else 0
    if n < 2:
        return Copies(None, "fewer than two rows")
    if not forced and features < MIN_FEATURES:
        return Copies(None, f"{features} features: below {MIN_FEATURES}, rows may repeat by nature",
                      seconds=time.perf_counter() - t0)
    gen = torch.Generator().manual_seed(seed)
    flat = x.reshape(n, -1)
    directions = (torch.randn(features, DIMS, generator=gen) / DIMS ** 0.5).to(flat.device)
    allowance = COST_SHARE * budget
    points, predicted = project(flat, directions, None if forced else allowance)
    if points is None:
        return Copies(None, f"projecting all rows would take about {predicted:.2f} s: more than {allowance:.2f} s",
                      seconds=time.perf_counter() - t0)
    pairs = torch.randint(n, (2, PAIRS), generator=gen).to(flat.device)
    scale = float((points[pairs[0]] - points[pairs[1]]).norm(dim=1).median())
    if scale <= 0.0:
        return Copies(None, "every row is the same", seconds=time.perf_counter() - t0)
    radius = RADIUS * scale
    screened = torch.randperm(n, generator=gen)[:SCREEN].to(flat.device)
    t_screen = time.perf_counter()
    sample = _within(points[screened], points, radius)
    screen_s = time.perf_counter() - t_screen
    saving = 1.0 - float((1.0 / sample.float()).mean())
    stats = {"radius": radius, "scale": scale}
    if not forced and saving < MIN_SAVING:
        return Copies(None, f"copies would save {saving:.0%} of an epoch: below {MIN_SAVING:.0%}", saving,
                      time.perf_counter() - t0, stats)
    predicted = count_seconds(screen_s, len(screened), n)
    allowance = count_allowance(budget, saving)
    if not forced and predicted > allowance:
        return Copies(None, f"counting all rows would take about {predicted:.2f} s: more than {allowance:.2f} s",
                      saving, time.perf_counter() - t0, stats)
    counts = _count_all(points, radius)
    saving = 1.0 - float((1.0 / counts.float()).mean())
    reason = "forced" if forced else f"copies save {saving:.0%} of an epoch"
    return Copies(counts.cpu(), reason, saving, time.perf_counter() - t0, stats)


def count_seconds(screen_s: float, screened: int, n: int) -> float:
    """What counting all ``n`` rows should take, from ``screen_s`` seconds for ``screened`` rows against all: the
    count compares each pair once, ``n (n + 1) / 2`` distances against the screen's ``screened * n``."""
    return screen_s * (n + 1) / (2 * screened)


def project(flat: torch.Tensor, directions: torch.Tensor,
            allowance: float | None) -> tuple[torch.Tensor | None, float]:
    """The centred rows of ``flat`` times ``directions``, in chunks of ``PROJECT_ROWS`` (``(x - mean) P`` as ``x P -
    mean P``: no centred copy of the inputs), and the seconds the first chunk's time predicts for all of them (with an
    ``allowance``; else 0); no rows when that prediction is above ``allowance`` (50,000 rows of 3,072 features,
    CIFAR-10's size, took 4 s on one loaded CPU thread when projected whole)."""
    n = len(flat)
    t0 = time.perf_counter()
    parts, predicted = [], 0.0
    for start in range(0, n, PROJECT_ROWS):
        parts.append(flat[start:start + PROJECT_ROWS].float() @ directions)
        if start == 0 and allowance is not None:
            if flat.device.type == "cuda":
                torch.cuda.synchronize(flat.device)
            predicted = (time.perf_counter() - t0) * n / len(parts[0])
            if predicted > allowance:
                return None, predicted
    points = torch.cat(parts)
    return points - points.mean(0), predicted  # the mean of the projections is the projection of the mean


def _within(queries: torch.Tensor, points: torch.Tensor, radius: float) -> torch.Tensor:
    """Per query row, how many ``points`` lie within ``radius`` (a query that is one of the points counts itself)."""
    step = max(1, BLOCK // len(points))
    norms = (points * points).sum(1)
    return torch.cat([_tally(_near(chunk, (chunk * chunk).sum(1), points, norms, radius), 1)
                      for chunk in queries.split(step)]).long()


def _count_all(points: torch.Tensor, radius: float) -> torch.Tensor:
    """Per row of ``points``, how many rows lie within ``radius``, itself included: :func:`_within` of all rows against
    all, with each pair compared once (a block of rows against itself and the rows after it; its row sums count the
    block's rows, its column sums beyond the block the later rows), half the distances of the square."""
    n = len(points)
    norms = (points * points).sum(1)
    counts = torch.zeros(n, dtype=torch.long, device=points.device)
    start = 0
    while start < n:
        stop = min(n, start + max(1, BLOCK // (n - start)))  # blocks of about ``BLOCK`` distances as the rows shrink
        near = _near(points[start:stop], norms[start:stop], points[start:], norms[start:], radius)
        counts[start:stop] += _tally(near, 1)
        counts[stop:] += _tally(near[:, stop - start:], 0)
        start = stop
    return counts


def _near(rows: torch.Tensor, row_norms: torch.Tensor, points: torch.Tensor, point_norms: torch.Tensor,
          radius: float) -> torch.Tensor:
    """Boolean block: ``rows[i]`` lies within ``radius`` of ``points[j]`` (``*_norms`` their squared norms).
    ``|q - p|^2 < r^2``  <=>  ``|p|^2 - 2 q.p < r^2 - |q|^2``: one matrix product, no square roots."""
    return torch.addmm(point_norms, rows, points.t(), alpha=-2.0) < radius * radius - row_norms[:, None]


def _tally(near: torch.Tensor, dim: int) -> torch.Tensor:
    """The true entries of boolean ``near`` along ``dim``, summed as bytes into 32-bit integers (a boolean sum took
    0.92 ms on a block of 87 x 12,000 on one CPU thread, the same bytes summed so 0.15 ms)."""
    return near.view(torch.uint8).sum(dim, dtype=torch.int32)
