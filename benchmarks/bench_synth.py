"""Speed of the synthetic data generators against their targets.

Targets: a 48×160×160 neuron volume in < 5 s, a 64×128×128 nuclei volume in < 3 s (2 cores).
As a machine-speed baseline measured in the same run, it times one Gaussian blur of the same
number of voxels (scipy.ndimage, sigma 1) and reports each generator in units of that blur.

    python benchmarks/bench_synth.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy import ndimage as ndi

from napari_neuroseg.synth import make_neurons, make_nuclei


def _best(fn, repeat: int) -> tuple[float, float]:
    """Best wall and CPU seconds over ``repeat`` runs."""
    walls, cpus = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    make_neurons((16, 32, 32), seed=0)  # warm imports
    make_nuclei((16, 32, 32), seed=0)
    results = {}
    cases = [
        ("neurons_standard", (3, 48, 160, 160), lambda: make_neurons((48, 160, 160), seed=1), 5.0),
        ("neurons_hard", (3, 48, 160, 160), lambda: make_neurons((48, 160, 160), seed=1, hard=True), 5.0),
        ("nuclei", (64, 128, 128), lambda: make_nuclei((64, 128, 128), seed=1), 3.0),
    ]
    for name, vox_shape, fn, target in cases:
        vol = np.random.default_rng(0).random(vox_shape, dtype=np.float32)
        base_wall, _ = _best(lambda: ndi.gaussian_filter(vol, 1.0), args.repeat)
        wall, cpu = _best(fn, args.repeat)
        results[name] = {
            "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3),
            "target_s": target,
            "wall_vs_target": round(wall / target, 3),
            "baseline_blur_s": round(base_wall, 4),
            "wall_in_blurs": round(wall / base_wall, 1),
        }
        print(f"{name:18s} {wall:6.2f} s wall ({cpu:5.2f} s CPU)  target {target:.0f} s  "
              f"ratio {wall / target:.2f}  = {wall / base_wall:.0f}x one Gaussian blur of the volume")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
