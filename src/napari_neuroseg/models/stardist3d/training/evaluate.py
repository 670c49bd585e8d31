"""Instances from network outputs without a worker process, and matching scores.

``python -m napari_neuroseg.models.stardist3d.training.evaluate MODEL`` prints F1 at IoU 0.3,
0.5 and 0.7 of a model on the ``stardist`` package's 3D test image and on unseen synthetic
volumes (the numbers of ``docs/nuclei-model-card.md``); ``--axial-blur 2 3 4`` adds the same
synthetic volumes rendered with those Z blurs (PSF sigma in Z voxels; the default is 1.0) and
``--dome 0.5`` with rims that much dimmer than the centres (``NucleiSettings.dome``; default 0).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import numpy as np

__all__ = ["instances_from_prediction", "score_instances", "evaluate_model"]


def instances_from_prediction(
    prob: np.ndarray,
    dist: np.ndarray,
    shape: tuple[int, int, int],
    *,
    rays_spec: dict,
    n_rays: int,
    grid: tuple[int, int, int],
    prob_thresh: float,
    nms_thresh: float,
    border: int = 2,
    nms: str = "neuroseg",
) -> np.ndarray:
    """Label volume from ``prob`` (Z',Y',X') and ``dist`` (Z',Y',X',R) as ``predict`` returns them
    (candidate selection with the ``border`` exclusion in grid voxels, sparse NMS with the backend
    ``nms``, rendering), in process."""
    from napari_neuroseg.models.stardist3d.postprocess import nms_and_render, select_candidates

    p, d, pts = select_candidates(
        prob, np.moveaxis(dist, -1, 0), offset=(0, 0, 0), grid=tuple(grid), prob_thresh=prob_thresh,
        border=((int(border), int(border)),) * 3, shape=tuple(shape),
    )
    labels, _ = nms_and_render(p, d, pts, rays_spec, n_rays, nms_thresh, tuple(shape), nms=nms)
    return labels


def score_instances(
    gt: Sequence[np.ndarray], pred: Sequence[np.ndarray], iou_threshs: Sequence[float] = (0.3, 0.5, 0.7)
) -> dict[str, dict[str, float]]:
    """``stardist.matching.matching_dataset`` over all volumes: per IoU threshold the ``f1``,
    ``precision``, ``recall``, ``tp``, ``fp``, ``fn`` and ``mean_matched_score``."""
    from stardist.matching import matching_dataset

    stats = matching_dataset(list(gt), list(pred), thresh=list(iou_threshs), show_progress=False, parallel=False)
    out = {}
    for t, s in zip(iou_threshs, stats):
        d = s._asdict()
        out[f"{t:g}"] = {
            k: (float(d[k]) if k not in ("tp", "fp", "fn", "n_true", "n_pred") else int(d[k]))
            for k in ("f1", "precision", "recall", "accuracy", "tp", "fp", "fn", "n_true", "n_pred", "mean_matched_score")
        }
    return out


def evaluate_model(model, images, labels, *, iou_threshs=(0.3, 0.5, 0.7), n_tiles=None) -> dict:
    """Segment each image with ``model.predict_instances`` (its own thresholds) and score it."""
    preds = [
        model.predict_instances(x, n_tiles=n_tiles, use_subprocess=False)[0] for x in images
    ]
    return score_instances(labels, preds, iou_threshs)


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate a model on the stardist test image and on unseen synthetic volumes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None, help="model name or folder (default: bundled)")
    parser.add_argument("--synthetic", type=int, default=4, help="number of unseen synthetic volumes")
    parser.add_argument("--seed", type=int, default=900_000, help="first seed of the synthetic test volumes")
    parser.add_argument("--shape", type=int, nargs=3, default=(48, 128, 128), metavar=("Z", "Y", "X"))
    parser.add_argument("--axial-blur", type=float, nargs="*", default=[], metavar="SIGMA_Z",
                        help="also score the synthetic volumes rendered with these Z blurs")
    parser.add_argument("--dome", type=float, nargs="*", default=[], metavar="DOME",
                        help="also score the synthetic volumes rendered with these rim dimmings")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the scores to this JSON file")
    args = parser.parse_args(argv)

    import torch

    from napari_neuroseg.models.stardist3d.model import StarDist3D
    from napari_neuroseg.synth import NucleiSettings, make_nuclei, stardist_nuclei_3d

    torch.set_num_threads(args.threads)
    model = StarDist3D.load(args.model if args.model else "neuroseg_nuclei", device="cpu")
    img, mask = stardist_nuclei_3d()
    res = {"model": str(model.path), "thresholds": {"prob": model.thresholds.prob, "nms": model.thresholds.nms}}
    res["stardist_test_image"] = evaluate_model(model, [img], [mask])
    seeds = list(range(args.seed, args.seed + args.synthetic))
    pairs = [make_nuclei(tuple(args.shape), seed=s) for s in seeds]
    res["synthetic"] = evaluate_model(model, [p[0] for p in pairs], [p[1] for p in pairs])
    res["synthetic_seeds"] = seeds
    res["synthetic_shape"] = list(args.shape)
    names = ["stardist_test_image", "synthetic"]
    lateral = NucleiSettings().psf_sigma[1:]
    variants = [(f"synthetic_axial_blur_{v:g}", {"psf_sigma": (float(v), *lateral)}) for v in args.axial_blur]
    variants += [(f"synthetic_dome_{v:g}", {"dome": float(v)}) for v in args.dome]
    for name, change in variants:
        pairs = [make_nuclei(tuple(args.shape), seed=s, **change) for s in seeds]
        names.append(name)
        res[name] = evaluate_model(model, [p[0] for p in pairs], [p[1] for p in pairs])
    text = json.dumps(res, indent=1)
    print(text)
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(text)
    for name in names:
        print(name, " ".join(f"F1@{t}={v['f1']:.3f}" for t, v in res[name].items()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
