"""Neuron post-processing speed (issue 14): the numba implementation
(``napari_neuroseg.models.neurons.postprocess``) against the former numpy/Python one
(``tests/neurons/postprocess_reference.py``) on the same network outputs, step by step.

The network outputs are those of the shipped model on the bundled neuron sample (3×40×128×128,
run once on the CPU and cached in ``--cache``), mirrored out to each requested shape (``np.pad``
symmetric, like ``bench_gpu.py`` mirrors the raw volume to 400×700×700). Reference and new code
run alternately in this process (``--repeats`` pairs per shape), so their ratio is measured
under the same machine load; every pair's labels are compared (bit-identical expected). Run::

    python benchmarks/bench_neuron_postprocess.py                      # 200x350x350 and 400x700x700
    python benchmarks/bench_neuron_postprocess.py --shapes 400,700,700 --new-only 400,700,700
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "neurons"))

STEPS = ("foreground", "pairs", "colour", "fragments", "candidates", "two_hop", "merge", "small_clusters", "labels")


def network_outputs(cache: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fg uint8 (Z,Y,X), affs uint8 (6,Z,Y,X), normalised image (3,Z,Y,X)) of the shipped model on
    the bundled sample; computed once (CPU, ~2 s) and cached."""
    if cache.exists():
        d = np.load(cache)
        return d["fg"], d["affs"], d["img"]
    from napari_neuroseg.models.neurons import load_model, normalize
    from napari_neuroseg.models.neurons.predict import network_outputs as run_net
    from napari_neuroseg.runtime.progress import run_to_completion
    from napari_neuroseg.synth.samples import load_sample

    model = load_model(None, "cpu")
    img = normalize(np.asarray(load_sample("neurons").raw))
    outs = run_to_completion(run_net(model, img))
    tmp = cache.with_name(cache.stem + f".tmp{os.getpid()}.npz")
    np.savez(tmp, fg=outs[0], affs=outs[1:], img=img)
    os.replace(tmp, cache)
    return outs[0], outs[1:], img


def grow(a: np.ndarray, shape, lead: int = 0) -> np.ndarray:
    """Mirror ``a`` out to ``shape`` on its last 3 axes (and crop)."""
    pads = [(0, 0)] * lead + [(0, max(0, t - s)) for s, t in zip(a.shape[lead:], shape)]
    b = np.pad(a, pads, mode="symmetric")
    return np.ascontiguousarray(b[(slice(None),) * lead + tuple(slice(0, t) for t in shape)])


def timed(fn, *args, **kw):
    timings: dict = {}
    t = time.perf_counter()
    lab = fn(*args, timings=timings, **kw)
    return lab, time.perf_counter() - t, timings


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["200,350,350", "400,700,700"])
    ap.add_argument("--new-only", nargs="*", default=[], help="shapes (Z,Y,X) run without the reference")
    ap.add_argument("--repeats", type=int, default=1, help="reference/new pairs per shape")
    ap.add_argument("--design", choices=("A", "B"), default="A", help="A: shipped defaults; B: learned affinities")
    ap.add_argument("--threads", type=int, default=None, help="threads of the new code (default: all CPUs)")
    ap.add_argument("--cache", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "neuroseg_bench_neuron_outputs.npz"))
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    from postprocess_reference import reference_instances_from_outputs

    from napari_neuroseg.models.neurons import PostprocessParams, instances_from_outputs

    params = PostprocessParams() if a.design == "A" else PostprocessParams(
        use_affinities=True, colour_threshold=0.25, merge_threshold=0.15, colour_sigma=1.0)
    fg0, affs0, img0 = network_outputs(Path(a.cache))
    new = lambda *x, **k: instances_from_outputs(*x, threads=a.threads, **k)
    # first call: numba loads its cached machine code (or compiles it on a fresh install)
    _, t_first, _ = timed(new, fg0, affs0, img0, params)
    _, t_second, _ = timed(new, fg0, affs0, img0, params)
    timed(reference_instances_from_outputs, fg0, affs0, img0, params)
    info = {"cpus": os.cpu_count(), "threads": a.threads, "design": a.design, "load_avg": os.getloadavg(),
            "sample_shape": list(fg0.shape), "first_call_s": round(t_first, 2), "second_call_s": round(t_second, 3)}
    print(json.dumps(info), flush=True)
    out: dict = {"info": info, "runs": []}
    shapes = [tuple(int(v) for v in s.split(",")) for s in a.shapes]
    new_only = {tuple(int(v) for v in s.split(",")) for s in a.new_only}
    for shape in shapes + [s for s in new_only if s not in shapes]:
        fg, img = grow(fg0, shape), grow(img0, shape, 1)
        affs = grow(affs0, shape, 1) if params.use_affinities else None
        run = {"shape": list(shape), "fg_voxels": int((fg > params.fg_threshold * 255).sum()), "pairs": []}
        for r in range(a.repeats if shape not in new_only else 1):
            lab_n, t_n, st_n = timed(new, fg, affs, img, params)
            rec = {"new_s": round(t_n, 2), "new_steps": {k: round(v, 3) for k, v in st_n.items()},
                   "labels": int(lab_n.max())}
            if shape not in new_only:
                lab_r, t_r, st_r = timed(reference_instances_from_outputs, fg, affs, img, params)
                rec.update(ref_s=round(t_r, 2), ref_steps={k: round(v, 3) for k, v in st_r.items()},
                           identical=bool(np.array_equal(lab_r, lab_n)), ratio=round(t_r / t_n, 2),
                           load_avg=os.getloadavg())
                del lab_r
            del lab_n
            run["pairs"].append(rec)
            _print_pair(shape, r, rec)
        out["runs"].append(run)
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


def _print_pair(shape, r, rec) -> None:
    name = "x".join(map(str, shape))
    if "ref_s" not in rec:
        print(f"{name} (new code only): {rec['new_s']:.2f} s, {rec['labels']} neurons; steps "
              + ", ".join(f"{k} {v:.2f}" for k, v in rec["new_steps"].items()), flush=True)
        return
    print(f"{name} pair {r}: reference {rec['ref_s']:.2f} s, new {rec['new_s']:.2f} s, ratio {rec['ratio']:.2f}x, "
          f"labels identical: {rec['identical']} ({rec['labels']} neurons), load {rec['load_avg'][0]:.1f}", flush=True)
    print(f"  {'step':<15}{'reference s':>12}{'new s':>9}{'ratio':>8}")
    for k in STEPS:
        rs, ns = rec["ref_steps"].get(k, 0.0), rec["new_steps"].get(k, 0.0)
        print(f"  {k:<15}{rs:>12.3f}{ns:>9.3f}{(rs / ns if ns > 0 else float('nan')):>8.1f}")


if __name__ == "__main__":
    raise SystemExit(main())
