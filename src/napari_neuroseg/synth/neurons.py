"""FISBe-like synthetic multicolour (MCFO) neuron volumes.

Each neuron is a branching tree of thin tubes (radius 1-3 voxels) grown by persistent random
walks: a long trunk crossing much of the volume, side branches and sub-branches, some aimed at
other neurons so that neurons touch and cross (the ground truth keeps both instances in the
voxels they share). Each neuron gets a random colour mix over 3 channels (some pure, some
mixtures), a brightness (a few are dim), intensity variation and gaps along its neurites. The
raw volume adds background autofluorescence, a PSF blur, a smooth multiplicative illumination
field, and Poisson + Gaussian camera noise, then is stored as uint16 like the FISBe raw.

``hard=True`` adds same-colour neighbours (pairs of neurons with nearly identical colour running
close together), unlabelled clutter (bright neurites and blobs present in the raw but not in the
ground truth, as in FISBe's partly labelled samples), more and longer gaps, more dim neurons and
a lower signal-to-noise ratio.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same arguments give the same
volume bit for bit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import NeurosegError
from ._curves import (
    Segment,
    _unit,
    check_shape,
    persistent_walk,
    random_direction,
    rasterize_tubes,
    smooth_noise_1d,
)
from ._fields import blur, camera_noise, illumination_field, smooth_field, to_uint16, wide_draws

Range = tuple[float, float]


@dataclass(frozen=True)
class NeuronSettings:
    """All knobs of :func:`make_neurons`. Lengths in voxels unless said otherwise; ``(lo, hi)``
    tuples are uniform ranges drawn per volume/neuron/branch.

    Use :meth:`standard` / :meth:`hard` for the two presets, ``dataclasses.replace`` or keyword
    arguments of :func:`make_neurons` to change single values, and :meth:`randomized` to draw a
    variation for training.
    """

    # --- population -------------------------------------------------------------------------
    n_neurons: tuple[int, int] = (4, 7)
    # --- geometry ---------------------------------------------------------------------------
    trunk_length: Range = (1.0, 1.6)  # in multiples of max(Y, X)
    n_branches: tuple[int, int] = (3, 7)
    branch_length: Range = (0.15, 0.45)  # in multiples of max(Y, X)
    sub_branch_prob: float = 0.4  # chance that a branch carries a sub-branch
    radius_trunk: Range = (1.3, 2.2)
    radius_branch: Range = (1.0, 1.6)
    radius_max: float = 3.0
    radius_variation: float = 0.12  # relative smooth variation of the radius along a neurite
    bouton_rate: float = 0.015  # varicosities per voxel of length (radius bumps, raw and GT)
    tortuosity: float = 0.03  # random turning per step (radians, correlated)
    branch_tortuosity: float = 2.0  # branches turn this many times more than the trunk
    z_flatten: float = 0.45  # damping of Z in directions (neurons lie more in YX)
    touch_prob: float = 0.35  # fraction of branches steered towards another neuron
    # --- colour (MCFO) ----------------------------------------------------------------------
    pure_colour_prob: float = 0.35  # neurons in exactly one channel
    two_channel_prob: float = 0.35  # mixtures of two channels (rest: of three)
    min_colour_angle: float = 22.0  # degrees between colours of different neurons (best effort)
    crosstalk: float = 0.03  # floor of every channel (bleed-through)
    # --- brightness and gaps ----------------------------------------------------------------
    brightness: float = 800.0  # counts of an unblurred unit-intensity neurite
    brightness_sigma: float = 0.3  # log-normal spread between neurons
    dim_prob: float = 0.15  # chance that a neuron is dim (listed in dim_neurons)
    dim_factor: Range = (0.15, 0.35)  # brightness multiplier of dim neurons
    intensity_variation: float = 0.25  # smooth relative variation along neurites
    texture: float = 0.45  # punctate/varicose texture: log-std of a fine multiplicative field
    texture_scale: float = 1.0  # its correlation length (voxels)
    gap_rate: float = 0.008  # intensity gaps per voxel of neurite length
    gap_length: Range = (2.0, 6.0)
    gap_depth: Range = (0.0, 0.2)  # remaining intensity inside a gap
    # --- hard-mode structure ----------------------------------------------------------------
    same_colour_pairs: int = 0  # pairs of neighbouring neurons with nearly the same colour
    same_colour_angle: float = 4.0  # max degrees between the colours of such a pair
    same_colour_distance: Range = (4.0, 9.0)  # start distance of the partner's trunk
    n_clutter_neurites: tuple[int, int] = (0, 0)  # unlabelled neurites (raw only)
    clutter_length: Range = (0.08, 0.25)  # in multiples of max(Y, X)
    n_clutter_blobs: tuple[int, int] = (0, 0)  # unlabelled blobs (raw only)
    clutter_blob_radius: Range = (1.5, 3.5)
    clutter_brightness: Range = (0.4, 1.0)  # relative to the neurons' brightness
    # --- optics and camera ------------------------------------------------------------------
    psf_sigma: tuple[float, float, float] = (1.5, 0.6, 0.6)  # ZYX Gaussian PSF
    illumination_strength: float = 0.25  # log-std of the smooth illumination field
    depth_attenuation: float = 0.25  # signal lost from top to bottom slice
    background: tuple[float, float, float] = (4.0, 3.0, 6.0)  # autofluorescence per channel
    background_texture: float = 0.6  # relative variation of the autofluorescence
    gain: float = 3.0  # counts per photon (shot-noise scale)
    offset: float = 2.0  # camera offset
    read_noise: float = 2.0  # Gaussian read noise std (counts)
    # --- wide domain randomisation (neutral defaults: the presets above are unchanged) -------
    radius_min: float = 1.0  # smallest neurite radius (below 1: one-voxel-thin neurites)
    channel_mixing: float = 0.0  # max bleed of each channel into the others (colour mixing)
    gradient: float = 0.0  # linear illumination ramp (relative) along a random direction
    haze: float = 0.0  # out-of-focus haze: a wide blur of the signal, relative to the signal
    haze_sigma: float = 6.0  # its Gaussian sigma (voxels)
    gamma: float = 1.0  # detector/display non-linearity applied to the noisy counts
    acquisition_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)  # ZYX acquisition pixel / voxel

    @classmethod
    def standard(cls) -> "NeuronSettings":
        """The default, completely labelled look."""
        return cls()

    @classmethod
    def hard(cls) -> "NeuronSettings":
        """Same-colour neighbours, unlabelled clutter, more gaps, lower SNR."""
        return cls(
            n_neurons=(5, 8),
            dim_prob=0.3,
            gap_rate=0.02,
            gap_length=(2.0, 10.0),
            intensity_variation=0.35,
            texture=0.6,
            same_colour_pairs=2,
            n_clutter_neurites=(3, 6),
            n_clutter_blobs=(4, 10),
            brightness=500.0,
            gain=6.0,
            read_noise=4.0,
            background=(8.0, 6.0, 12.0),
            illumination_strength=0.35,
            depth_attenuation=0.35,
        )

    def replace(self, **changes) -> "NeuronSettings":
        """A copy with some fields changed; unknown names raise :class:`NeurosegError`."""
        names = {f.name for f in dataclasses.fields(self)}
        bad = sorted(set(changes) - names)
        if bad:
            raise NeurosegError(
                f"unknown neuron setting(s) {bad}",
                fix=f"use fields of NeuronSettings: {sorted(names)}",
            )
        return dataclasses.replace(self, **changes)

    def randomized(self, rng: np.random.Generator, strength: float = 0.25) -> "NeuronSettings":
        """A random variation for training: every continuous knob is scaled by a factor in
        ``[1 - strength, 1 + strength]`` (probabilities clipped to [0, 1]); counts stay."""
        changes = {}
        for f in dataclasses.fields(self):
            if f.name in _WIDE_FIELDS:  # neutral unless randomized_wide sets them
                continue
            v = getattr(self, f.name)
            if isinstance(v, bool) or isinstance(v, int) or (
                isinstance(v, tuple) and v and all(isinstance(x, int) for x in v)
            ):
                continue
            fac = lambda: float(rng.uniform(1 - strength, 1 + strength))  # noqa: E731
            if isinstance(v, float):
                nv = v * fac()
                if f.name.endswith("_prob"):
                    nv = min(1.0, max(0.0, nv))
                changes[f.name] = nv
            elif isinstance(v, tuple):
                k = fac()
                changes[f.name] = tuple(float(x) * k for x in v)
        out = dataclasses.replace(self, **changes)
        lo, hi = out.radius_trunk
        rmax = out.radius_max
        return dataclasses.replace(
            out,
            radius_trunk=(max(1.0, min(lo, rmax)), max(1.0, min(hi, rmax))),
            radius_branch=tuple(max(1.0, min(x, rmax)) for x in out.radius_branch),
            radius_max=max(1.0, min(3.0, rmax)),
            gap_depth=tuple(min(1.0, x) for x in out.gap_depth),
        )

    def randomized_wide(self, rng: np.random.Generator, size: Range = (0.5, 3.0)) -> "NeuronSettings":
        """A wide domain-randomised variant for training (issue 12, ``docs/synth.md``): every
        volume draws its own optics (Gaussian PSF per axis, haze), camera (Poisson gain, read
        noise, offset, gamma), brightness and background levels, uneven illumination (smooth
        field, depth attenuation, linear ramp), neurite texture, dim neurons, gaps, neurite
        thickness (radius × log-uniform ``size`` factor, one-voxel-thin neurites below ×1),
        clutter, colour similarity (smaller colour angles, same-colour pairs, crosstalk, channel
        bleed-through) and an acquisition grid of anisotropy 1-4 that is resampled back."""
        k, logu, maybe = wide_draws(rng, size)
        rmax = max(1.0, 3.0 * k)
        rmin = min(1.0, 1.0 * k)
        brightness = logu(150.0, 3000.0)
        bg_level = logu(1.0, 80.0)
        n_lo = int(rng.integers(2, 7))
        sxy = float(rng.uniform(0.3, 1.6))
        aniso = maybe(0.6, lambda: logu(1.0, 4.0), 1.0)
        pix = maybe(0.4, lambda: logu(0.8, 1.5), 1.0)
        return dataclasses.replace(
            self,
            n_neurons=(n_lo, n_lo + int(rng.integers(0, 5))),
            trunk_length=(float(rng.uniform(0.6, 1.1)), float(rng.uniform(1.2, 1.8))),
            n_branches=(int(rng.integers(1, 5)), int(rng.integers(5, 10))),
            sub_branch_prob=float(rng.uniform(0.2, 0.7)),
            radius_trunk=(max(rmin, 1.3 * k), min(rmax, max(rmin, 2.2 * k))),
            radius_branch=(max(rmin, 1.0 * k), min(rmax, max(rmin, 1.6 * k))),
            radius_max=rmax,
            radius_min=rmin,
            radius_variation=float(rng.uniform(0.05, 0.3)),
            bouton_rate=float(rng.uniform(0.0, 0.04)),
            tortuosity=float(rng.uniform(0.015, 0.06)),
            z_flatten=float(rng.uniform(0.25, 1.0)),
            touch_prob=float(rng.uniform(0.2, 0.6)),
            pure_colour_prob=float(rng.uniform(0.1, 0.5)),
            two_channel_prob=float(rng.uniform(0.2, 0.5)),
            min_colour_angle=float(rng.uniform(6.0, 25.0)),
            crosstalk=logu(0.01, 0.25),
            channel_mixing=maybe(0.5, lambda: float(rng.uniform(0.0, 0.3)), 0.0),
            brightness=brightness,
            brightness_sigma=float(rng.uniform(0.1, 0.6)),
            dim_prob=float(rng.uniform(0.0, 0.45)),
            dim_factor=(float(rng.uniform(0.08, 0.2)), float(rng.uniform(0.25, 0.5))),
            intensity_variation=float(rng.uniform(0.1, 0.5)),
            texture=float(rng.uniform(0.0, 0.9)),
            texture_scale=float(rng.uniform(0.5, 2.0)),
            gap_rate=logu(0.002, 0.03),
            gap_length=(2.0, float(rng.uniform(4.0, 14.0))),
            gap_depth=(0.0, float(rng.uniform(0.1, 0.5))),
            same_colour_pairs=int(rng.integers(0, 4)),
            same_colour_angle=float(rng.uniform(2.0, 8.0)),
            n_clutter_neurites=maybe(0.6, lambda: (0, int(rng.integers(1, 9))), (0, 0)),
            n_clutter_blobs=maybe(0.6, lambda: (0, int(rng.integers(1, 13))), (0, 0)),
            clutter_brightness=(float(rng.uniform(0.1, 0.5)), float(rng.uniform(0.6, 1.2))),
            psf_sigma=(float(rng.uniform(0.5, 4.0)), sxy, sxy * float(rng.uniform(0.85, 1.15))),
            haze=maybe(0.4, lambda: float(rng.uniform(0.0, 0.4)), 0.0),
            haze_sigma=float(rng.uniform(3.0, 10.0)),
            illumination_strength=float(rng.uniform(0.0, 0.5)),
            depth_attenuation=float(rng.uniform(0.0, 0.6)),
            gradient=maybe(0.5, lambda: float(rng.uniform(0.0, 0.8)), 0.0),
            background=tuple(bg_level * float(x) for x in rng.uniform(0.3, 1.5, size=3)),
            background_texture=float(rng.uniform(0.1, 0.9)),
            gain=logu(0.5, 15.0),
            offset=maybe(0.5, lambda: float(rng.uniform(0.0, 300.0)), 2.0),
            read_noise=logu(0.5, 20.0),
            gamma=maybe(0.5, lambda: logu(0.6, 1.6), 1.0),
            acquisition_scale=(aniso * pix, pix, pix),
        )


_WIDE_FIELDS = frozenset({
    "radius_min", "channel_mixing", "gradient", "haze", "haze_sigma", "gamma", "acquisition_scale",
})


@dataclass
class NeuronVolume:
    """A synthetic FISBe sample.

    ``raw`` uint16 (3,Z,Y,X); ``gt_instances`` uint8 (N,Z,Y,X), channel i holds {0, i+1};
    ``dim_neurons`` 1-based ids of dim neurons; ``labels`` uint32 ZYX (in overlaps the lower id
    wins). Extras: ``colours`` (N,3) relative channel weights, ``same_colour_pairs`` 1-based id
    pairs, ``clutter`` bool ZYX mask of the unlabelled clutter (raw only), ``settings``, ``seed``.
    """

    raw: np.ndarray
    gt_instances: np.ndarray
    dim_neurons: list[int]
    labels: np.ndarray
    colours: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    same_colour_pairs: list[tuple[int, int]] = field(default_factory=list)
    clutter: np.ndarray | None = None
    settings: NeuronSettings = field(default_factory=NeuronSettings)
    seed: int = 0

    @classmethod
    def from_instances(cls, raw: np.ndarray, gt_instances: np.ndarray, dim_neurons: list[int],
                       **extras: Any) -> NeuronVolume:
        """A sample whose ``labels`` are ``gt_instances`` flattened (``io.instances_to_labels``:
        in overlaps the lower id wins); ``extras``: the other fields."""
        from napari_neuroseg.io import instances_to_labels

        labels, _ = instances_to_labels(gt_instances)
        return cls(raw=raw, gt_instances=gt_instances, dim_neurons=dim_neurons, labels=labels, **extras)

    @property
    def n_neurons(self) -> int:
        return int(self.gt_instances.shape[0])

    @property
    def overlap(self) -> np.ndarray:
        """Number of instances per voxel (uint8 ZYX)."""
        return (self.gt_instances > 0).sum(0, dtype=np.uint8)

    @property
    def partly_labelled(self) -> bool:
        """True when the raw shows unlabelled structures (evaluate with ``partly=True``)."""
        return self.clutter is not None and bool(self.clutter.any())


# ---------------------------------------------------------------------------------------------
# colours


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    c = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def _draw_colour(rng: np.random.Generator, s: NeuronSettings) -> np.ndarray:
    u = rng.random()
    col = np.zeros(3)
    if u < s.pure_colour_prob:
        col[rng.integers(3)] = 1.0
    elif u < s.pure_colour_prob + s.two_channel_prob:
        ch = rng.choice(3, size=2, replace=False)
        col[ch] = rng.uniform(0.25, 1.0, size=2)
    else:
        col[:] = rng.uniform(0.2, 1.0, size=3)
    col = col / col.max()
    return np.maximum(col, s.crosstalk)


def _draw_colours(rng: np.random.Generator, n: int, s: NeuronSettings) -> np.ndarray:
    cols: list[np.ndarray] = []
    for _ in range(n):
        best, best_score = None, -1.0
        for _try in range(60):
            c = _draw_colour(rng, s)
            score = min((_angle(c, o) for o in cols), default=180.0)
            if score >= s.min_colour_angle:
                best = c
                break
            if score > best_score:
                best, best_score = c, score
        cols.append(best)
    return np.asarray(cols, dtype=np.float64).reshape(n, 3)


def _near_colour(rng: np.random.Generator, col: np.ndarray, max_angle: float, floor: float) -> np.ndarray:
    for _ in range(100):
        c = np.maximum(col * np.exp(rng.normal(0, 0.03, size=3)), floor)
        c = c / c.max()
        if _angle(c, col) <= max_angle:
            return c
    return col.copy()


# ---------------------------------------------------------------------------------------------
# geometry


def _same_colour_pairs(rng: np.random.Generator, colours: np.ndarray, s: NeuronSettings) -> dict[int, int]:
    """Draw ``s.same_colour_pairs`` disjoint pairs (a, b), a < b, of neuron indices; b's colour
    (in ``colours``, changed in place) becomes one near a's. Returns ``{b: a}`` in drawing order."""
    partner_of: dict[int, int] = {}
    free = list(range(len(colours)))
    for _ in range(s.same_colour_pairs):
        if len(free) < 2:
            break
        a, b = sorted(int(x) for x in rng.choice(free, size=2, replace=False))
        free.remove(a)
        free.remove(b)
        colours[b] = _near_colour(rng, colours[a], s.same_colour_angle, s.crosstalk)
        partner_of[b] = a
    return partner_of


def _profiles(rng: np.random.Generator, n: int, r0: float, s: NeuronSettings, intensity_scale: float = 1.0):
    """Radius and raw-intensity profiles along a neurite of ``n`` points (step 0.5 voxels)."""
    rad = r0 * (1.0 + smooth_noise_1d(rng, n, corr=24, amplitude=s.radius_variation))
    # boutons: local radius bumps
    n_b = rng.poisson(s.bouton_rate * n * 0.5)
    if n_b:
        pos = rng.integers(0, n, size=n_b)
        amp = rng.uniform(0.4, 1.0, size=n_b)
        t = np.arange(n)
        for p, a in zip(pos, amp):
            rad += a * np.exp(-0.5 * ((t - p) / 3.0) ** 2)
    rad = np.clip(rad, s.radius_min, s.radius_max)
    inten = np.clip(1.0 + smooth_noise_1d(rng, n, corr=30, amplitude=s.intensity_variation), 0.25, 2.0)
    n_g = rng.poisson(s.gap_rate * n * 0.5)
    for _ in range(n_g):
        glen = int(rng.uniform(*s.gap_length) / 0.5)
        g0 = int(rng.integers(0, max(1, n - glen)))
        inten[g0 : g0 + glen] *= rng.uniform(*s.gap_depth)
    return rad, inten * intensity_scale


def _local_direction(points: np.ndarray, i: int) -> np.ndarray:
    a = points[max(0, i - 4)]
    b = points[min(len(points) - 1, i + 4)]
    return _unit(b - a)


def _branch_direction(rng: np.random.Generator, parent_dir: np.ndarray, s: NeuronSettings) -> np.ndarray:
    perp = random_direction(rng, s.z_flatten)
    perp = perp - np.dot(perp, parent_dir) * parent_dir
    perp = _unit(perp)
    ang = np.radians(rng.uniform(30.0, 80.0))
    return _unit(np.cos(ang) * parent_dir + np.sin(ang) * perp)


def _grow_neuron(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    s: NeuronSettings,
    others: list[list[Segment]],
    partner: list[Segment] | None = None,
) -> list[Segment]:
    """One neuron: a bidirectional trunk, branches and sub-branches."""
    ext = float(max(shape[1], shape[2]))
    sh = np.asarray(shape, dtype=float)
    walk_kw = dict(tortuosity=s.tortuosity, z_flatten=s.z_flatten)
    if partner is not None:
        tp = partner[0].points
        i = int(rng.integers(len(tp) // 5, max(len(tp) // 5 + 1, 4 * len(tp) // 5)))
        d_par = _local_direction(tp, i)
        perp = random_direction(rng, s.z_flatten)
        perp = _unit(perp - np.dot(perp, d_par) * d_par)
        start = np.clip(tp[i] + perp * rng.uniform(*s.same_colour_distance), 1, sh - 2)
        direction = _unit(d_par + rng.normal(0, 0.1, size=3) * np.array([s.z_flatten, 1, 1]))
        walk_kw["tortuosity"] = s.tortuosity * 0.6
    else:
        lo = np.array([0.25, 0.15, 0.15]) * (sh - 1)
        hi = np.array([0.75, 0.85, 0.85]) * (sh - 1)
        start = rng.uniform(lo, hi)
        direction = random_direction(rng, s.z_flatten)
    length = rng.uniform(*s.trunk_length) * ext
    frac = rng.uniform(0.3, 0.7)
    fwd = persistent_walk(rng, start, direction, length * frac, shape, **walk_kw)
    bwd = persistent_walk(rng, start, -direction, length * (1 - frac), shape, **walk_kw)
    trunk = np.concatenate([bwd[::-1], fwd[1:]])
    r0 = rng.uniform(*s.radius_trunk)
    rad, inten = _profiles(rng, len(trunk), r0, s)
    segs = [Segment(trunk, rad, inten, depth=0)]

    def add_branch(parent: Segment, depth: int, length: float) -> Segment | None:
        n = len(parent.points)
        if n < 10:
            return None
        i = int(rng.integers(n // 10, max(n // 10 + 1, 9 * n // 10)))
        d0 = _branch_direction(rng, _local_direction(parent.points, i), s)
        target, attraction = None, 0.0
        if others and rng.random() < s.touch_prob:
            o = others[int(rng.integers(len(others)))]
            op = o[0].points
            target = op[int(rng.integers(len(op)))]
            attraction = 0.12
        bkw = dict(walk_kw, tortuosity=walk_kw["tortuosity"] * s.branch_tortuosity)
        pts = persistent_walk(
            rng, parent.points[i], d0, length, shape, target=target, attraction=attraction, **bkw
        )
        if len(pts) < 6:
            return None
        rb = min(float(parent.radii[i]), rng.uniform(*s.radius_branch))
        r, v = _profiles(rng, len(pts), rb, s)
        seg = Segment(pts, r, v, depth=depth)
        segs.append(seg)
        return seg

    nb = int(rng.integers(s.n_branches[0], s.n_branches[1] + 1))
    for _ in range(nb):
        b = add_branch(segs[0], 1, rng.uniform(*s.branch_length) * ext)
        if b is not None and rng.random() < s.sub_branch_prob:
            add_branch(b, 2, rng.uniform(*s.branch_length) * ext * rng.uniform(0.3, 0.6))
    return segs


def _clutter_segments(rng: np.random.Generator, shape: tuple[int, int, int], s: NeuronSettings) -> list[tuple[list[Segment], np.ndarray]]:
    """Unlabelled neurites and blobs: (segments, colour) per clutter object."""
    ext = float(max(shape[1], shape[2]))
    sh = np.asarray(shape, dtype=float)
    out = []
    n_n = int(rng.integers(s.n_clutter_neurites[0], s.n_clutter_neurites[1] + 1))
    for _ in range(n_n):
        start = rng.uniform(np.zeros(3) + 2, sh - 3)
        pts = persistent_walk(
            rng, start, random_direction(rng, s.z_flatten), rng.uniform(*s.clutter_length) * ext, shape,
            tortuosity=s.tortuosity * 1.5, z_flatten=s.z_flatten,
        )
        if len(pts) < 4:
            continue
        r, v = _profiles(rng, len(pts), rng.uniform(*s.radius_branch), s,
                         intensity_scale=rng.uniform(*s.clutter_brightness))
        out.append(([Segment(pts, r, v, depth=1)], _draw_colour(rng, s)))
    n_b = int(rng.integers(s.n_clutter_blobs[0], s.n_clutter_blobs[1] + 1))
    for _ in range(n_b):
        c = rng.uniform(np.zeros(3) + 2, sh - 3)
        rb = rng.uniform(*s.clutter_blob_radius)
        # a blob: a short, fat, wobbly run of balls
        pts = c + np.cumsum(rng.normal(0, 0.4, size=(6, 3)), axis=0)
        pts = np.clip(pts, 0, sh - 1)
        r = np.clip(rb * rng.uniform(0.8, 1.1, size=6), 1.0, 4.5)
        v = np.full(6, rng.uniform(*s.clutter_brightness))
        out.append(([Segment(pts, r, v, depth=1)], _draw_colour(rng, s)))
    return out


def _add_clutter(rng: np.random.Generator, signal: np.ndarray, shape, s: NeuronSettings) -> np.ndarray:
    """Adds unlabelled clutter to ``signal`` (3, nvox) in place; returns its bool ZYX mask."""
    clutter = np.zeros(int(np.prod(shape)), dtype=bool)
    for segs, col in _clutter_segments(rng, shape, s):
        idx, val = rasterize_tubes(segs, shape)
        clutter[idx] = True
        for c in range(3):
            signal[c, idx] += np.float32(col[c] * s.brightness) * val
    return clutter.reshape(shape)


def _render(rng: np.random.Generator, signal: np.ndarray, shape, s: NeuronSettings) -> np.ndarray:
    """Optics and camera: ``signal`` (3, nvox) float32 (changed in place) → raw uint16 (3,Z,Y,X).

    Texture, channel bleed-through, illumination (smooth field, depth attenuation, ramp), PSF
    blur, haze, background, an acquisition grid (resampled back), Poisson + read noise, gamma.
    With the neutral wide settings this draws exactly the random numbers it always drew."""
    if s.texture > 0:
        tex = blur(rng.normal(size=shape).astype(np.float32), s.texture_scale)
        tex *= np.float32(s.texture / max(float(tex.std()), 1e-6))
        signal *= np.exp(tex).reshape(1, -1)
    if s.channel_mixing > 0:
        mix = np.eye(3) + rng.uniform(0.0, s.channel_mixing, (3, 3)) * (1 - np.eye(3))
        signal[:] = (mix.astype(np.float32) @ signal)
    illum = illumination_field(rng, shape, strength=s.illumination_strength, depth_attenuation=s.depth_attenuation)
    if s.gradient > 0:
        d = rng.normal(size=3)
        d /= max(float(np.linalg.norm(d)), 1e-9)
        grids = np.meshgrid(*[np.linspace(-0.5, 0.5, n, dtype=np.float32) for n in shape], indexing="ij", sparse=True)
        ramp = sum(np.float32(d[i]) * grids[i] for i in range(3))
        illum = illum * np.exp(np.float32(np.log1p(s.gradient)) * ramp).astype(np.float32)
    acq = tuple(float(a) for a in s.acquisition_scale)
    coarse = any(abs(a - 1.0) > 1e-6 for a in acq)
    small = tuple(max(4, int(round(n / a))) for n, a in zip(shape, acq)) if coarse else shape
    chans = []
    for c in range(3):
        bg = s.background[c] * np.clip(smooth_field(rng, shape, cells=6, amplitude=s.background_texture), 0.05, None)
        sig = signal[c].reshape(shape)
        ch = blur(sig, s.psf_sigma) * illum + bg
        if s.haze > 0:
            ch += np.float32(s.haze) * blur(sig, s.haze_sigma) * illum
        if coarse:
            from skimage.transform import resize

            ch = resize(ch, small, order=1, anti_aliasing=True, preserve_range=True).astype(np.float32)
        chans.append(camera_noise(rng, ch, gain=s.gain, offset=s.offset, read_noise=s.read_noise))
    if s.gamma != 1.0:
        ref = max(float(max(np.percentile(ch, 99.9) for ch in chans)), 1.0)
        chans = [np.float32(ref) * (np.clip(ch, 0, None) / np.float32(ref)) ** np.float32(s.gamma) for ch in chans]
    raw = np.empty((3,) + tuple(shape), dtype=np.uint16)
    for c in range(3):
        ch = chans[c]
        if coarse:
            from skimage.transform import resize

            ch = resize(ch, shape, order=1, anti_aliasing=False, preserve_range=True)
        raw[c] = to_uint16(ch)
    return raw


# ---------------------------------------------------------------------------------------------
# public API


def make_neurons(
    shape: tuple[int, int, int] = (48, 160, 160),
    *,
    n_neurons: int | None = None,
    hard: bool = False,
    seed: int = 0,
    settings: NeuronSettings | None = None,
    **kw,
) -> NeuronVolume:
    """Generate a FISBe-like multicolour neuron volume.

    Args:
        shape: (Z, Y, X) voxels.
        n_neurons: number of labelled neurons (default: drawn from ``settings.n_neurons``).
        hard: use :meth:`NeuronSettings.hard` (ignored when ``settings`` is given).
        seed: random seed; equal arguments give identical volumes.
        settings: a full :class:`NeuronSettings`; ``**kw`` then override single fields.

    Returns:
        :class:`NeuronVolume` with raw uint16 (3,Z,Y,X), gt_instances uint8 (N,Z,Y,X) (channel
        i holds {0, i+1}; crossing neurons both keep shared voxels), dim_neurons, labels uint32.
    """
    shape = check_shape(shape, minimum=16)
    s = settings if settings is not None else (NeuronSettings.hard() if hard else NeuronSettings.standard())
    if kw:
        s = s.replace(**kw)
    rng = np.random.default_rng(seed)
    n = int(rng.integers(s.n_neurons[0], s.n_neurons[1] + 1)) if n_neurons is None else int(n_neurons)
    if not 1 <= n <= 255:
        raise NeurosegError(f"n_neurons={n} is out of range", fix="use 1..255 (gt_instances is uint8)")

    colours = _draw_colours(rng, n, s)
    # same-colour pairs (a, b) with a < b: b copies a's colour and grows next to a
    partner_of = _same_colour_pairs(rng, colours, s)
    pairs = [(a + 1, b + 1) for b, a in partner_of.items()]

    trees: list[list[Segment]] = [None] * n  # type: ignore[list-item]
    order = sorted(range(n), key=lambda i: (i in partner_of, i))  # partners grow after their pair
    grown: list[list[Segment]] = []
    for i in order:
        partner = trees[partner_of[i]] if i in partner_of else None
        trees[i] = _grow_neuron(rng, shape, s, grown, partner=partner)
        grown.append(trees[i])

    bright = s.brightness * np.exp(rng.normal(0, s.brightness_sigma, size=n))
    dim = rng.random(n) < s.dim_prob
    bright[dim] *= rng.uniform(*s.dim_factor, size=int(dim.sum()))
    dim_neurons = [int(i + 1) for i in np.flatnonzero(dim)]

    nvox = int(np.prod(shape))
    gt = np.zeros((n,) + shape, dtype=np.uint8)
    signal = np.zeros((3, nvox), dtype=np.float32)
    for i in range(n):
        idx, val = rasterize_tubes(trees[i], shape)
        gt[i].reshape(-1)[idx] = i + 1
        for c in range(3):
            signal[c, idx] += np.float32(colours[i, c] * bright[i]) * val

    clutter = _add_clutter(rng, signal, shape, s)
    raw = _render(rng, signal, shape, s)

    return NeuronVolume.from_instances(raw, gt, dim_neurons, colours=colours, same_colour_pairs=pairs,
                                       clutter=clutter, settings=s, seed=int(seed))


def render_neurons(
    masks: np.ndarray,
    *,
    seed: int = 0,
    settings: NeuronSettings | None = None,
    clutter: bool = True,
) -> NeuronVolume:
    """Render a FISBe-like raw volume for given neuron masks (e.g. real neuron morphology).

    Args:
        masks: (N, Z, Y, X) coverage per neuron: bool/uint8 masks or float in [0, 1] (e.g. a
            resampled mask); a voxel belongs to neuron i where ``masks[i] >= 0.5`` (> 0 for
            integer masks); float values below that still add signal (soft edges).
        seed: random seed of the appearance.
        settings: appearance knobs (:class:`NeuronSettings`; geometry fields are unused), e.g.
            ``NeuronSettings().randomized_wide(rng)``.
        clutter: add the settings' unlabelled clutter.

    Every neuron gets a colour, brightness (some dim), a smooth intensity variation and gaps
    (``gap_rate`` per voxel of neurite length, length ≈ voxels / 7); then the optics and camera
    of :func:`make_neurons`. Returns a :class:`NeuronVolume` (raw uint16, gt_instances uint8).
    """
    m = np.asarray(masks)
    if m.ndim != 4 or m.shape[0] < 1:
        raise NeurosegError(f"masks must be (N, Z, Y, X) with N >= 1, got shape {m.shape}",
                            fix="stack one mask per neuron along the first axis")
    if m.shape[0] > 255:
        raise NeurosegError(f"{m.shape[0]} neurons is too many", fix="use at most 255 (gt_instances is uint8)")
    shape = check_shape(m.shape[1:], minimum=4)
    s = settings if settings is not None else NeuronSettings.standard()
    rng = np.random.default_rng(seed)
    n = int(m.shape[0])
    if np.issubdtype(m.dtype, np.floating):
        cover = np.clip(m.astype(np.float32), 0.0, 1.0)
        inside = cover >= 0.5
    else:
        inside = m > 0
        cover = inside.astype(np.float32)
    colours = _draw_colours(rng, n, s)
    pairs = [(a + 1, b + 1) for b, a in _same_colour_pairs(rng, colours, s).items()]
    bright = s.brightness * np.exp(rng.normal(0, s.brightness_sigma, size=n))
    dim = rng.random(n) < s.dim_prob
    bright[dim] *= rng.uniform(*s.dim_factor, size=int(dim.sum()))

    nvox = int(np.prod(shape))
    signal = np.zeros((3, nvox), dtype=np.float32)
    gt = np.zeros((n,) + shape, dtype=np.uint8)
    cells = tuple(max(2, int(x) // 24) for x in shape)
    for i in range(n):
        gt[i][inside[i]] = i + 1
        val = cover[i].copy()
        val *= np.clip(smooth_field(rng, shape, cells=cells, amplitude=s.intensity_variation), 0.25, 2.0)
        pts = np.argwhere(inside[i])
        n_g = int(rng.poisson(s.gap_rate * len(pts) / 7.0)) if len(pts) else 0
        for _ in range(n_g):
            c = pts[rng.integers(len(pts))]
            r = rng.uniform(*s.gap_length) / 2.0
            lo = np.maximum(c - int(np.ceil(r)), 0)
            hi = np.minimum(c + int(np.ceil(r)) + 1, shape)
            zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            ball = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r
            val[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] *= np.where(ball, np.float32(rng.uniform(*s.gap_depth)), np.float32(1))
        flat = val.reshape(-1)
        for c in range(3):
            signal[c] += np.float32(colours[i, c] * bright[i]) * flat
    clut = _add_clutter(rng, signal, shape, s) if clutter else np.zeros(shape, dtype=bool)
    raw = _render(rng, signal, shape, s)
    labels = np.zeros(shape, dtype=np.uint32)
    for i in range(n - 1, -1, -1):
        labels[gt[i] > 0] = i + 1
    return NeuronVolume(raw=raw, gt_instances=gt, dim_neurons=[int(i + 1) for i in np.flatnonzero(dim)],
                        labels=labels, colours=colours, same_colour_pairs=pairs, clutter=clut,
                        settings=s, seed=int(seed))
