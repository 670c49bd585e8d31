"""Rays built from a config's ``rays_json`` by name + keyword arguments, never with ``eval``.

``stardist.rays3d.rays_from_json`` calls ``eval`` on the stored class name; here the name must be
one of a fixed set of ray classes and only the keyword arguments their constructor accepts are
passed on.
"""

from __future__ import annotations

import inspect
from typing import Any

from napari_neuroseg.errors import NeurosegError

__all__ = ["RAY_CLASSES", "make_rays", "rays_spec"]

#: Ray classes a config may name (all from ``stardist.rays3d``).
RAY_CLASSES = ("Rays_GoldenSpiral", "Rays_Octo", "Rays_Tetra", "Rays_Cartesian", "Rays_Explicit")


def rays_spec(config) -> dict[str, Any]:
    """The ``{"name", "kwargs"}`` ray description of a config (GoldenSpiral if none is stored)."""
    rj = getattr(config, "rays_json", None)
    if rj:
        return {"name": rj.get("name"), "kwargs": dict(rj.get("kwargs") or {})}
    aniso = None if config.anisotropy is None else list(config.anisotropy)
    return {"name": "Rays_GoldenSpiral", "kwargs": {"n": int(config.n_rays), "anisotropy": aniso}}


def make_rays(spec: dict[str, Any], n_rays: int | None = None):
    """Instantiate ``stardist.rays3d.<name>(**kwargs)`` from a whitelisted name.

    Raises NeurosegError for an unknown name, bad arguments, or a ray count different from
    ``n_rays``.
    """
    import stardist.rays3d as rays3d

    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise NeurosegError("rays_json must be an object with a 'name'", fix="check config.json")
    name = spec["name"]
    if name not in RAY_CLASSES:
        raise NeurosegError(f"unknown ray type {name!r}", fix=f"use one of {', '.join(RAY_CLASSES)}")
    cls = getattr(rays3d, name)
    kwargs = dict(spec.get("kwargs") or {})
    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in kwargs.items() if k in params and k != "self"}
    if "anisotropy" in kwargs and kwargs["anisotropy"] is not None:
        kwargs["anisotropy"] = tuple(float(a) for a in kwargs["anisotropy"])
    try:
        rays = cls(**kwargs)
    except Exception as err:  # noqa: BLE001 - any construction problem is a config problem
        raise NeurosegError(f"cannot build rays {name}({kwargs}): {err}", fix="check rays_json in config.json") from err
    if n_rays is not None and len(rays) != n_rays:
        raise NeurosegError(
            f"rays_json gives {len(rays)} rays but the model has n_rays={n_rays}", fix="check config.json"
        )
    return rays
