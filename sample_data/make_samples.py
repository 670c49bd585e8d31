"""Regenerate the committed sample volumes (reproducible: fixed seeds, see ``SAMPLES``).

    python sample_data/make_samples.py            # writes into src/napari_neuroseg/synth/data/
    python sample_data/make_samples.py --out DIR  # writes copies somewhere else

The recipes (shape, seed, settings) live in ``napari_neuroseg.synth.samples.SAMPLES``; the
outputs are written atomically (a temporary file/folder renamed onto the target).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "napari_neuroseg" / "synth" / "data"


def write_nuclei(out: Path) -> list[Path]:
    import tifffile

    from napari_neuroseg.io import atomic_output
    from napari_neuroseg.synth import make_nuclei
    from napari_neuroseg.synth.samples import SAMPLES

    r = SAMPLES["nuclei"]
    image, labels = make_nuclei(r["shape"], seed=r["seed"], anisotropy=r["anisotropy"])
    # camera-like counts: stored as uint16 (rounded), loaded back as float32
    img16 = np.clip(np.rint(image), 0, 65535).astype(np.uint16)
    lab16 = labels.astype(np.uint16)
    spacing = float(r["anisotropy"][0]) / float(r["anisotropy"][2])
    paths = []
    for name, data in zip(r["files"], (img16, lab16)):
        target = out / name
        with atomic_output(target) as tmp:
            tifffile.imwrite(
                tmp,
                data,
                imagej=True,
                metadata={"axes": "ZYX", "spacing": spacing, "unit": "pixel"},
                compression="zlib",
                compressionargs={"level": 9},
                predictor=name.endswith("image.tif"),
            )
        paths.append(target)
    return paths


def write_neurons(out: Path) -> list[Path]:
    import numcodecs
    import zarr

    from napari_neuroseg.io import atomic_output
    from napari_neuroseg.synth import make_neurons
    from napari_neuroseg.synth.samples import SAMPLES

    r = SAMPLES["neurons"]
    vol = make_neurons(r["shape"], seed=r["seed"], hard=r["hard"])
    comp = numcodecs.Blosc(cname="zstd", clevel=9, shuffle=numcodecs.Blosc.BITSHUFFLE)
    target = out / r["files"][0]
    with atomic_output(target) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        root.attrs["synth"] = {
            "generator": "napari_neuroseg.synth.make_neurons",
            "shape": list(r["shape"]),
            "seed": int(r["seed"]),
            "hard": bool(r["hard"]),
            "colours": np.round(vol.colours, 4).tolist(),
            "same_colour_pairs": [list(p) for p in vol.same_colour_pairs],
        }
        volumes = root.create_group("volumes")
        raw = volumes.create_array(
            "raw", shape=vol.raw.shape, dtype=vol.raw.dtype, chunks=(1, *vol.raw.shape[1:]), compressor=comp
        )
        raw[:] = vol.raw
        gt = volumes.create_array(
            "gt_instances",
            shape=vol.gt_instances.shape,
            dtype=vol.gt_instances.dtype,
            chunks=(1, *vol.gt_instances.shape[1:]),
            compressor=comp,
        )
        gt[:] = vol.gt_instances
        gt.attrs["dim_neurons"] = [int(d) for d in vol.dim_neurons]
    return [target]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    p.add_argument("--only", choices=["nuclei", "neurons"], help="regenerate one sample only")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if args.only in (None, "nuclei"):
        written += write_nuclei(args.out)
    if args.only in (None, "neurons"):
        written += write_neurons(args.out)
    total = 0
    for w in written:
        size = sum(f.stat().st_size for f in w.rglob("*") if f.is_file()) if w.is_dir() else w.stat().st_size
        total += size
        print(f"{w}  {size / 1e6:.2f} MB")
    print(f"total {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
