"""``neuroseg info``: versions and available devices."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import platform


_PACKAGES = ("napari", "torch", "stardist", "numpy", "zarr", "tifffile", "scikit-image", "dask", "h5py")


def collect_info() -> dict:
    """Versions of this package and its key dependencies, and the torch devices available."""
    from napari_neuroseg import __version__
    from napari_neuroseg.runtime.device import available_devices, select_device

    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    return {
        "napari-neuroseg": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "devices": available_devices(),
        "default_device": str(select_device("auto")),
    }


def run(args: argparse.Namespace) -> int:
    info = collect_info()
    if args.json:
        import json

        print(json.dumps(info, indent=2))
        return 0
    print(f"napari-neuroseg {info['napari-neuroseg']} (Python {info['python']}, {info['platform']})")
    for name, ver in info["packages"].items():
        print(f"  {name:<14} {ver or 'not installed'}")
    print(f"devices: {', '.join(info['devices'])} (default: {info['default_device']})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show versions and available devices (CUDA/MPS/CPU)")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=run)
