"""A Pathfinder generator: two marked endpoints, are they on the same path of dashes?

Follows the published procedure (Linsley et al. 2018, "Learning long-range spatial dependencies
with horizontal gated recurrent units"; Kim et al. 2020; the generator behind the LRA release,
github.com/drewlinsley/pathfinder ``snakes2.py``), written anew:

1. Two *target* paths start from origin tips ``seed_distance`` apart and grow alternately,
   ``contour_length`` dashes each (the three difficulty levels are 6, 9 and 14 dashes).
   Each dash turns from the previous by an angle drawn with weight
   ``cos(min(continuity * |turn|, pi / 2)) ** 2`` (the published continuity prior), after a
   small gap along the path.
2. ``num_distractors`` distractor paths of ``contour_length // 3`` dashes are added wherever
   they fit (a distractor that cannot be placed is skipped, as in the original).
3. Two circular markers are drawn: at the origin tip of path A and at the terminal tip of
   A (label 1, positive) or of B (label 0, negative).

One deliberate difference: paths keep a fixed number of empty pixels between each other
(``2 * link_radius + 2`` in Chebyshev distance between their ink), while consecutive dashes of one
path stay within ``2 * link_radius + 1``. So the label is visible at the pixel level: dilate the
ink (``image > 0``) by a ``(2k+1)``-square, and the two markers are in one 8-connected component
exactly when the image is positive. The tests check this with ``scipy.ndimage.label`` on the
rendered image alone. (The original keeps paths one "margin" apart and does not guarantee it.)

Images are uint8, black background, strokes anti-aliased by ``aa``-fold supersampling.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage

__all__ = ["DIFFICULTY", "PathfinderParams", "PathfinderSample", "generate", "params_for"]

# Dashes per target path for the three published difficulty levels
# (curv_baseline, curv_contour_length_9, curv_contour_length_14).
DIFFICULTY = {"easy": 6, "intermediate": 9, "hard": 14}


@dataclasses.dataclass(frozen=True)
class PathfinderParams:
    size: int
    contour_length: int = 14
    paddle_length: float = 2.0  # px, one dash
    paddle_thickness: float = 1.0  # px
    paddle_gap: float = 0.6  # px along the path between dashes
    continuity: float = 1.0  # published prior; larger = straighter paths
    seed_distance: float = 7.0  # px between the two target origins
    marker_radius: float = 1.5  # px
    num_distractors: int = 5
    link_radius: int = 0  # k: ink within 2k+1 links; other paths stay >= 2k+2 away
    border: float = 1.0  # px kept free at the image edge
    aa: int = 4  # supersampling per pixel side
    max_turn_trials: int = 24
    max_image_trials: int = 200

    def __post_init__(self):
        if self.size < 16 or self.contour_length < 2 or self.aa < 1 or self.link_radius < 0:
            raise ValueError(f"PathfinderParams: invalid {self}")

    @property
    def distractor_length(self) -> int:
        return max(1, self.contour_length // 3)


# Per resolution, after the LRA release's generation settings (lra_benchmarks/data/pathfinder.py
# docstrings: seed distance, marker radius, paddle thickness, distractor budget), with gaps and
# link radii chosen so the pixel-level separation above holds.
_RESOLUTION = {
    32: dict(paddle_length=2.0, paddle_thickness=1.0, paddle_gap=0.6, seed_distance=7.0, marker_radius=1.5, budget=20, link_radius=0, continuity=1.0),
    64: dict(paddle_length=2.5, paddle_thickness=1.2, paddle_gap=1.0, seed_distance=12.0, marker_radius=2.5, budget=22, link_radius=1, continuity=1.0),
    128: dict(paddle_length=6.0, paddle_thickness=1.5, paddle_gap=1.5, seed_distance=20.0, marker_radius=3.0, budget=35, link_radius=1, continuity=1.8),
    256: dict(paddle_length=11.0, paddle_thickness=2.0, paddle_gap=3.0, seed_distance=30.0, marker_radius=5.0, budget=30, link_radius=2, continuity=1.8),
}


def params_for(size: int, difficulty: str = "hard", **overrides) -> PathfinderParams:
    """The generator settings for a resolution (32, 64, 128, 256) and difficulty level."""
    if size not in _RESOLUTION:
        raise ValueError(f"params_for: size must be one of {sorted(_RESOLUTION)}; got {size}")
    if difficulty not in DIFFICULTY:
        raise ValueError(f"params_for: difficulty must be one of {sorted(DIFFICULTY)}; got {difficulty!r}")
    r = dict(_RESOLUTION[size])
    contour_length = DIFFICULTY[difficulty]
    budget = r.pop("budget")
    kw = dict(r, size=size, contour_length=contour_length, num_distractors=budget // max(1, contour_length // 3))
    kw.update(overrides)
    return PathfinderParams(**kw)


@dataclasses.dataclass
class PathfinderSample:
    image: np.ndarray  # (size, size) uint8
    label: int  # 1: the markers are on one path
    markers: tuple[tuple[float, float], tuple[float, float]]  # (y, x) centers


class _Retry(Exception):
    pass


class _Canvas:
    """Ink per path and the 'halo' each path forbids to the others (its ink dilated by 2k+1)."""

    def __init__(self, p: PathfinderParams):
        self.p = p
        s = p.size
        self.image = np.zeros((s, s), np.float32)
        self.ink: list[np.ndarray] = []  # per path, bool (s, s)
        self.halo_count = np.zeros((s, s), np.int16)  # how many paths' halos cover a pixel
        self.halos: list[np.ndarray] = []
        self.sep = 2 * p.link_radius + 1  # dilation radius of the halo

    def new_path(self) -> int:
        s = self.p.size
        self.ink.append(np.zeros((s, s), bool))
        self.halos.append(np.zeros((s, s), bool))
        return len(self.ink) - 1

    def drop_path(self, k: int) -> None:
        self.halo_count -= self.halos[k]
        self.ink[k][:] = False
        self.halos[k][:] = False

    def stroke(self, p0, p1, radius: float):
        """Coverage of a capsule (segment p0-p1 of half-width radius): (window slices, float array)."""
        s, aa = self.p.size, self.p.aa
        lo_y = max(int(math.floor(min(p0[0], p1[0]) - radius)) - 1, 0)
        hi_y = min(int(math.ceil(max(p0[0], p1[0]) + radius)) + 1, s)
        lo_x = max(int(math.floor(min(p0[1], p1[1]) - radius)) - 1, 0)
        hi_x = min(int(math.ceil(max(p0[1], p1[1]) + radius)) + 1, s)
        sub = (np.arange(aa) + 0.5) / aa
        ys = (np.arange(lo_y, hi_y)[:, None] + sub[None, :]).reshape(-1)
        xs = (np.arange(lo_x, hi_x)[:, None] + sub[None, :]).reshape(-1)
        dy, dx = p1[0] - p0[0], p1[1] - p0[1]
        seg2 = dy * dy + dx * dx
        py, px = ys[:, None] - p0[0], xs[None, :] - p0[1]
        t = np.clip((py * dy + px * dx) / seg2, 0.0, 1.0) if seg2 > 0 else np.zeros_like(py * px)
        d2 = (py - t * dy) ** 2 + (px - t * dx) ** 2
        inside = d2 <= radius * radius
        cov = inside.reshape(hi_y - lo_y, aa, hi_x - lo_x, aa).mean(axis=(1, 3))
        return (slice(lo_y, hi_y), slice(lo_x, hi_x)), cov

    def fits(self, k: int, window, cov, *, linked_to=None, avoid_self=None) -> bool:
        ink = cov > 0
        others = self.halo_count[window] - self.halos[k][window]
        if np.any(ink & (others > 0)):
            return False
        if avoid_self is not None and np.any(ink & avoid_self[window]):
            return False
        if linked_to is not None:
            near = self._dilate_window(linked_to, window)
            if not np.any(ink & near):
                return False
        return True

    def _dilate_window(self, mask: np.ndarray, window) -> np.ndarray:
        r = self.sep
        s = self.p.size
        ys, xs = window
        big = (slice(max(ys.start - r, 0), min(ys.stop + r, s)), slice(max(xs.start - r, 0), min(xs.stop + r, s)))
        dil = ndimage.maximum_filter(mask[big], size=2 * r + 1, mode="constant", cval=False)
        return dil[ys.start - big[0].start : ys.stop - big[0].start, xs.start - big[1].start : xs.stop - big[1].start]

    def add(self, k: int, window, cov, *, draw: bool = True) -> np.ndarray:
        """Add coverage to path k's ink (and halo); returns the ink as a full-size mask."""
        ink = cov > 0
        full = np.zeros_like(self.ink[k])
        full[window] = ink
        self.ink[k] |= full
        r, s = self.sep, self.p.size
        ys, xs = window
        big = (slice(max(ys.start - r, 0), min(ys.stop + r, s)), slice(max(xs.start - r, 0), min(xs.stop + r, s)))
        grown = ndimage.maximum_filter(full[big], size=2 * r + 1, mode="constant", cval=False)
        new = grown & ~self.halos[k][big]
        self.halos[k][big] |= new
        self.halo_count[big] += new
        if draw:
            self.image[window] = np.maximum(self.image[window], cov)
        return full


def _turns(p: PathfinderParams, rng: np.random.Generator) -> np.ndarray:
    """Candidate turning angles in a random order drawn from the continuity prior.

    Gumbel-top-k over a grid of turns: the first candidate is a draw from the prior, and the
    later ones are fallbacks in prior-weighted order when a turn does not fit.
    """
    grid = np.linspace(-math.pi, math.pi, 72, endpoint=False)
    w = np.cos(np.minimum(p.continuity * np.abs(grid), math.pi / 2)) ** 2
    keep = w > 1e-6
    grid, logw = grid[keep], np.log(w[keep])
    order = np.argsort(-(logw + rng.gumbel(size=grid.shape)))
    return grid[order[: p.max_turn_trials]]


def _in_bounds(p: PathfinderParams, pt) -> bool:
    lo, hi = p.border + p.paddle_thickness, p.size - p.border - p.paddle_thickness
    return lo <= pt[0] <= hi and lo <= pt[1] <= hi


class _Path:
    def __init__(self, canvas: _Canvas, tip, heading: float):
        self.c = canvas
        self.k = canvas.new_path()
        self.tip = tip  # where the next dash starts (after the gap)
        self.heading = heading
        self.origin = tip
        self.last_ink = None
        self.older = np.zeros_like(canvas.ink[self.k])  # ink of all dashes before the last
        self.n = 0

    def grow(self, rng) -> bool:
        p = self.c.p
        # The first dash may point anywhere; later ones turn by the continuity prior.
        turns = rng.uniform(-math.pi, math.pi, p.max_turn_trials) if self.n == 0 else _turns(p, rng)
        for turn in turns:
            heading = self.heading + turn
            start = self.tip if self.n == 0 else _step(self.tip, self.heading + turn / 2, p.paddle_gap)
            end = _step(start, heading, p.paddle_length)
            if not (_in_bounds(p, start) and _in_bounds(p, end)):
                continue
            window, cov = self.c.stroke(start, end, p.paddle_thickness / 2)
            if not self.c.fits(self.k, window, cov, linked_to=self.last_ink, avoid_self=self.older if self.n else None):
                continue
            if self.last_ink is not None:
                self.older |= self.last_ink
            self.last_ink = self.c.add(self.k, window, cov)
            self.tip, self.heading, self.n = end, heading, self.n + 1
            return True
        return False


def _step(pt, heading: float, dist: float):
    return (pt[0] + dist * math.sin(heading), pt[1] + dist * math.cos(heading))


def _targets(p: PathfinderParams, rng: np.random.Generator, canvas: _Canvas):
    # As published, the first origin keeps 2 * seed_distance from the edges, so that paths
    # starting near the centre have room to grow.
    margin = max(p.border + p.marker_radius + 1, min(2 * p.seed_distance, p.size / 2 - 2))
    a0 = tuple(rng.uniform(margin, p.size - margin, size=2))
    margin = p.border + p.marker_radius + 1
    phi = rng.uniform(0, 2 * math.pi)
    b0 = _step(a0, phi, p.seed_distance)
    if not (margin <= b0[0] <= p.size - margin and margin <= b0[1] <= p.size - margin):
        raise _Retry
    paths = [_Path(canvas, a0, rng.uniform(0, 2 * math.pi)), _Path(canvas, b0, rng.uniform(0, 2 * math.pi))]
    # The origin markers' disks belong to their paths from the start (drawn or not) so that no
    # other path comes near them.
    for path in paths:
        window, cov = canvas.stroke(path.origin, path.origin, p.marker_radius)
        if not canvas.fits(path.k, window, cov):
            raise _Retry
        canvas.add(path.k, window, cov, draw=False)
    for _ in range(p.contour_length):
        for path in paths:
            if not path.grow(rng):
                raise _Retry
    for path in paths:  # terminal marker disks, reserved the same way
        window, cov = canvas.stroke(path.tip, path.tip, p.marker_radius)
        if not canvas.fits(path.k, window, cov):
            raise _Retry
        canvas.add(path.k, window, cov, draw=False)
    return paths


def generate(p: PathfinderParams, rng: np.random.Generator, *, label: int | None = None) -> PathfinderSample:
    """One image; ``label`` None draws it uniformly."""
    if label is None:
        label = int(rng.integers(2))
    for _ in range(p.max_image_trials):
        canvas = _Canvas(p)
        try:
            a, b = _targets(p, rng, canvas)
        except _Retry:
            continue
        _place_distractors(p, rng, canvas)
        end = a.tip if label == 1 else b.tip
        for center in (a.origin, end):
            window, cov = canvas.stroke(center, center, p.marker_radius)
            canvas.image[window] = np.maximum(canvas.image[window], cov)
        image = np.round(np.clip(canvas.image, 0.0, 1.0) * 255).astype(np.uint8)
        return PathfinderSample(image=image, label=label, markers=(a.origin, end))
    raise RuntimeError(f"pathfinder.generate: no image after {p.max_image_trials} tries with {p}")


def _place_distractors(p: PathfinderParams, rng: np.random.Generator, canvas: _Canvas) -> None:
    """Distractor paths; a failed one is rolled back (ink, halo and drawn strokes)."""
    for _ in range(p.num_distractors):
        for _attempt in range(10):
            saved_image = canvas.image.copy()
            path = _Path(canvas, tuple(rng.uniform(p.border + 1, p.size - p.border - 1, size=2)), rng.uniform(0, 2 * math.pi))
            if all(path.grow(rng) for _ in range(p.distractor_length)):
                break
            canvas.drop_path(path.k)
            canvas.image = saved_image
