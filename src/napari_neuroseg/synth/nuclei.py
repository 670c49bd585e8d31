"""Synthetic 3D nuclei: densely packed, touching, star-convex blobs in an anisotropic stack.

Nuclei are placed in *physical* space (voxel size = ``anisotropy``, e.g. (2, 1, 1): Z voxels are
twice as large), so in voxel space they come out squashed along Z like in a real anisotropic
stack. Each nucleus is a randomly rotated ellipsoid whose radius is modulated by a few smooth
bumps over the sphere (star-convex, the shape class StarDist models). Where two nuclei compete
for a voxel it goes to the one whose normalised (shape-aware) distance is smaller, so touching
nuclei share a natural boundary and never overlap.

The image is modelled on ``stardist.data.test_image_nuclei_3d()``: a bright but low-contrast
background (about 160 counts), nuclei about 30-40% brighter with a chromatin-like texture and
varied brightness, a PSF blur, smooth uneven illumination and mostly shot noise (std about 13
counts). Values are camera-like counts in a float32 array; normalise by percentiles as usual.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..errors import NeurosegError
from ._curves import check_shape
from ._fields import blur, camera_noise, illumination_field, smooth_field

Range = tuple[float, float]


@dataclass(frozen=True)
class NucleiSettings:
    """All knobs of :func:`make_nuclei` (lengths in physical units = X/Y voxels)."""

    radius: Range = (6.5, 10.0)  # mean semi-axis of a nucleus (physical units)
    elongation: Range = (0.7, 1.0)  # ratio of the two shorter semi-axes to the longest
    irregularity: float = 0.08  # amplitude of the star-convex radius bumps
    n_bumps: int = 5
    packing: float = 0.8  # minimum centre distance as a fraction of the sum of the radii
    fill: float = 0.38  # target fraction of the volume inside nuclei (when n_nuclei is None)
    min_voxels: int = 30  # smaller fragments (e.g. cut by the border) are dropped
    # image
    background: float = 160.0
    background_variation: float = 0.08  # relative smooth variation of the background
    contrast: float = 75.0  # nucleus minus background (counts) at brightness 1
    brightness_sigma: float = 0.25  # log-normal spread of the nuclei's brightness
    texture: float = 0.15  # relative chromatin texture inside nuclei
    texture_scale: float = 1.0  # its correlation length (physical units)
    dome: float = 0.0  # brightness falls from the centre to the rim by this fraction (1 - dome·d², d = 0 … 1)
    psf_sigma: tuple[float, float, float] = (1.0, 1.2, 1.2)  # ZYX voxels
    illumination_strength: float = 0.12
    gain: float = 0.7  # counts per photon (shot noise)
    read_noise: float = 6.0

    def replace(self, **changes) -> "NucleiSettings":
        """A copy with some fields changed; unknown names raise :class:`NeurosegError`."""
        names = {f.name for f in dataclasses.fields(self)}
        bad = sorted(set(changes) - names)
        if bad:
            raise NeurosegError(
                f"unknown nuclei setting(s) {bad}", fix=f"use fields of NucleiSettings: {sorted(names)}"
            )
        return dataclasses.replace(self, **changes)

    def randomized(self, rng: np.random.Generator, strength: float = 0.25) -> "NucleiSettings":
        """A random variation for training: each continuous knob scaled by a factor in
        ``[1 - strength, 1 + strength]`` (``packing`` and ``fill`` kept below 1)."""
        changes = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float):
                changes[f.name] = v * float(rng.uniform(1 - strength, 1 + strength))
            elif isinstance(v, tuple) and all(isinstance(x, float) for x in v):
                k = float(rng.uniform(1 - strength, 1 + strength))
                changes[f.name] = tuple(x * k for x in v)
        out = dataclasses.replace(self, **changes)
        return dataclasses.replace(
            out,
            packing=min(0.95, out.packing),
            fill=min(0.6, out.fill),
            dome=min(0.9, out.dome),
            elongation=tuple(min(1.0, x) for x in out.elongation),
        )


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def _place(rng, phys_extent, s: NucleiSettings, n_target: int | None):
    """Dart throwing in physical space: (centres (K,3), radii (K,))."""
    phys_extent = np.asarray(phys_extent, dtype=float)
    vol = float(np.prod(phys_extent))
    centres: list[np.ndarray] = []
    radii: list[float] = []
    filled = 0.0
    C = np.zeros((0, 3))
    R = np.zeros(0)
    misses = 0
    max_misses = 400
    while misses < max_misses:
        if n_target is not None and len(centres) >= n_target:
            break
        if n_target is None and filled >= s.fill * vol:
            break
        r = float(rng.uniform(*s.radius))
        # centres may lie a little outside so that border nuclei are cut like in real stacks
        c = rng.uniform(-0.3 * r, phys_extent + 0.3 * r)
        if len(R):
            d = np.sqrt(((C - c) ** 2).sum(1))
            if np.any(d < s.packing * (R + r)):
                misses += 1
                continue
        misses = 0
        centres.append(c)
        radii.append(r)
        C = np.asarray(centres)
        R = np.asarray(radii)
        filled += 4.0 / 3.0 * np.pi * r**3 * np.mean(s.elongation) ** 2
    return np.asarray(centres).reshape(-1, 3), np.asarray(radii)


def make_nuclei(
    shape: tuple[int, int, int] = (64, 128, 128),
    *,
    n_nuclei: int | None = None,
    anisotropy: tuple[float, float, float] = (2, 1, 1),
    seed: int = 0,
    settings: NucleiSettings | None = None,
    **kw,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate an anisotropic 3D nuclei image and its instance labels.

    Args:
        shape: (Z, Y, X) voxels.
        n_nuclei: number of nuclei to place (default: fill ``settings.fill`` of the volume).
            Fewer may result when they do not fit or fragments at the border are dropped.
        anisotropy: physical voxel size (Z, Y, X) in units of the smallest; (2, 1, 1) squashes
            nuclei by 2 along Z in voxel space.
        seed: random seed; equal arguments give identical outputs.
        settings: a full :class:`NucleiSettings`; ``**kw`` override single fields.

    Returns:
        ``(image float32 ZYX, labels int32 ZYX)`` with labels 1..K (0 = background), touching
        but not overlapping.
    """
    shape = check_shape(shape, minimum=8)
    try:
        aniso = np.asarray([float(a) for a in anisotropy], dtype=float)
    except Exception as exc:  # noqa: BLE001
        raise NeurosegError(f"anisotropy {anisotropy!r} is not 3 numbers", fix="pass e.g. (2, 1, 1)") from exc
    if aniso.shape != (3,) or np.any(aniso <= 0):
        raise NeurosegError(f"anisotropy {anisotropy!r} must be 3 positive numbers", fix="pass e.g. (2, 1, 1)")
    if n_nuclei is not None and int(n_nuclei) < 0:
        raise NeurosegError(f"n_nuclei={n_nuclei} is negative", fix="pass a count >= 0 or None")
    s = settings if settings is not None else NucleiSettings()
    if kw:
        s = s.replace(**kw)
    if not 0.0 <= s.dome < 1.0:
        raise NeurosegError(f"dome={s.dome} is outside [0, 1)", fix="pass a fraction such as 0.4")
    rng = np.random.default_rng(seed)

    shp = np.asarray(shape)
    centres, radii = _place(rng, shp * aniso, s, None if n_nuclei is None else int(n_nuclei))

    best = np.full(shape, np.inf, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.int32)
    for k, (c, r) in enumerate(zip(centres, radii), start=1):
        axes = r * np.concatenate([[1.0], rng.uniform(*s.elongation, size=2)])
        axes = axes / np.cbrt(np.prod(axes) / r**3)  # keep the volume of a sphere of radius r
        rot = _random_rotation(rng)
        bump_dirs = rng.normal(size=(s.n_bumps, 3))
        bump_dirs /= np.linalg.norm(bump_dirs, axis=1, keepdims=True)
        bump_amp = rng.normal(0.0, s.irregularity, size=s.n_bumps)
        bump_w = rng.uniform(0.15, 0.4, size=s.n_bumps)
        r_max_rel = 1.0 + np.abs(bump_amp).sum()  # the radius function never exceeds this
        reach = axes.max() * r_max_rel + 1.0
        cv = c / aniso  # centre in voxels
        half = np.ceil(reach / aniso).astype(int)
        lo = np.maximum(np.floor(cv).astype(int) - half, 0)
        hi = np.minimum(np.floor(cv).astype(int) + half + 2, shp)
        if np.any(hi <= lo):
            continue
        # physical offsets of the box's voxels, rotated into the nucleus frame (separably)
        offs = [(np.arange(a, b, dtype=np.float32) * f - cc) for a, b, f, cc in zip(lo, hi, aniso, c)]
        rot32 = rot.astype(np.float32)
        q = [
            offs[0][:, None, None] * rot32[0, j] + offs[1][None, :, None] * rot32[1, j]
            + offs[2][None, None, :] * rot32[2, j]
            for j in range(3)
        ]
        d2 = (q[0] / axes[0]) ** 2 + (q[1] / axes[1]) ** 2 + (q[2] / axes[2]) ** 2
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        # only voxels that the bumps could bring inside need the star-convex radius
        cand = np.flatnonzero(d2.ravel() < r_max_rel**2)
        if cand.size == 0:
            continue
        qc = np.stack([qj.ravel()[cand] for qj in q], 1)
        rho = np.sqrt((qc**2).sum(1)) + 1e-6
        cosang = (qc @ bump_dirs.T.astype(np.float32)) / rho[:, None]
        R = 1.0 + (bump_amp * np.exp(-(1.0 - cosang) / bump_w)).sum(1)
        d = np.sqrt(d2.ravel()[cand]) / np.maximum(R, 0.6)
        cur = best[sl].ravel()[cand]
        ok = (d < 1.0) & (d < cur)
        if not ok.any():
            continue
        win = np.zeros(d2.size, dtype=bool)
        win[cand[ok]] = True
        win = win.reshape(d2.shape)
        dfull = np.zeros(d2.size, dtype=np.float32)
        dfull[cand[ok]] = d[ok]
        d = dfull.reshape(d2.shape)
        best[sl][win] = d[win]
        labels[sl][win] = k

    # drop fragments and relabel 1..K (each label kept as its largest connected piece)
    if labels.max() > 0:
        labels = _clean_labels(labels, s.min_voxels)

    # image formation
    n_lab = int(labels.max())
    bright = np.exp(rng.normal(0.0, s.brightness_sigma, size=n_lab + 1)).astype(np.float32)
    bright[0] = 0.0
    signal = bright[labels]
    if s.dome:  # a thicker centre is brighter: a smooth dome instead of a flat top
        signal *= np.where(labels > 0, 1.0 - np.float32(s.dome) * best**2, 0.0).astype(np.float32)
    tex_sigma = np.maximum(s.texture_scale / aniso, 0.3)
    tex = ndi.gaussian_filter(rng.normal(size=shape).astype(np.float32), tex_sigma)
    tex /= max(float(tex.std()), 1e-6)
    signal *= 1.0 + s.texture * tex
    signal = blur(signal, s.psf_sigma) * np.float32(s.contrast)
    illum = illumination_field(rng, shape, strength=s.illumination_strength, depth_attenuation=0.0)
    bg = s.background * smooth_field(rng, shape, cells=3, amplitude=s.background_variation)
    clean = (bg + signal) * illum
    image = camera_noise(rng, clean, gain=s.gain, offset=0.0, read_noise=s.read_noise)
    return image.astype(np.float32), labels.astype(np.int32)


def _clean_labels(labels: np.ndarray, min_voxels: int) -> np.ndarray:
    """Keep the largest connected piece of each label, drop pieces < ``min_voxels``, relabel."""
    import cc3d
    import fastremap

    cc = cc3d.connected_components(labels, connectivity=6)
    n_cc = int(cc.max())
    if n_cc == 0:
        return labels
    sizes = np.bincount(cc.ravel(), minlength=n_cc + 1)
    # the owning label of each component
    owner = np.zeros(n_cc + 1, dtype=np.int64)
    owner[cc.ravel()] = labels.ravel()
    best_cc: dict[int, int] = {}
    for comp in range(1, n_cc + 1):
        lab = int(owner[comp])
        if lab and (lab not in best_cc or sizes[comp] > sizes[best_cc[lab]]):
            best_cc[lab] = comp
    keep = np.zeros(n_cc + 1, dtype=np.int32)
    for lab, comp in best_cc.items():
        if sizes[comp] >= min_voxels:
            keep[comp] = lab
    out = keep[cc]
    out, _ = fastremap.renumber(out, in_place=True)
    return out.astype(np.int32)
