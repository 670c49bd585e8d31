"""``neuroseg demo``: the main job on the bundled samples, end to end.

Segments the bundled synthetic nuclei with the shipped StarDist-3D model and the bundled
FISBe-like neuron volume with the shipped neuron model, scores both against their ground truth
(StarDist's matching F1 for nuclei, the FISBe metrics for neurons), writes the results to
``OUTDIR`` and optionally opens them in napari.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def _nuclei(outdir: Path, device: str | None) -> dict:
    from stardist.matching import matching

    from napari_neuroseg.io import write_tiff
    from napari_neuroseg.models.stardist3d import load_model
    from napari_neuroseg.synth import load_sample

    image, gt = load_sample("nuclei")
    t0 = time.perf_counter()
    model = load_model(None, device=device)
    labels, _ = model.predict_instances(image)
    seconds = time.perf_counter() - t0
    scores = {f"F1@{t}": float(matching(gt, labels, thresh=t).f1) for t in (0.3, 0.5, 0.7)}
    out = outdir / "nuclei_labels.tif"
    write_tiff(out, labels.astype("uint16" if labels.max() < 65535 else "uint32"))
    return {"n_objects": int(labels.max()), "n_gt": int(gt.max()), "seconds": seconds, **scores, "output": str(out)}


def _neurons(outdir: Path, device: str | None) -> dict:
    import fastremap

    from napari_neuroseg.io import labels_to_instances, write_fisbe
    from napari_neuroseg.metrics import evaluate
    from napari_neuroseg.models.neurons.predict import predict
    from napari_neuroseg.synth import load_sample

    sample = load_sample("neurons")
    t0 = time.perf_counter()
    pred = predict(sample.raw, device=device)
    seconds = time.perf_counter() - t0
    res = evaluate(sample.gt_instances, pred.labels)
    out = outdir / "neurons_pred.zarr"
    sequential, _ = fastremap.renumber(pred.labels, in_place=False)
    write_fisbe(out, raw=sample.raw, gt_instances=labels_to_instances(sequential))
    keys = ("avF1", "C", "S", "clDice_TP", "tp", "FS", "FM", "n_gt", "n_pred")
    return {**{k: res[k] for k in keys}, "seconds": seconds, "output": str(out)}


def run(args: argparse.Namespace) -> int:
    outdir = Path(args.output)
    outdir.mkdir(parents=True, exist_ok=True)
    print(f"napari-neuroseg demo: results go to {outdir}/")
    nuc = _nuclei(outdir, args.device)
    print(
        f"nuclei  (StarDist-3D, bundled model): {nuc['n_objects']} objects vs {nuc['n_gt']} true, "
        f"F1@0.3 {nuc['F1@0.3']:.3f}  F1@0.5 {nuc['F1@0.5']:.3f}  F1@0.7 {nuc['F1@0.7']:.3f}  "
        f"({nuc['seconds']:.1f} s) -> {nuc['output']}"
    )
    neu = _neurons(outdir, args.device)
    print(
        f"neurons (FISBe model, bundled): {neu['n_pred']} predicted vs {neu['n_gt']} true, "
        f"avF1 {neu['avF1']:.3f}  C {neu['C']:.3f}  S {neu['S']:.3f}  clDice_TP {neu['clDice_TP']:.3f}  "
        f"tp {neu['tp']:.3f}  FS {neu['FS']}  FM {neu['FM']}  ({neu['seconds']:.1f} s) -> {neu['output']}"
    )
    if args.view:
        import napari

        viewer = napari.Viewer(title="napari-neuroseg demo")
        viewer.open_sample("napari-neuroseg", "nuclei")
        viewer.open(nuc["output"], plugin="napari-neuroseg", layer_type="labels", name="nuclei (predicted)")
        viewer.open_sample("napari-neuroseg", "neurons")
        viewer.open(neu["output"], plugin="napari-neuroseg")
        napari.run()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="segment and score the bundled nuclei and neuron samples")
    p.add_argument("-o", "--output", default="neuroseg-demo", help="output folder (default: ./neuroseg-demo)")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--view", action="store_true", help="open the results in napari afterwards")
    p.set_defaults(func=run)
