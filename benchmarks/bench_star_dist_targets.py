"""StarDist-3D distance targets: ``star_dist3d_torch`` vs ``stardist``'s C++ ``star_dist3D``.

A batch of ``--batch`` synthetic nuclei label patches (default 8 × 48×96×96, 64 GoldenSpiral rays
with anisotropy (2,1,1), grid (1,2,2), as in GPU training) is turned into distance targets by
stardist's C++ (one patch after the other, as the DataLoader workers do; OpenMP threads as set
by ``OMP_NUM_THREADS``) and by ``star_dist3d_torch`` on ``--device`` (the batch at once, as
``train`` does on CUDA). Checks that both are equal bit for bit and prints best-of-``--repeat``
times and their ratio, measured in this run.

    nice -n 10 python benchmarks/bench_star_dist_targets.py [--device cuda] [--batch 8]
"""

from __future__ import annotations

import argparse
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--shape", type=int, nargs=3, default=(48, 96, 96))
    ap.add_argument("--n-rays", type=int, default=64)
    ap.add_argument("--grid", type=int, nargs=3, default=(1, 2, 2))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from stardist import Rays_GoldenSpiral
    from stardist.geometry import star_dist3D

    from napari_neuroseg.models.stardist3d.train import synthetic_dataset
    from napari_neuroseg.models.stardist3d.training.star_dist_torch import star_dist3d_torch

    torch.set_num_threads(args.threads)
    _, ys = synthetic_dataset(args.batch, tuple(args.shape), seed=1, vary=0.25)
    labels = np.stack(ys).astype(np.uint16)
    rays = Rays_GoldenSpiral(args.n_rays, anisotropy=(2, 1, 1))
    grid = tuple(args.grid)
    dev = torch.device(args.device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def best(f):
        ts, r = [], None
        for _ in range(args.repeat):
            sync()
            t = time.perf_counter()
            r = f()
            sync()
            ts.append(time.perf_counter() - t)
        return min(ts), r

    t_c, ref = best(lambda: np.stack([star_dist3D(y, rays, grid) for y in labels]))
    lbl_dev = torch.from_numpy(labels.astype(np.int32)).to(dev)
    star_dist3d_torch(lbl_dev, rays, grid)  # warm-up (kernels, ray tables)
    t_t, got = best(lambda: star_dist3d_torch(lbl_dev, rays, grid))
    n_diff = int((got.cpu().numpy() != ref).sum())
    print(f"{args.batch} patches {tuple(args.shape)}, {args.n_rays} rays, grid {grid}, "
          f"foreground {float((labels > 0).mean()):.2f}")
    print(f"stardist C++ star_dist3D: {t_c:.3f} s ({args.batch / t_c:.1f} patches/s)")
    print(f"star_dist3d_torch on {dev}: {t_t:.3f} s ({args.batch / t_t:.1f} patches/s)")
    print(f"ratio C++ / torch: {t_c / t_t:.2f}x; elements differing: {n_diff} of {ref.size}")
    return 0 if n_diff == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
