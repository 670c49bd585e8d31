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
from ._fields import blur, camera_noise, illumination_field, smooth_field, wide_draws

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
    # --- wider appearance (domain randomisation); every default is a no-op, so images made
    # without them are bit-identical to before. Their random draws come from a second generator
    # (seeded by (seed, 1)), never from the one that places and renders the nuclei.
    rim: float = 0.0  # rim-bright profile: brightness × (1 + rim · d⁴), d = 0 (centre) … 1 (boundary)
    speckle: float = 0.0  # chromatin clumps: brightness × ((1 − speckle) + speckle · blobs), blobs ≥ 0, mean 1
    speckle_scale: float = 2.0  # the clumps' size (physical units)
    foci: float = 0.0  # bright foci inside nuclei: peak height relative to the nucleus brightness
    foci_density: float = 0.004  # foci per nucleus voxel
    dim_fraction: float = 0.0  # this fraction of the nuclei is dimmed ...
    dim_level: float = 0.3  # ... to this fraction of its brightness
    haze: float = 0.0  # out-of-focus light: a wide blur of the signal added at this fraction
    gradient: float = 0.0  # linear illumination ramp in a random direction: 1 ± gradient across the volume
    offset: float = 0.0  # camera offset (counts) added before the read noise
    gamma: float = 1.0  # contrast curve on the final image (between its 0.1 and 99.9 percentiles)
    # acquisition voxel size relative to the rendered one (Z, Y, X): the clean image is sampled at
    # that grid, the camera noise is added there, and it is resampled back to the rendered grid as
    # runtime.scale.resample_image does at prediction time (so a model at its own scale learns the
    # blur, interpolation and noise texture of data from other anisotropies and pixel sizes)
    acquisition_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)

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
            if f.name in _WIDE_FIELDS:  # the domain-randomisation knobs: see randomized_wide
                continue
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


    def randomized_wide(self, rng: np.random.Generator, size: Range = (0.5, 3.0)) -> "NucleiSettings":
        """A wide domain-randomised variant for training (see ``docs/synth.md``): every volume
        draws its own optics (PSF per axis, haze), camera (Poisson gain, read noise, offset),
        illumination (smooth field, linear gradient), intensity levels and gamma, nucleus size
        (radius × log-uniform ``size`` factor), shape, brightness profile (flat, centre-bright or
        rim-bright), chromatin texture (fine texture, clumps, foci), dim nuclei and an acquisition
        grid of another anisotropy / pixel size that is resampled back."""
        k, logu, maybe = wide_draws(rng, size)
        r_lo = float(rng.uniform(0.6, 0.85))
        radius = (self.radius[1] * k * r_lo, self.radius[1] * k)
        profile = rng.choice(3, p=[0.3, 0.3, 0.4])  # flat, centre-bright, rim-bright
        sxy = float(rng.uniform(0.5, 2.5))
        background = logu(5.0, 300.0)
        return dataclasses.replace(
            self,
            radius=radius,
            elongation=(float(rng.uniform(0.55, 0.9)), 1.0),
            irregularity=float(rng.uniform(0.02, 0.15)),
            packing=float(rng.uniform(0.7, 0.95)),
            fill=float(rng.uniform(0.2, 0.5)),
            min_voxels=int(max(8, round(30 * min(1.0, k) ** 3))),
            background=background,
            background_variation=float(rng.uniform(0.0, 0.3)),
            contrast=max(logu(30.0, 1500.0), 0.4 * background),  # never hopelessly faint
            brightness_sigma=float(rng.uniform(0.1, 0.6)),
            texture=float(rng.uniform(0.0, 0.4)),
            texture_scale=float(rng.uniform(0.5, 2.5)),
            dome=float(rng.uniform(0.2, 0.7)) if profile == 1 else 0.0,
            rim=float(rng.uniform(0.5, 3.0)) if profile == 2 else 0.0,
            speckle=maybe(0.6, lambda: float(rng.uniform(0.2, 0.8)), 0.0),
            speckle_scale=float(rng.uniform(1.0, 3.0) * np.sqrt(k)),
            foci=maybe(0.4, lambda: float(rng.uniform(0.5, 3.0)), 0.0),
            foci_density=logu(0.001, 0.01),
            dim_fraction=maybe(0.5, lambda: float(rng.uniform(0.05, 0.3)), 0.0),
            dim_level=float(rng.uniform(0.15, 0.5)),
            psf_sigma=(float(rng.uniform(0.5, 5.0)), sxy, sxy * float(rng.uniform(0.85, 1.15))),
            haze=maybe(0.5, lambda: float(rng.uniform(0.0, 0.3)), 0.0),
            illumination_strength=float(rng.uniform(0.0, 0.4)),
            gradient=maybe(0.5, lambda: float(rng.uniform(0.0, 0.8)), 0.0),
            gain=logu(0.2, 8.0),
            read_noise=logu(0.5, 30.0),
            offset=maybe(0.5, lambda: float(rng.uniform(0.0, 500.0)), 0.0),
            gamma=maybe(0.5, lambda: logu(0.6, 1.6), 1.0),
            acquisition_scale=maybe(
                0.6, lambda: (logu(0.5, 2.0), *(logu(0.75, 1.5),) * 2), (1.0, 1.0, 1.0)
            ),
        )


_WIDE_FIELDS = frozenset({
    "rim", "speckle", "speckle_scale", "foci", "foci_density", "dim_fraction", "dim_level", "haze",
    "gradient", "offset", "gamma", "acquisition_scale",
})


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
    shape, aniso, s = _checked_arguments(shape, n_nuclei, anisotropy, settings, kw)
    rng = np.random.default_rng(seed)
    centres, radii = _place(rng, np.asarray(shape) * aniso, s, None if n_nuclei is None else int(n_nuclei))
    labels, best = _draw_labels(rng, shape, aniso, s, centres, radii)
    # drop fragments and relabel 1..K (each label kept as its largest connected piece)
    if labels.max() > 0:
        labels = _clean_labels(labels, s.min_voxels)
    wide = np.random.default_rng([seed, 1])  # draws of the wide options only (see NucleiSettings)
    image = _form_image(rng, wide, labels, best, aniso, s)
    return image.astype(np.float32), labels.astype(np.int32)


def _checked_arguments(shape, n_nuclei, anisotropy, settings, kw):
    """``make_nuclei``'s arguments checked: (shape, anisotropy as 3 floats, the settings with
    ``kw`` applied); a ``NeurosegError`` with a fix for bad ones."""
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
    _check_wide(s)
    return shape, aniso, s


def _draw_labels(rng, shape, aniso, s: NucleiSettings, centres, radii):
    """Every nucleus drawn in turn: (labels int32, best): where two compete, the voxel goes to
    the one it is deeper inside; ``best`` is that normalised depth (0 centre, 1 boundary)."""
    best = np.full(shape, np.inf, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.int32)
    for k, (c, r) in enumerate(zip(centres, radii), start=1):
        _draw_nucleus(rng, k, c, r, aniso, s, labels, best)
    return labels, best


def _draw_nucleus(rng, k: int, c, r: float, aniso, s: NucleiSettings, labels, best) -> None:
    """Draw nucleus ``k`` (centre ``c`` and radius ``r`` in physical units) into ``labels`` and
    ``best`` where it is deeper than what is there: an ellipsoid with random axes and rotation
    whose radius is modulated by Gaussian bumps over the sphere (star-convex)."""
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
    hi = np.minimum(np.floor(cv).astype(int) + half + 2, np.asarray(labels.shape))
    if np.any(hi <= lo):
        return
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
        return
    qc = np.stack([qj.ravel()[cand] for qj in q], 1)
    rho = np.sqrt((qc**2).sum(1)) + 1e-6
    cosang = (qc @ bump_dirs.T.astype(np.float32)) / rho[:, None]
    R = 1.0 + (bump_amp * np.exp(-(1.0 - cosang) / bump_w)).sum(1)
    d = np.sqrt(d2.ravel()[cand]) / np.maximum(R, 0.6)
    cur = best[sl].ravel()[cand]
    ok = (d < 1.0) & (d < cur)
    if not ok.any():
        return
    win = np.zeros(d2.size, dtype=bool)
    win[cand[ok]] = True
    win = win.reshape(d2.shape)
    dfull = np.zeros(d2.size, dtype=np.float32)
    dfull[cand[ok]] = d[ok]
    d = dfull.reshape(d2.shape)
    best[sl][win] = d[win]
    labels[sl][win] = k


def _form_image(rng, wide, labels, best, aniso, s: NucleiSettings) -> np.ndarray:
    """Image formation from the labels: per-nucleus brightness, dome/rim profile, texture and
    the wide options (speckle, foci, haze, gradient: drawn from ``wide``), blur, illumination,
    background and camera noise (or a resampled acquisition), gamma."""
    shape = labels.shape
    n_lab = int(labels.max())
    bright = np.exp(rng.normal(0.0, s.brightness_sigma, size=n_lab + 1)).astype(np.float32)
    bright[0] = 0.0
    if s.dim_fraction > 0 and n_lab:
        dim = wide.random(n_lab) < s.dim_fraction
        bright[1:][dim] *= np.float32(s.dim_level)
    signal = bright[labels]
    if s.dome:  # a thicker centre is brighter: a smooth dome instead of a flat top
        signal *= np.where(labels > 0, 1.0 - np.float32(s.dome) * best**2, 0.0).astype(np.float32)
    if s.rim:  # rim-bright (peripheral chromatin / lamina): brighter towards the boundary
        signal *= np.where(labels > 0, 1.0 + np.float32(s.rim) * best**4, 0.0).astype(np.float32)
    tex_sigma = np.maximum(s.texture_scale / aniso, 0.3)
    tex = ndi.gaussian_filter(rng.normal(size=shape).astype(np.float32), tex_sigma)
    tex /= max(float(tex.std()), 1e-6)
    signal *= 1.0 + s.texture * tex
    if s.speckle:  # chromatin clumps: a log-normal blob field with mean 1
        blobs = ndi.gaussian_filter(wide.normal(size=shape).astype(np.float32), np.maximum(s.speckle_scale / aniso, 0.3))
        blobs = np.exp(1.2 * blobs / max(float(blobs.std()), 1e-6))
        blobs /= np.float32(blobs.mean())
        signal *= np.float32(1.0 - s.speckle) + np.float32(s.speckle) * blobs
    if s.foci and n_lab:  # bright foci: isolated points inside nuclei, blurred to ~1 unit
        pts = (wide.random(shape) < s.foci_density) & (labels > 0)
        spots = ndi.gaussian_filter(pts.astype(np.float32), np.maximum(0.8 / aniso, 0.4))
        spots /= max(float(spots.max()), 1e-6)
        signal += np.float32(s.foci) * spots * bright[labels]
    signal = blur(signal, s.psf_sigma) * np.float32(s.contrast)
    if s.haze:  # out-of-focus light of the nuclei around
        signal += np.float32(s.haze) * blur(signal, 4.0 * float(np.mean(s.radius)) / aniso)
    illum = illumination_field(rng, shape, strength=s.illumination_strength, depth_attenuation=0.0)
    bg = s.background * smooth_field(rng, shape, cells=3, amplitude=s.background_variation)
    clean = (bg + signal) * illum
    if s.gradient:
        clean *= _gradient(wide, shape, s.gradient)
    if tuple(float(a) for a in s.acquisition_scale) == (1.0, 1.0, 1.0):
        image = camera_noise(rng, clean, gain=s.gain, offset=s.offset, read_noise=s.read_noise)
    else:
        image = _acquire_resampled(rng, clean, s)
    if s.gamma != 1.0:
        image = _apply_gamma(image, s.gamma)
    return image


def _check_wide(s: NucleiSettings) -> None:
    """The wide options' values in range, else a :class:`NeurosegError` naming the field."""
    checks = {
        "rim": (s.rim >= 0, "a value >= 0 such as 1.5"),
        "speckle": (0 <= s.speckle <= 1, "a fraction in [0, 1] such as 0.5"),
        "speckle_scale": (s.speckle_scale > 0, "a length > 0 such as 2"),
        "foci": (s.foci >= 0, "a value >= 0 such as 1"),
        "foci_density": (0 <= s.foci_density <= 1, "a fraction in [0, 1] such as 0.004"),
        "dim_fraction": (0 <= s.dim_fraction <= 1, "a fraction in [0, 1] such as 0.2"),
        "dim_level": (0 < s.dim_level <= 1, "a fraction in (0, 1] such as 0.3"),
        "haze": (s.haze >= 0, "a value >= 0 such as 0.2"),
        "gradient": (0 <= s.gradient < 1, "a fraction in [0, 1) such as 0.5"),
        "offset": (np.isfinite(s.offset), "a number of counts such as 100"),
        "gamma": (s.gamma > 0, "a value > 0 such as 0.8"),
    }
    for name, (ok, example) in checks.items():
        if not ok:
            raise NeurosegError(f"{name}={getattr(s, name)!r} is out of range", fix=f"pass {example}")
    a = s.acquisition_scale
    if len(a) != 3 or not all(0.25 <= float(v) <= 4 for v in a):
        raise NeurosegError(f"acquisition_scale={a!r} must be 3 factors in [0.25, 4]", fix="pass e.g. (2.0, 1.0, 1.0)")


def _gradient(rng: np.random.Generator, shape, strength: float) -> np.ndarray:
    """A linear multiplicative ramp 1 ± ``strength`` along a random direction (float32)."""
    direction = rng.normal(size=3)
    direction /= max(float(np.linalg.norm(direction)), 1e-9)
    axes = [np.linspace(-0.5, 0.5, n, dtype=np.float32) for n in shape]
    ramp = (axes[0][:, None, None] * direction[0] + axes[1][None, :, None] * direction[1]
            + axes[2][None, None, :] * direction[2])
    ramp /= max(float(np.abs(ramp).max()), 1e-6)
    return (1.0 + np.float32(strength) * ramp).astype(np.float32)


def _acquire_resampled(rng: np.random.Generator, clean: np.ndarray, s: NucleiSettings) -> np.ndarray:
    """Sample ``clean`` at the acquisition grid (voxels ``acquisition_scale`` times the rendered
    ones), add the camera noise there, and resample back to the rendered grid the way the model's
    input is resampled at prediction time (``runtime.scale.resample_image``)."""
    from napari_neuroseg.runtime.scale import resample_image

    from scipy import ndimage as ndi_

    shape = clean.shape
    acq = tuple(max(4, int(round(n / float(a)))) for n, a in zip(shape, s.acquisition_scale))
    # a camera integrates over its (larger or smaller) pixel: area-like sampling of the clean image
    coarse = resample_image(clean, [m / n for m, n in zip(acq, shape)])
    if coarse.shape != acq:
        coarse = ndi_.zoom(clean, [m / n for m, n in zip(acq, shape)], order=1, grid_mode=True, mode="nearest")
    noisy = camera_noise(rng, coarse, gain=s.gain, offset=s.offset, read_noise=s.read_noise)
    back = resample_image(noisy, [n / m for n, m in zip(shape, noisy.shape)])
    if back.shape != shape:
        back = ndi_.zoom(noisy, [n / m for n, m in zip(shape, noisy.shape)], order=1, grid_mode=True, mode="nearest")
    return back.astype(np.float32)


def _apply_gamma(image: np.ndarray, gamma: float) -> np.ndarray:
    """``lo + (hi − lo) · ((x − lo) / (hi − lo))^gamma`` with lo, hi the 0.1 / 99.9 percentiles."""
    lo, hi = (float(v) for v in np.percentile(image, (0.1, 99.9)))
    if hi <= lo:
        return image
    t = np.clip((image - lo) / (hi - lo), 0.0, None)
    return (lo + (hi - lo) * t ** np.float32(gamma)).astype(np.float32)


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
