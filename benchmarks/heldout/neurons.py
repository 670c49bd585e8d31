"""An independent generator of FISBe-like multicolour (MCFO) neuron volumes, for held-out
evaluation only.

Written separately from ``napari_neuroseg.synth`` and the neuron training code (it imports
nothing from either, and was written without reading them) and never used for training,
validation, threshold choice or tuning. Its models, chosen from the published description of
FISBe (MCFO light microscopy of *Drosophila* neurons, 0.44 µm isotropic voxels):

- **shape**: each neuron is a tree of smooth, persistent random walks (a direction with a
  slowly drifting turning rate, so neurites curve like splines rather than jitter), grown from a
  soma that may lie outside the field of view; branches split off at 25-75° with a thinner radius,
  up to three levels deep. Radius tapers exponentially with arc length towards a floor and carries
  varicosities (boutons: Gaussian bumps along the arc). Motion in Z is damped (neurons in a
  thin slab run mostly in-plane). Rendered with sub-voxel accuracy by splatting a soft-edged tube
  profile around centreline samples; the ground-truth mask is "inside the local radius";
  crossing neurons overlap (one channel per neuron, as in FISBe);
- **colour**: MCFO tags: each of 3 epitopes present independently (p = 0.55, at least one) with a
  log-normal expression level, then spectral bleed-through between neighbouring channels; at the
  hard level 40 % of the neurons repeat an earlier neuron's colour with a small jitter (similar
  colours; each colour is repeated at most once, so they come in pairs);
- **intensity**: per-neuron log-normal brightness, a smooth log-normal modulation along the arc,
  dim segments (gaps, kept in the ground truth) and dim whole neurons (hard), depth attenuation
  in Z;
- **optics**: an anisotropic PSF as a Gaussian core (σ_z ≈ 2.3 σ_xy) plus a broad halo (8 % of
  the energy, 4× wider), i.e. an Airy-like long tail rather than a pure Gaussian;
- **background**: grey-ish low-frequency autofluorescence with a channel tilt, granular texture,
  small autofluorescent blobs;
- **noise**: photon counts with Poisson statistics, multiplied by a Gamma-distributed gain
  (PMT/EM excess noise), then an ADC gain, offset and Gaussian read noise; 12-bit range in uint16;
- **hard level**: thinner neurites, more and deeper gaps, dim neurons, similar colours, lower
  photon counts, stronger background, and unlabelled clutter (unlabelled whole neurons, short
  neurite fragments, autofluorescent blobs): scored as *partly labelled*.

:func:`render` returns a :class:`HeldoutNeuronVolume` in FISBe's instance format: ``raw`` uint16
(3, Z, Y, X) and ``gt_instances`` uint8 (N, Z, Y, X), channel i holding {0, i+1}. Deterministic by
seed. A 48×160×160 volume took 3.3-6.7 s on the shared 2-core machine (load average 8-24).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

#: FISBe's voxel size (µm, isotropic).
VOXEL_SIZE = (0.44, 0.44, 0.44)
LEVELS = ("standard", "hard")
#: The smallest labelled neuron (voxels inside the volume); smaller ones are not kept. Above the
#: FISBe evaluator's 800-voxel removal of small predicted ids with a margin.
MIN_NEURON_VOXELS = 1500


@dataclass(frozen=True)
class Level:
    n_neurons: tuple[int, int]  # labelled neurons (inclusive range)
    n_unlabelled: tuple[int, int]  # unlabelled whole neurons (clutter)
    n_fragments: tuple[int, int]  # unlabelled short neurite pieces (clutter)
    n_blobs: tuple[int, int]  # autofluorescent blobs
    radius0: tuple[float, float]  # trunk radius at the soma side (voxels)
    radius_floor: float
    branch_length: float  # mean arc length between branch points
    gap_rate: float  # dim segments per 100 voxels of arc
    gap_depth: tuple[float, float]  # intensity factor inside a gap
    dim_fraction: float  # fraction of neurons drawn dim
    dim_factor: tuple[float, float]
    similar: float  # probability that a neuron copies an earlier neuron's colour (with jitter)
    photons: float  # photons at the centre of a unit-brightness neurite
    background: float  # autofluorescence, fraction of the neurite signal
    depth_attenuation: float  # 1/e depth in Z (voxels)


LEVEL_SETTINGS = {
    "standard": Level(
        n_neurons=(6, 9), n_unlabelled=(0, 0), n_fragments=(0, 0), n_blobs=(4, 10),
        radius0=(1.3, 2.1), radius_floor=1.0, branch_length=70.0, gap_rate=0.3, gap_depth=(0.25, 0.5),
        dim_fraction=0.0, dim_factor=(1.0, 1.0), similar=0.0, photons=50.0, background=0.05,
        depth_attenuation=110.0),
    "hard": Level(
        n_neurons=(8, 11), n_unlabelled=(2, 3), n_fragments=(10, 20), n_blobs=(20, 40),
        radius0=(0.95, 1.35), radius_floor=0.9, branch_length=50.0, gap_rate=1.0, gap_depth=(0.04, 0.25),
        dim_fraction=0.3, dim_factor=(0.25, 0.45), similar=0.4, photons=30.0, background=0.08,
        depth_attenuation=60.0),
}


@dataclass
class HeldoutNeuronVolume:
    """One volume: ``raw`` uint16 (3,Z,Y,X), ``gt_instances`` uint8 (N,Z,Y,X) (channel i holds
    {0, i+1}; neurons may overlap), ``partly_labelled`` (score with ``partly=True``)."""

    raw: np.ndarray
    gt_instances: np.ndarray
    partly_labelled: bool
    level: str
    seed: int
    dim_ids: list[int] = field(default_factory=list)
    voxel_size: tuple[float, float, float] = VOXEL_SIZE

    @property
    def n_neurons(self) -> int:
        return int(self.gt_instances.shape[0])


# ------------------------------------------------------------------------------------- shape
def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _perpendicular(d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return _unit(v - np.dot(v, d) * d)


def _walk(start, direction, length, rng, shape, step=0.6, margin=6.0):
    """A smooth walk in angle space: the in-plane heading turns at a rate that is an
    Ornstein-Uhlenbeck process (curvature drifts slowly, so neurites curve like splines instead of
    jittering), and the elevation out of the XY plane is an OU process pulled back towards 0
    (neurons in a thin slab run mostly in-plane). Stops outside the volume (plus margin)."""
    from scipy.signal import lfilter

    n = max(int(length / step), 2)
    d0 = _unit(np.asarray(direction, float))
    phi0 = np.arctan2(d0[1], d0[2])
    th0 = np.arcsin(np.clip(d0[0], -1, 1))
    rate = lfilter([0.004], [1, -0.97], rng.normal(size=n))  # turning rate (rad per step)
    phi = phi0 + np.cumsum(rate)
    th = th0 * 0.995 ** np.arange(n) + lfilter([0.02], [1, -0.97], rng.normal(size=n))
    th = np.clip(th, -1.2, 1.2)
    d = np.stack([np.sin(th), np.cos(th) * np.sin(phi), np.cos(th) * np.cos(phi)], 1)
    pts = np.asarray(start, float) + step * np.concatenate([np.zeros((1, 3)), np.cumsum(d[:-1], 0)])
    out = np.any((pts < -margin) | (pts > np.asarray(shape, float) - 1 + margin), axis=1)
    if out.any():
        pts = pts[: max(int(np.argmax(out)), 1)]
    return pts


@dataclass
class _Branch:
    pts: np.ndarray  # (n, 3) centreline samples
    radius: np.ndarray  # (n,)
    bright: np.ndarray  # (n,) relative brightness


def _arc(pts: np.ndarray) -> np.ndarray:
    if len(pts) < 2:
        return np.zeros(len(pts))
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])


def _modulation(s: np.ndarray, lv: Level, rng, gaps: bool = True) -> np.ndarray:
    """Smooth log-normal brightness along the arc times dim segments (gaps)."""
    if len(s) == 0:
        return np.zeros(0)
    L = float(s[-1]) + 1e-6
    n_knots = int(L / 12) + 2
    knots = np.linspace(0, L, n_knots)
    logb = np.interp(s, knots, rng.normal(0, 0.25, n_knots))
    b = np.exp(logb)
    if gaps:
        n_gaps = rng.poisson(lv.gap_rate * L / 100.0)
        for _ in range(n_gaps):
            c = rng.uniform(0, L)
            half = rng.uniform(1.5, 5.0)
            depth = rng.uniform(*lv.gap_depth)
            x = np.clip((np.abs(s - c) - half) / 1.0, 0, None)  # flat bottom, 1-voxel soft edges
            b *= 1 - (1 - depth) * np.exp(-x**2)
    return b


def _radius_profile(s: np.ndarray, r0: float, floor: float, rng, taper: float) -> np.ndarray:
    r = floor + max(r0 - floor, 0.0) * np.exp(-s / taper)
    if len(s):  # varicosities
        L = float(s[-1])
        for c in rng.uniform(0, L, rng.poisson(L / 18.0 + 0.1)):
            r = r + rng.uniform(0.25, 0.7) * r * np.exp(-0.5 * ((s - c) / 1.2) ** 2)
    return r


def _neuron_tree(shape, lv: Level, rng, *, length=None, max_depth=3, r0=None, soma=True,
                 start=None, direction=None):
    """Centreline branches of one neuron (list of _Branch) plus an optional soma (centre, radius)."""
    shape_a = np.asarray(shape, float)
    if start is None:
        # soma inside the volume or up to 12 voxels outside it (its neurites enter the field of view)
        start = np.array([rng.uniform(0, shape_a[0] - 1),
                          rng.uniform(-12, shape_a[1] + 11), rng.uniform(-12, shape_a[2] + 11)])
    if direction is None:
        target = rng.uniform(0.15, 0.85, 3) * (shape_a - 1)
        direction = _unit(target - start + rng.normal(0, 8, 3) * np.array([0.3, 1, 1]))
    if r0 is None:
        r0 = rng.uniform(*lv.radius0)
    if length is None:
        length = rng.uniform(150, 350)
    branches: list[_Branch] = []
    stack = [(np.asarray(start, float), np.asarray(direction, float), r0, length, 0)]
    while stack and len(branches) < 40:
        p0, d0, rb, lb, depth = stack.pop()
        pts = _walk(p0, d0, lb, rng, shape)
        s = _arc(pts)
        rad = _radius_profile(s, rb, lv.radius_floor, rng, taper=rng.uniform(80, 200))
        branches.append(_Branch(pts, rad, _modulation(s, lv, rng)))
        if depth >= max_depth or len(pts) < 8:
            continue
        # branch points: a Poisson process along the arc
        n_b = rng.poisson(s[-1] / lv.branch_length)
        for sb in np.sort(rng.uniform(0.05 * s[-1], 0.9 * s[-1], n_b)):
            i = int(np.searchsorted(s, sb))
            i = min(i, len(pts) - 2)
            d = _unit(pts[i + 1] - pts[i])
            ang = np.deg2rad(rng.uniform(25, 75))
            dc = _unit(np.cos(ang) * d + np.sin(ang) * _perpendicular(d, rng) * np.array([0.4, 1, 1]))
            rc = max(lv.radius_floor, rad[i] * rng.uniform(0.6, 0.85))
            stack.append((pts[i], dc, rc, rng.uniform(30, 140) * (0.8 ** depth), depth + 1))
    som = None
    if soma:
        som = (np.asarray(start, float), rng.uniform(3.0, 5.5))
    return branches, som


# ----------------------------------------------------------------------------------- render
#: Padding (voxels) of the splatting volume: centreline samples may lie a little outside.
_PAD = 24


def _splat(shape, pts, radius, bright, qmin_flat, inten_flat, chunk=2000):
    """Soft-edged tube around centreline samples: per voxel the smallest normalised distance
    q = |x - p| / r(p) over the samples (→ mask q <= 1) and the largest b(p)·profile(q).
    ``qmin_flat``/``inten_flat`` are flat views of volumes padded by ``_PAD`` on every side."""
    if len(pts) == 0:
        return
    _, Yp, Xp = (s + 2 * _PAD for s in shape)
    reach = np.minimum(np.ceil(1.6 * radius + 0.5).astype(int), _PAD - 8)
    base = np.rint(pts).astype(np.int64)
    inside = np.all((base >= -(_PAD - 8)) & (base < np.asarray(shape) + _PAD - 8), axis=1)
    for k in np.unique(reach[inside]):
        sel = np.flatnonzero((reach == k) & inside)
        g = np.arange(-k, k + 1)
        off = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)
        off_flat = ((off[:, 0] * Yp + off[:, 1]) * Xp + off[:, 2]).astype(np.int64)
        for a in range(0, len(sel), chunk):
            idx = sel[a:a + chunk]
            b = base[idx]
            frac = (pts[idx] - b).astype(np.float32)
            d2 = ((off[None] - frac[:, None, :]) ** 2).sum(-1)
            q2 = d2 / (radius[idx, None].astype(np.float32) ** 2)
            ok = q2 < 2.56
            bp = b + _PAD
            flat = ((bp[:, 0] * Yp + bp[:, 1]) * Xp + bp[:, 2])[:, None] + off_flat[None]
            f = flat[ok]
            q = np.sqrt(q2[ok])
            np.minimum.at(qmin_flat, f, q)
            prof = 1.0 / (1.0 + np.exp((q - 1.0) / 0.12))
            np.maximum.at(inten_flat, f, np.broadcast_to(bright[idx, None], q2.shape)[ok].astype(np.float32) * prof)


def _render_object(shape, branches, soma):
    """(qmin, intensity) volumes (float32) of one neuron/fragment."""
    padded = tuple(s + 2 * _PAD for s in shape)
    n = int(np.prod(padded))
    qmin = np.full(n, np.inf, np.float32)
    inten = np.zeros(n, np.float32)
    pts = [b.pts for b in branches]
    rad = [b.radius for b in branches]
    bri = [b.bright for b in branches]
    if soma is not None:
        pts.append(soma[0][None])
        rad.append(np.array([soma[1]]))
        bri.append(np.array([1.2]))
    if pts:
        _splat(shape, np.concatenate(pts), np.concatenate(rad), np.concatenate(bri), qmin, inten)
    crop = tuple(slice(_PAD, _PAD + s) for s in shape)
    return qmin.reshape(padded)[crop], inten.reshape(padded)[crop]


def _estimated_voxels(shape, branches) -> float:
    """Tube volume inside the volume (centreline length × cross-section), before rendering."""
    hi = np.asarray(shape) - 0.5
    total = 0.0
    for b in branches:
        if len(b.pts) < 2:
            continue
        inside = np.all((b.pts >= -0.5) & (b.pts < hi), axis=1)[1:]
        seg = np.linalg.norm(np.diff(b.pts, axis=0), axis=1)
        total += float((seg * np.pi * b.radius[1:] ** 2)[inside].sum())
    return total


def _mcfo_colour(rng) -> np.ndarray:
    while True:
        present = rng.random(3) < 0.55
        if present.any():
            break
    return present * np.exp(rng.normal(0, 0.5, 3))


def _psf(vol: np.ndarray, sigma_xy: float) -> np.ndarray:
    core = np.array([2.3 * sigma_xy, sigma_xy, sigma_xy])
    return 0.92 * ndi.gaussian_filter(vol, core) + 0.08 * ndi.gaussian_filter(vol, 4 * core)


def render(shape=(48, 160, 160), level: str = "standard", seed: int = 0) -> HeldoutNeuronVolume:
    """One FISBe-like volume of ``shape`` (Z, Y, X) voxels at ``level`` ('standard' or 'hard')."""
    if level not in LEVEL_SETTINGS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
    lv = LEVEL_SETTINGS[level]
    shape = tuple(int(s) for s in shape)
    rng = np.random.default_rng([int(seed), LEVELS.index(level), 20260]) 
    signal = np.zeros((3,) + shape, np.float32)
    masks: list[np.ndarray] = []
    dim_ids: list[int] = []
    # colours: MCFO draws; at the hard level some neurons repeat an earlier colour (jittered)
    # (pairs: a colour is repeated at most once, so similar colours come in pairs)
    fresh: list[np.ndarray] = []

    def colour():
        if fresh and rng.random() < lv.similar:
            c = fresh.pop(int(rng.integers(len(fresh)))) + np.abs(rng.normal(0, 0.06, 3))
        else:
            c = _mcfo_colour(rng)
            fresh.append(c)
        return c / max(float(c.max()), 1e-6)

    n_target = int(rng.integers(lv.n_neurons[0], lv.n_neurons[1] + 1))
    tries = 0
    while len(masks) < n_target and tries < 4 * n_target:
        tries += 1
        branches, soma = _neuron_tree(shape, lv, rng)
        qmin, inten = _render_object(shape, branches, soma)
        m = qmin <= 1.0
        if int(m.sum()) < MIN_NEURON_VOXELS:
            continue
        b = float(np.exp(rng.normal(0, 0.3)))
        if rng.random() < lv.dim_fraction:
            b *= rng.uniform(*lv.dim_factor)
            dim_ids.append(len(masks) + 1)
        signal += (b * colour())[:, None, None, None].astype(np.float32) * inten
        masks.append(m)
    # unlabelled clutter: whole neurons, short neurite fragments
    for _ in range(int(rng.integers(lv.n_unlabelled[0], lv.n_unlabelled[1] + 1))):
        branches, soma = _neuron_tree(shape, lv, rng)
        _, inten = _render_object(shape, branches, soma)
        signal += (float(np.exp(rng.normal(0, 0.3))) * colour())[:, None, None, None].astype(np.float32) * inten
    for _ in range(int(rng.integers(lv.n_fragments[0], lv.n_fragments[1] + 1))):
        st = rng.uniform(0, 1, 3) * (np.asarray(shape) - 1)
        d = _unit(rng.normal(size=3) * np.array([0.3, 1, 1]))
        branches, _ = _neuron_tree(shape, lv, rng, length=rng.uniform(8, 30), max_depth=0,
                                   r0=rng.uniform(0.9, 1.5), soma=False, start=st, direction=d)
        _, inten = _render_object(shape, branches, None)
        c = _mcfo_colour(rng)
        signal += (rng.uniform(0.3, 1.0) * c / c.max())[:, None, None, None].astype(np.float32) * inten
    # autofluorescent blobs: yellow-grey, all channels
    n_bl = int(rng.integers(lv.n_blobs[0], lv.n_blobs[1] + 1))
    if n_bl:
        blob = np.zeros(shape, np.float32)
        pos = (rng.uniform(0, 1, (n_bl, 3)) * (np.asarray(shape) - 1))
        br = _Branch(pos, rng.uniform(1.2, 3.0, n_bl), rng.uniform(0.15, 0.5, n_bl))
        _, blob = _render_object(shape, [br], None)
        tint = np.array([1.0, 0.85, 0.45]) * rng.uniform(0.8, 1.2, 3)
        signal += tint[:, None, None, None].astype(np.float32) * blob
    # spectral bleed-through into the neighbouring channel
    mix = np.eye(3)
    for i in range(3):
        mix[(i + 1) % 3, i] = rng.uniform(0.02, 0.10)
    signal = np.einsum("ij,j...->i...", mix.astype(np.float32), signal)
    # background autofluorescence: low-frequency field with a channel tilt, granular texture
    low = ndi.gaussian_filter(rng.normal(size=shape).astype(np.float32), (6, 20, 20))
    low = (low - low.min()) / (np.ptp(low) + 1e-9)
    grain = ndi.gaussian_filter(rng.gamma(2.0, 0.5, size=shape).astype(np.float32), 0.8)
    bg = lv.background * (0.5 + low) * (0.8 + 0.4 * grain)
    tilt = np.array([1.0, 0.75, 0.55]) * rng.uniform(0.8, 1.2, 3)
    signal += tilt[:, None, None, None].astype(np.float32) * bg[None]
    # optics, depth attenuation
    sxy = rng.uniform(0.6, 0.85)
    signal = np.stack([_psf(c, sxy) for c in signal])
    z = np.arange(shape[0], dtype=np.float32)
    signal *= np.exp(-z / lv.depth_attenuation)[None, :, None, None]
    # noise: Poisson photons × Gamma excess gain, ADC gain + offset + read noise, 12 bit
    photons = rng.poisson(np.clip(signal, 0, None) * lv.photons * rng.uniform(0.8, 1.25, 3)[:, None, None, None])
    k = 3.0
    counts = photons * rng.gamma(k, 1.0 / k, size=photons.shape)
    adc = rng.uniform(6.0, 10.0)
    img = counts * adc + rng.uniform(8, 25, 3)[:, None, None, None] + rng.normal(0, 3.0, photons.shape)
    raw = np.clip(np.rint(img), 0, 4095).astype(np.uint16)
    n = len(masks)
    gt = np.zeros((n,) + shape, np.uint8)
    for i, m in enumerate(masks):
        gt[i][m] = i + 1
    return HeldoutNeuronVolume(raw=raw, gt_instances=gt, partly_labelled=(level == "hard"), level=level,
                               seed=int(seed), dim_ids=dim_ids)
