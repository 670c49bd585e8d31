"""``neuroseg models list``: the shipped models and those registered in the user model folder."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the shipped and your fine-tuned (registered) models",
                       description="Models usable by name with --model / --init-from: the shipped ones and those "
                                   "registered by 'neuroseg train nuclei --init-from ...' in the user model folder "
                                   "(NEUROSEG_MODELS_DIR overrides its location).")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    lp = msub.add_parser("list", help="name, kind, path, voxel size and scores of each model")
    lp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    lp.add_argument("--kind", choices=("nuclei", "neurons"), default=None, help="only models of this kind")
    lp.set_defaults(func=run_list)


def _scores(d: dict) -> str:
    sc = d.get("scores") or {}
    before, after = sc.get("f1_0.5_heldout_before"), sc.get("f1_0.5_heldout_after")
    if before is not None and after is not None:
        return f"held-out F1@0.5 {before:.3f} -> {after:.3f}"
    return ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in sc.items()) or "-"


def run_list(args: argparse.Namespace) -> int:
    from napari_neuroseg.models.registry import list_models, models_dir

    rows = [d for d in list_models() if args.kind is None or d["kind"] == args.kind]
    if args.json:
        print(json.dumps({"models_dir": str(models_dir()), "models": rows}, indent=1, default=str))
        return 0
    table = [("NAME", "KIND", "VOXEL SIZE (Z Y X um)", "SCORES", "PATH")]
    for d in rows:
        vs = d.get("voxel_size")
        vs_s = "unknown" if not vs else " x ".join(f"{v:.4g}" for v in vs)
        name = d["name"] + (" (shipped)" if d.get("shipped") else "")
        table.append((name, d["kind"], vs_s, _scores(d), d["path"]))
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    print(f"user model folder: {models_dir()}")
    return 0
