"""``io/`` is the only reader and writer of volume files, and ``io.atomic`` the only temp-then-rename.

Scans every module of the package outside ``io/`` with :mod:`ast` (no import, nothing runs) and
fails on what only ``io/`` may do: import a volume-file library (tifffile, h5py, zarr, imageio),
read or write arrays with numpy's file functions, or rename a temporary onto a target by hand
(``os.replace``/``os.rename``/``Path.rename``/``tempfile.mkstemp``/``mkdtemp``). Each exception
is listed below with the reason it stands; an entry that no longer occurs fails too, so the list
only shrinks.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import napari_neuroseg

ROOT = Path(napari_neuroseg.__file__).parent
VOLUME_LIBS = {"tifffile", "h5py", "zarr", "imageio"}
NUMPY_FILE_FUNCS = {"load", "save", "savez", "savez_compressed", "memmap", "fromfile"}
RENAMES = {("os", "replace"), ("os", "rename"), ("tempfile", "mkstemp"), ("tempfile", "mkdtemp")}

#: (module, what) -> why it may stay outside io/
ALLOWED: dict[tuple[str, str], str] = {
    ("batch/lock.py", "os.replace"): "moves a stale run lock aside (no file content is written)",
    ("proofread/chunked.py", "os.replace"): "rolls committed chunk files of an edit transaction forward "
    "(the commit mark itself is written by io.atomic)",
    ("proofread/chunked.py", "import zarr"): "transactional chunk-level edits of a Zarr label store "
    "(the proofreading save path); to move into io/ with its tests",
    ("models/stardist3d/keras_import.py", "import h5py"): "reads Keras weight files, not volumes",
    ("models/bioimageio/export.py", "np.save"): "the BioImage.IO format's test tensors are .npy files",
    ("models/bioimageio/export.py", "np.load"): "reads back the package's own test tensor",
    ("models/bioimageio/package.py", "tempfile.mkdtemp"): "a scratch folder for an opened package, "
    "removed on close (not an output)",
    ("models/stardist3d/train.py", "tempfile.mkdtemp"): "a scratch folder inside the output for "
    "StarDist3D.save, whose files are then moved into place one by one with io.atomic.replace_path",
}


def _findings(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {f"import {a.name}" for a in node.names if a.name.split(".")[0] in VOLUME_LIBS}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in VOLUME_LIBS:
            found.add(f"from {node.module}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            attr = node.func.attr
            if owner in ("np", "numpy") and attr in NUMPY_FILE_FUNCS:
                found.add(f"np.{attr}")
            elif (owner, attr) in RENAMES:
                found.add(f"{owner}.{attr}")
            elif attr == "rename" and owner not in ("re", "str"):
                found.add(".rename")
    return found


@functools.cache
def _scan() -> dict[tuple[str, str], None]:
    out: dict[tuple[str, str], None] = {}
    for f in sorted(ROOT.rglob("*.py")):
        rel = f.relative_to(ROOT).as_posix()
        if rel.startswith("io/"):
            continue
        for what in sorted(_findings(ast.parse(f.read_text(encoding="utf-8"), filename=str(f)))):
            out[(rel, what)] = None
    return out


def test_only_io_reads_and_writes_volume_files_and_renames_temporaries():
    found = _scan()
    unexpected = sorted(k for k in found if k not in ALLOWED)
    assert not unexpected, (
        "outside io/: use napari_neuroseg.io's readers/writers and io.atomic instead of "
        f"{[f'{m}: {w}' for m, w in unexpected]} (or add it to ALLOWED with the reason it must stay)"
    )


def test_the_allow_list_has_no_stale_entries():
    found = _scan()
    stale = sorted(k for k in ALLOWED if k not in found)
    assert not stale, f"no longer found, remove from ALLOWED: {stale}"


def test_the_scan_sees_what_it_forbids():
    src = (
        "import zarr\nfrom tifffile import imread\nimport numpy as np\nimport os, tempfile\n"
        "def f(p, t):\n    import h5py\n    np.save(p, 1)\n    os.replace(t, p)\n    t.rename(p)\n"
        "    tempfile.mkstemp()\n"
    )
    assert _findings(ast.parse(src)) == {
        "import zarr", "from tifffile", "import h5py", "np.save", "os.replace", ".rename", "tempfile.mkstemp",
    }
