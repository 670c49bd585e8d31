"""The package-level import graph of napari-neuroseg, drawn from the code (docs/architecture.md).

    python scripts/import_graph.py                      # prints the edges
    python scripts/import_graph.py --png docs/images/architecture-imports.png

Every module under ``src/napari_neuroseg`` is parsed with :mod:`ast` (nothing is imported or
run); each ``import``/``from … import`` of the package is mapped to its *unit* (``io``,
``models/stardist3d``, ``_napari`` …, see :func:`unit_of`) and counted as an edge. The picture
puts the units in their layers (front ends on top, core below, shared bottom row) so an arrow
pointing upwards would stand out: there is none, :func:`layer_violations` says so and a test
checks it.
"""

from __future__ import annotations

import argparse
import ast
from collections import Counter
from pathlib import Path

PKG = "napari_neuroseg"
SRC = Path(__file__).resolve().parents[1] / "src" / PKG

#: layers, top to bottom; a unit may import units of its own layer or below, never above
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_napari", "cli", "__main__"),
    ("batch", "models/finetune"),
    ("models/stardist3d", "models/neurons", "models/bioimageio", "proofread", "metrics", "synth",
     "models"),
    ("runtime", "io"),
    ("errors",),
)
#: units whose sub-packages are drawn as their own boxes
SPLIT = ("models",)


def unit_of(module: str) -> str | None:
    """``napari_neuroseg.models.stardist3d.nms`` -> ``models/stardist3d``; None outside the package."""
    parts = module.split(".")
    if parts[0] != PKG:
        return None
    if len(parts) == 1:
        return "errors"  # the package's __init__ re-exports only the error type and the version
    head = parts[1]
    if head == "models" and len(parts) > 2:
        sub = parts[2]
        if sub in ("finetune_job", "finetune_session"):
            return "models/finetune"
        if (SRC / "models" / sub).is_dir():
            return f"models/{sub}"
        return "models"
    return head.removesuffix(".py")


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, here: str, is_pkg: bool) -> str:
    if not node.level:
        return node.module or ""
    base = here.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def edges(src: Path = SRC) -> Counter:
    """(importing unit, imported unit) -> number of import statements, self-imports left out."""
    out: Counter = Counter()
    for path in sorted(src.rglob("*.py")):
        here = _module_name(path)
        me = unit_of(here)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mod = _resolve(node, here, path.name == "__init__.py")
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names
                                   if (SRC.parent / Path(*f"{mod}.{a.name}".split("."))).exists()]
            for t in targets:
                u = unit_of(t)
                if u and me and u != me:
                    out[(me, u)] += 1
    return out


def _rank(unit: str) -> int:
    for i, layer in enumerate(LAYERS):
        if unit in layer:
            return i
    raise KeyError(f"unit {unit!r} is in no layer of scripts/import_graph.py: add it to LAYERS")


def layer_violations(e: Counter | None = None) -> list[tuple[str, str]]:
    """Imports that point to a higher layer (e.g. core importing the napari layer)."""
    e = edges() if e is None else e
    return sorted((a, b) for (a, b) in e if _rank(b) < _rank(a))


def draw(e: Counter, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = {}
    for i, layer in enumerate(LAYERS):
        for j, u in enumerate(layer):
            pos[u] = ((j + 0.5) / len(layer), 1.0 - i / (len(LAYERS) - 1))
    fig, ax = plt.subplots(figsize=(14, 8), dpi=110)
    ax.set_axis_off()
    for (a, b), n in sorted(e.items()):
        (x0, y0), (x1, y1) = pos[a], pos[b]
        ax.annotate("", xy=(x1, y1 + (0.035 if y1 < y0 else 0)), xytext=(x0, y0 - 0.035),
                    arrowprops=dict(arrowstyle="->", color="#8899aa", lw=0.4 + 0.25 * min(n, 8),
                                    alpha=0.7, connectionstyle="arc3,rad=0.06"))
    colours = ["#f4c7c3", "#fce8b2", "#c6e2ff", "#b7e1cd", "#e0e0e0"]
    for u, (x, y) in pos.items():
        ax.text(x, y, u.replace("/", "/\n"), ha="center", va="center", fontsize=10, zorder=5,
                bbox=dict(boxstyle="round,pad=0.4", fc=colours[_rank(u)], ec="#555555"))
    names = ["front ends (Qt / argparse)", "jobs", "models, metrics, editing, data",
             "runtime, files", "errors"]
    for i, name in enumerate(names):
        ax.text(-0.02, 1.0 - i / (len(LAYERS) - 1), name, ha="right", va="center", fontsize=9,
                color="#555555")
    ax.set_xlim(-0.3, 1.02)
    ax.set_ylim(-0.08, 1.08)
    ax.set_title("napari-neuroseg: imports between units (generated by scripts/import_graph.py)")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--png", type=Path, help="also draw the graph into this PNG")
    args = ap.parse_args(argv)
    e = edges()
    for (a, b), n in sorted(e.items()):
        print(f"{a:20s} -> {b:20s} {n}")
    bad = layer_violations(e)
    print("imports pointing up a layer:", bad or "none")
    if args.png:
        draw(e, args.png)
        print("wrote", args.png)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
