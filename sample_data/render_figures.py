"""Render the max-projection figures of docs/synth.md (matplotlib, no display needed).

    python sample_data/render_figures.py   # writes docs/images/synth_*.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "images"


def _rgb(raw: np.ndarray, axis: int, gain: float | None = None) -> np.ndarray:
    """Max projection of a (3,Z,Y,X) volume along a spatial axis as an RGB image in [0, 1]."""
    proj = raw.astype(np.float32).max(axis=axis + 1)
    gain = gain or float(np.percentile(proj, 99.7))
    return np.clip(np.moveaxis(proj, 0, -1) / gain, 0, 1)


def _labels_rgb(labels: np.ndarray) -> np.ndarray:
    """Max projection of an instance label volume with a fixed random colour per id."""
    lab = labels.max(0)
    rng = np.random.default_rng(1)
    lut = np.concatenate([[[0.0, 0.0, 0.0]], rng.uniform(0.25, 1.0, size=(int(lab.max()) + 1, 3))])
    return lut[lab]


def neurons_figure(hard: bool, path: Path, seed: int = 0) -> None:
    import matplotlib.pyplot as plt

    from napari_neuroseg.synth import make_neurons

    v = make_neurons(hard=hard, seed=seed)
    fig, ax = plt.subplots(1, 3, figsize=(15, 5.4))
    ax[0].imshow(_rgb(v.raw, 0))
    ax[0].set_title(f"raw, max projection along Z ({'hard' if hard else 'standard'}, seed {seed})")
    ax[1].imshow(_labels_rgb(v.labels), interpolation="nearest")
    ax[1].set_title(f"ground truth: {v.n_neurons} neurons, {int((v.overlap > 1).sum())} overlap voxels")
    if hard:
        clutter = v.clutter & ~(v.gt_instances > 0).any(0)
        ax[2].imshow(_rgb(v.raw, 0) * 0.35)
        ax[2].imshow(np.ma.masked_where(~clutter.max(0), clutter.max(0)), cmap="autumn", alpha=0.9)
        pairs = ", ".join(f"{a}&{b}" for a, b in v.same_colour_pairs)
        ax[2].set_title(f"unlabelled clutter (orange); same-colour pairs {pairs}")
    else:
        ax[2].imshow(_rgb(v.raw, 1), aspect="auto")
        ax[2].set_title("raw, max projection along Y (Z vertical)")
    for a in ax:
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def nuclei_figure(path: Path, seed: int = 0) -> None:
    import matplotlib.pyplot as plt

    from napari_neuroseg.synth import make_nuclei, stardist_nuclei_3d

    img, lab = make_nuclei(seed=seed)
    sd, sd_mask = stardist_nuclei_3d()
    z = img.shape[0] // 2
    fig, ax = plt.subplots(2, 3, figsize=(14, 9), gridspec_kw={"height_ratios": [1, 1]})
    lo, hi = np.percentile(img, [1, 99.8])
    ax[0, 0].imshow(img[z], cmap="gray", vmin=lo, vmax=hi)
    ax[0, 0].set_title(f"synthetic nuclei, slice z={z} (64x128x128, seed {seed})")
    ax[0, 1].imshow(img[:, img.shape[1] // 2], cmap="gray", vmin=lo, vmax=hi, aspect=2.0)
    ax[0, 1].set_title("XZ slice (voxels 2:1:1, shown at physical aspect)")
    ax[0, 2].imshow(_labels_rgb(lab[z : z + 1]), interpolation="nearest")
    ax[0, 2].set_title(f"labels, slice z={z} ({int(lab.max())} nuclei)")
    slo, shi = np.percentile(sd, [1, 99.8])
    ax[1, 0].imshow(sd[sd.shape[0] // 2], cmap="gray", vmin=slo, vmax=shi)
    ax[1, 0].set_title("stardist test_image_nuclei_3d, middle slice")
    ax[1, 1].imshow(sd[:, sd.shape[1] // 2], cmap="gray", vmin=slo, vmax=shi, aspect=2.0)
    ax[1, 1].set_title("its XZ slice")
    ax[1, 2].imshow(img[z, :61, :57], cmap="gray", vmin=lo, vmax=hi)
    ax[1, 2].set_title("synthetic, crop of the same size as stardist's")
    for a in ax.ravel():
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main() -> int:
    import matplotlib

    matplotlib.use("Agg")
    OUT.mkdir(parents=True, exist_ok=True)
    neurons_figure(False, OUT / "synth_neurons_standard.png")
    neurons_figure(True, OUT / "synth_neurons_hard.png")
    nuclei_figure(OUT / "synth_nuclei.png")
    for p in sorted(OUT.glob("synth_*.png")):
        print(p, f"{p.stat().st_size / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
