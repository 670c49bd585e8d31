"""An independent generator of 3D nuclei volumes for held-out evaluation only.

Written separately from ``napari_neuroseg.synth`` (it imports nothing from it) and never used
for training, validation, threshold choice or tuning. It differs on purpose:

- geometry in micrometres, rendered at any voxel size (anisotropy follows from it);
- nuclei are plain ellipsoids (no star-convex bumps) with uniformly random 3D rotations, semi-axis
  ratios 0.65-1, diameters log-uniform over ×0.5 … ×2 of ``diameter_um``, packed so that
  neighbours touch (centres may come as close as 0.8 × the sum of the radii; a voxel claimed by two
  ellipsoids goes to the one whose surface is relatively farther: a flat contact face);
- optics: an anisotropic Gaussian PSF given in µm (σ_z = 3 × σ_xy by default), a nucleus profile
  brightest at the rim (nuclear envelope/peripheral heterochromatin) with a few bright chromatin
  foci inside, a linear background gradient plus a large-scale haze;
- noise: Poisson shot noise on photon counts, then Gaussian read noise and an offset, uint16.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class HeldoutNuclei:
    """Knobs (lengths in µm)."""

    diameter_um: float = 4.0
    size_range: tuple[float, float] = (0.5, 2.0)  # × diameter_um, log-uniform
    axis_ratio: tuple[float, float] = (0.65, 1.0)
    touch: float = 0.8  # min centre distance / (r1 + r2)
    fill: float = 0.3  # target fraction of the volume inside nuclei
    psf_sigma_xy_um: float = 0.12
    psf_z_factor: float = 3.0
    photons: float = 60.0  # mean photons per voxel of a nucleus at brightness 1
    background_photons: float = 12.0
    gradient: float = 0.6  # background changes by this fraction across the volume
    rim: float = 0.35  # extra brightness at the rim (fraction)
    n_foci: tuple[int, int] = (2, 6)
    read_noise: float = 3.0
    offset: float = 100.0


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
    ])


def render(shape, voxel_size, seed: int = 0, settings: HeldoutNuclei | None = None):
    """``(image uint16 (Z, Y, X), labels int32)`` of touching, rotated ellipsoidal nuclei in a
    volume of ``shape`` voxels of ``voxel_size`` (Z, Y, X) µm."""
    s = settings or HeldoutNuclei()
    rng = np.random.default_rng(seed)
    vs = np.asarray(voxel_size, float)
    shape = tuple(int(v) for v in shape)
    extent = np.asarray(shape) * vs
    # ---- placement (physical units); centres may lie a little outside the volume
    target = s.fill * np.prod(extent)
    centres, radii, axes_l, rots = [], [], [], []
    filled, tries = 0.0, 0
    while filled < target and tries < 20000:
        tries += 1
        d = s.diameter_um * np.exp(rng.uniform(np.log(s.size_range[0]), np.log(s.size_range[1])))
        r = d / 2
        c = rng.uniform(-0.3 * r, extent + 0.3 * r)
        if centres:
            dist = np.linalg.norm(np.asarray(centres) - c, axis=1)
            if np.any(dist < s.touch * (np.asarray(radii) + r)):
                continue
        ratios = np.sort(rng.uniform(*s.axis_ratio, size=3))[::-1]
        ratios[0] = 1.0
        ax = r * ratios / np.cbrt(np.prod(ratios))  # same volume as the sphere of radius r
        centres.append(c)
        radii.append(r)
        axes_l.append(ax)
        rots.append(_rotation(rng))
        filled += 4 / 3 * np.pi * r**3
    # ---- rasterise: for each voxel the ellipsoid of smallest normalised radius (< 1)
    labels = np.zeros(shape, np.int32)
    best = np.full(shape, np.inf, np.float32)
    rel = np.zeros(shape, np.float32)  # normalised radius of the owner (0 centre .. 1 rim)
    for i, (c, ax, rot) in enumerate(zip(centres, axes_l, rots), start=1):
        reach = ax.max()
        lo = np.maximum(np.floor((c - reach) / vs).astype(int), 0)
        hi = np.minimum(np.ceil((c + reach) / vs).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        grids = np.meshgrid(*[(np.arange(a, b) + 0.5) * v - cc for a, b, v, cc in zip(lo, hi, vs, c)], indexing="ij")
        p = np.stack(grids, -1) @ rot  # coordinates in the ellipsoid's frame
        q = np.sqrt(((p / ax) ** 2).sum(-1)).astype(np.float32)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        win = (q < 1.0) & (q < best[sl])
        labels[sl][win] = i
        best[sl][win] = q[win]
        rel[sl][win] = q[win]
    # drop tiny border fragments, renumber 1..n
    ids, counts = np.unique(labels, return_counts=True)
    small = ids[(ids > 0) & (counts < 0.05 * (s.diameter_um * 0.5 / vs[1]) ** 3)]
    labels[np.isin(labels, small)] = 0
    uniq = np.unique(labels)
    lut = np.zeros(int(labels.max()) + 1, np.int32)
    lut[uniq] = np.arange(len(uniq))
    labels = lut[labels]
    # ---- intensity: rim-bright nuclei with chromatin foci
    n = int(labels.max())
    bright = np.exp(rng.normal(0, 0.3, n + 1)).astype(np.float32)
    bright[0] = 0
    obj = bright[labels] * (1.0 + s.rim * rel**4)
    obj[labels == 0] = 0
    foci = np.zeros(shape, np.float32)
    fg = np.argwhere(labels > 0)
    if len(fg):
        k = int(rng.integers(*s.n_foci) * max(n, 1))
        pick = fg[rng.integers(0, len(fg), size=k)]
        foci[tuple(pick.T)] = 1.0
        foci = ndi.gaussian_filter(foci, 0.25 / vs) * (0.8 * (2 * np.pi) ** 1.5 * np.prod(0.25 / vs))
    obj = obj + foci * (labels > 0)
    sig = np.array([s.psf_sigma_xy_um * s.psf_z_factor, s.psf_sigma_xy_um, s.psf_sigma_xy_um]) / vs
    obj = ndi.gaussian_filter(obj, sig)
    zz, yy, xx = np.meshgrid(*[np.linspace(0, 1, n_) for n_ in shape], indexing="ij")
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    ramp = (direction[0] * zz + direction[1] * yy + direction[2] * xx)
    ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-9)
    haze = ndi.gaussian_filter(rng.normal(size=shape).astype(np.float32), np.asarray(shape) / 4)
    haze = haze / (np.abs(haze).max() + 1e-9)
    bg = s.background_photons * (1 - s.gradient / 2 + s.gradient * ramp) * (1 + 0.2 * haze)
    photons = rng.poisson(np.maximum(bg + s.photons * obj, 0)).astype(np.float32)
    img = photons * 2.0 + s.offset + rng.normal(0, s.read_noise, shape)
    return np.clip(img, 0, 65535).astype(np.uint16), labels
