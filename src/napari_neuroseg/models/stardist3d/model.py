"""``StarDist3D``: load (Keras folder or own format), predict, predict instances.

Example::

    from napari_neuroseg.models.stardist3d import StarDist3D
    model = StarDist3D.from_folder("path/to/model")          # Keras or neuroseg folder
    labels, details = model.predict_instances(image)          # image (Z,Y,X) or (C,Z,Y,X)

    # as a progress generator (napari worker, CLI progress bar):
    gen = model.predict_instances_iter(image)                 # yields Progress, returns result
"""

from __future__ import annotations

import json
import math
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.models.safe_load import load_torch_file
from napari_neuroseg.models.stardist3d.config import NORM_PERCENTILES, StarDistConfig, Thresholds, load_thresholds
from napari_neuroseg.models.stardist3d.rays import make_rays, rays_spec
from napari_neuroseg.runtime.progress import Progress, StepClock, relay, run_to_completion

__all__ = ["StarDist3D", "normalize_image", "OWN_WEIGHTS", "FORMAT_NAME"]

#: The state-dict file of the project's own model format.
OWN_WEIGHTS = "weights.pt"
FORMAT_NAME = "neuroseg-stardist3d"

_TENSOR_CHECK_CACHE: dict[tuple[int, str], bool] = {}


def normalize_image(
    image: np.ndarray, percentiles: tuple[float, float] = NORM_PERCENTILES, *, path: str | None = None
) -> np.ndarray:
    """Per-channel percentile normalisation of a (C, Z, Y, X) image as csbdeep does it:
    ``(x − p_low) / (p_high − p_low + 1e-20)`` in float32, no clipping."""
    lo, hi = percentiles
    if not (0 <= lo < hi <= 100):
        raise NeurosegError(f"bad normalisation percentiles {percentiles}", fix="use e.g. (1, 99.8) with low < high")
    x = np.asarray(image)
    _check_not_constant(x, path)
    mi = np.array([_percentile(c, lo) for c in x], np.float32).reshape(-1, 1, 1, 1)
    ma = np.array([_percentile(c, hi) for c in x], np.float32).reshape(-1, 1, 1, 1)
    out = x.astype(np.float32)
    out -= mi
    out /= ma - mi + np.float32(1e-20)
    return out


def _percentile(a: np.ndarray, q: float) -> float:
    """``np.percentile(a, q)`` (linear interpolation). Large arrays go through
    ``torch.kthvalue``, which gives the same order statistics but releases the GIL, so a viewer
    stays responsive while a big volume is normalised in a worker thread."""
    if a.size < 262144:
        return float(np.percentile(a, q))
    import torch

    t = torch.from_numpy(np.ascontiguousarray(a).reshape(-1))
    if not torch.is_floating_point(t):
        t = t.to(torch.float64)
    n = t.numel()
    pos = q / 100.0 * (n - 1)
    k = int(np.floor(pos))
    frac = pos - k
    v0 = float(t.kthvalue(k + 1).values)
    if frac == 0 or k + 1 >= n:
        return v0
    v1 = float(t.kthvalue(k + 2).values)
    return v0 + (v1 - v0) * frac


def _check_not_constant(x: np.ndarray, path: str | None = None) -> None:
    flat = x.reshape(x.shape[0], -1)
    const = np.flatnonzero(flat.max(1) == flat.min(1))
    if len(const):
        raise NeurosegError(
            f"the image is constant (channel {int(const[0])} has the single value {flat[const[0], 0]})",
            path=path,
            fix="check that the right image/channel was loaded",
        )


#: per process: whether a bfloat16 network runs on this CPU (None = not checked yet)
_CPU_BF16: dict[str, bool] = {}


def _cpu_bf16_runs(net_bf16, n_channel_in: int, divisor) -> bool:
    """Whether ``net_bf16`` runs on this CPU. oneDNN's bf16 convolution needs AVX512 (BW, VL, DQ),
    AVX-NE-CONVERT or AMX; elsewhere it raises. Probed once per process on a tiny input; when it
    fails, one warning says so and the caller runs in float32 instead of crashing."""
    import warnings

    import torch

    if "ok" not in _CPU_BF16:
        try:
            supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)()
        except RuntimeError:  # pragma: no cover - builds without the query
            supported = True
        try:
            if not supported:
                raise RuntimeError("oneDNN reports no bf16 support on this CPU")
            with torch.inference_mode():
                net_bf16(torch.zeros((1, n_channel_in, *divisor), dtype=torch.bfloat16))
            _CPU_BF16["ok"] = True
        except RuntimeError as err:
            _CPU_BF16["ok"] = False
            warnings.warn("napari-neuroseg: this CPU cannot run bfloat16 convolutions (oneDNN needs AVX512-BF16, "
                          f"AVX-NE-CONVERT or AMX: {str(err).splitlines()[0][:120]}); running in float32",
                          RuntimeWarning, stacklevel=3)
    return _CPU_BF16["ok"]


class StarDist3D:
    """A StarDist-3D model in PyTorch (see the module docstring)."""

    def __init__(
        self,
        config: StarDistConfig,
        thresholds: Thresholds | None = None,
        net=None,
        *,
        name: str = "stardist3d",
        path: str | Path | None = None,
        device: str | None = None,
    ):
        from napari_neuroseg.models.stardist3d.network import build_network
        from napari_neuroseg.runtime.device import select_device

        self.config = config
        self.thresholds = thresholds or Thresholds()
        self.net = net if net is not None else build_network(config)
        self.net.eval()
        self.name = name
        self.path = None if path is None else Path(path)
        #: "auto" (float16 on CUDA when it keeps the outputs, else float32), "float32", "float16"
        #: (CUDA) or "bfloat16" (CUDA autocast; on CPU a bf16 copy of the net run by oneDNN: ~3-4x
        #: faster on CPUs with AMX/AVX512-BF16, outputs differ by ~1e-2)
        self.precision = "auto"
        self._rays = None
        #: the voxel size / nucleus size it was trained at (``scale.json``; None = unknown: never resampled)
        self.scale = None
        #: input normalisation percentiles used when ``predict_instances`` gets none (a
        #: BioImage.IO package's ``scale_range`` pre-processing sets them)
        self.percentiles: tuple[float, float] = NORM_PERCENTILES
        self.device = select_device(device)
        self.net.to(self.device)

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_folder(cls, path: str | Path, *, device: str | None = None) -> "StarDist3D":
        """Load a model folder: Keras (``config.json``, ``thresholds.json``, ``weights_best.h5``
        else the newest ``*.h5``) or neuroseg (``config.json``, ``thresholds.json``, ``weights.pt``)."""
        path = Path(path)
        if not path.is_dir():
            if path.is_file() and path.suffix == ".pt":
                return cls.from_file(path, device=device)
            raise NeurosegError("model folder not found", path=path, fix="give a StarDist model folder")
        if not (path / "config.json").is_file():
            from napari_neuroseg.models.bioimageio.package import is_package

            if is_package(path):
                return cls.from_bioimageio(path, device=device)
        config = StarDistConfig.from_json(path / "config.json")
        thresholds = load_thresholds(path / "thresholds.json")
        model = cls(config, thresholds, name=path.name, path=path, device="cpu")
        from napari_neuroseg.runtime.scale import SCALE_FILE, read_scale_json

        model.scale = read_scale_json(path / SCALE_FILE)
        own = path / OWN_WEIGHTS
        if own.is_file():
            state = load_torch_file(own, what="weights file", fix="restore or re-save the model")
            model.load_weights(state, own)
        else:
            h5 = path / "weights_best.h5"
            if not h5.is_file():
                candidates = sorted(path.glob("*.h5"), key=lambda p: p.stat().st_mtime)
                if not candidates:
                    raise NeurosegError(
                        "no weight file in the model folder (weights.pt, weights_best.h5 or *.h5)",
                        path=path,
                        fix="copy the model's weight file into the folder",
                    )
                h5 = candidates[-1]
            from napari_neuroseg.models.stardist3d.keras_import import load_keras_weights

            load_keras_weights(model.net, h5)
        return model.to(device)

    @classmethod
    def from_file(cls, path: str | Path, *, device: str | None = None) -> "StarDist3D":
        """Load the single-file form of the own format (``.pt`` with config, thresholds and
        state dict; read with ``weights_only=True``)."""
        path = Path(path)
        if not path.is_file():
            raise NeurosegError("model file not found", path=path, fix="give a .pt file saved by neuroseg")
        blob = load_torch_file(path, fix="restore or re-save the model")
        if not isinstance(blob, dict) or blob.get("format") != FORMAT_NAME:
            raise NeurosegError("not a neuroseg StarDist-3D model file", path=path, fix="use StarDist3D.save_file output")
        config = StarDistConfig.from_dict(blob.get("config") or {}, path=path)
        thresholds = Thresholds.from_dict(blob.get("thresholds"))
        model = cls(config, thresholds, name=path.stem, path=path, device="cpu")
        if blob.get("scale") is not None:
            from napari_neuroseg.runtime.scale import ModelScale

            model.scale = ModelScale.from_dict(blob["scale"], path=path)
        model.load_weights(blob.get("state_dict") or {}, path)
        return model.to(device)

    @classmethod
    def from_bioimageio(cls, path: str | Path, *, device: str | None = None) -> "StarDist3D":
        """Load a BioImage.IO model package (folder, ``rdf.yaml`` or ``.zip``) of a 3D StarDist
        model: a Model Zoo package (Keras weights) or one written by ``neuroseg export``; its
        ``scale_range`` pre-processing sets :attr:`percentiles` (see
        :mod:`napari_neuroseg.models.bioimageio`)."""
        from napari_neuroseg.models.bioimageio.load import load_stardist3d

        return load_stardist3d(path, device=device)

    @classmethod
    def load(cls, name_or_path: str | Path, *, device: str | None = None) -> "StarDist3D":
        """A bundled model by name (see :func:`~napari_neuroseg.models.stardist3d.bundled_models`),
        a model folder, a ``.pt`` model file or a BioImage.IO package (folder, rdf.yaml, .zip)."""
        from napari_neuroseg.models.bioimageio.package import is_package
        from napari_neuroseg.models.stardist3d.pretrained import resolve_model_path

        p = resolve_model_path(name_or_path)
        if is_package(p):
            return cls.from_bioimageio(p, device=device)
        return cls.from_file(p, device=device) if p.is_file() else cls.from_folder(p, device=device)

    def load_weights(self, state: dict, path: str | Path | None = None) -> None:
        """Load a PyTorch state dict into the network; a clear error (naming ``path``, where the
        weights came from) if it is not one or does not fit the config."""
        path = Path(path) if path is not None else None
        if not isinstance(state, dict):
            raise NeurosegError("the weights are not a state dict", path=path, fix="re-save the model")
        try:
            self.net.load_state_dict(state, strict=True)
        except (RuntimeError, KeyError) as err:
            raise NeurosegError(
                f"the weights do not fit the config ({str(err).splitlines()[0]})",
                path=path,
                fix="use the config.json saved with these weights",
            ) from err

    def config_dict(self) -> dict[str, Any]:
        """The config as saved in ``config.json`` (with the rays' JSON spec)."""
        d = self.config.to_dict()
        d["rays_json"] = rays_spec(self.config)
        return d

    def save(self, folder: str | Path) -> Path:
        """Write the own format (``config.json``, ``thresholds.json``, ``weights.pt``) atomically."""
        import torch

        from napari_neuroseg.io.atomic import atomic_output

        folder = Path(folder)
        with atomic_output(folder, parents=True) as tmp:
            tmp.mkdir()
            (tmp / "config.json").write_text(json.dumps(self.config_dict(), indent=1))
            (tmp / "thresholds.json").write_text(json.dumps(self.thresholds.to_dict()))
            if self.scale is not None:
                from napari_neuroseg.runtime.scale import SCALE_FILE

                (tmp / SCALE_FILE).write_text(json.dumps(self.scale.to_dict(), indent=1))
            state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
            torch.save(state, tmp / OWN_WEIGHTS)
        return folder

    def save_file(self, path: str | Path) -> Path:
        """Write the single-file own format (``.pt``) atomically."""
        import torch

        path = Path(path)
        blob = {
            "format": FORMAT_NAME,
            "version": 1,
            "config": json.loads(json.dumps(self.config_dict())),
            "thresholds": self.thresholds.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
        }
        if self.scale is not None:
            blob["scale"] = self.scale.to_dict()
        from napari_neuroseg.io.atomic import atomic_write_file

        return atomic_write_file(path, lambda fh: torch.save(blob, fh), parents=True)

    # ------------------------------------------------------------------ properties
    def to(self, device: str | None = None) -> "StarDist3D":
        """Move to ``device`` (``None``/"auto": :func:`~napari_neuroseg.runtime.select_device`)."""
        from napari_neuroseg.runtime.device import select_device

        self.device = select_device(device)
        self.net.to(self.device)
        return self

    @property
    def rays(self):
        """The model's ``stardist`` rays object (built without ``eval``)."""
        if self._rays is None:
            self._rays = make_rays(rays_spec(self.config), self.config.n_rays)
        return self._rays

    @property
    def divisor(self) -> tuple[int, int, int]:
        return self.config.divisor

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(self.config.grid)  # type: ignore[return-value]

    @property
    def receptive_field(self) -> tuple[int, int, int]:
        """Per-side receptive field in voxels (the tile overlap)."""
        return self.config.receptive_field

    def __repr__(self) -> str:
        c = self.config
        return (
            f"StarDist3D({self.name!r}, backbone={c.backbone}, n_rays={c.n_rays}, grid={c.grid}, "
            f"n_channel_in={c.n_channel_in}, device={self.device})"
        )

    # ------------------------------------------------------------------ input checks
    def prepare_image(
        self,
        image: np.ndarray,
        *,
        normalize: bool = True,
        percentiles: tuple[float, float] = NORM_PERCENTILES,
        channel_axis: int | None = None,
    ) -> np.ndarray:
        """Validate ``image`` and return it as float32 (C, Z, Y, X), normalised if asked.

        3D images are single-channel; 4D images need a channel axis of size ``n_channel_in``
        (first or last, or ``channel_axis``)."""
        x = np.asarray(image)
        n_c = self.config.n_channel_in
        if x.dtype == bool or not (np.issubdtype(x.dtype, np.number)):
            raise NeurosegError(f"the image has dtype {x.dtype}, not numeric", fix="pass a numeric image")
        if x.ndim == 3:
            if n_c != 1:
                raise NeurosegError(
                    f"the model expects {n_c} channels but the image is 3D (Z, Y, X) with one",
                    fix=f"pass a (C, Z, Y, X) image with C={n_c}",
                )
            x = x[np.newaxis]
        elif x.ndim == 4:
            if channel_axis is None:
                if x.shape[0] == n_c:
                    channel_axis = 0
                elif x.shape[-1] == n_c:
                    channel_axis = -1
                else:
                    raise NeurosegError(
                        f"4D image of shape {x.shape}: no axis of size {n_c} (the model's channel count)",
                        fix=f"pass a 3D volume or a (C, Z, Y, X) image with C={n_c}",
                    )
            x = np.moveaxis(x, channel_axis, 0)
            if x.shape[0] != n_c:
                raise NeurosegError(
                    f"the image has {x.shape[0]} channels but the model expects {n_c}",
                    fix="choose the right channel(s) or model",
                )
        else:
            raise NeurosegError(
                f"the image is {x.ndim}D (shape {x.shape}); StarDist-3D needs a 3D volume",
                fix="pass a (Z, Y, X) volume or a (C, Z, Y, X) image",
            )
        if min(x.shape[1:]) < 1:
            raise NeurosegError(f"the image is empty (shape {x.shape[1:]})", fix="pass a non-empty volume")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise NeurosegError("the image contains NaN or infinite values", fix="replace them (e.g. np.nan_to_num)")
        if normalize:
            return normalize_image(x, percentiles)
        _check_not_constant(x)
        return np.ascontiguousarray(x, dtype=np.float32)

    # ------------------------------------------------------------------ forward
    def _autocast_dtype(self) -> Any:
        import torch

        if self.device.type != "cuda" or self.precision == "float32":
            return None
        if self.precision == "float16":
            return torch.float16
        if self.precision == "bfloat16":
            return torch.bfloat16
        return "check"

    def make_forward(self, tta: bool = False):
        """A ``forward(tile (C,z,y,x) float32) -> (prob (1,...), dist (R,...))`` numpy function
        for :func:`napari_neuroseg.runtime.tiling.predict_tiled` on this model's device.

        ``tta``: flip averaging over the 8 flips of Z/Y/X (:mod:`napari_neuroseg.runtime.tta`):
        probabilities averaged; distances averaged after mapping each flipped pass's rays back
        (a permutation for a flip-symmetric ray set, else barycentric interpolation on the rays'
        triangulation, :func:`~napari_neuroseg.runtime.tta.ray_flip_weights`); 8× the network time.

        With ``precision="auto"`` on CUDA, the first tile is computed in float32 and float16; half
        precision is used for the rest only if it keeps the outputs (|Δprob| ≤ 1e-3,
        |Δdist| ≤ 1e-2 · max(1, |dist|)); the decision is cached per model and device.
        """
        import torch

        net, device = self.net, self.device
        cpu_bf16 = device.type == "cpu" and self.precision == "bfloat16"
        if cpu_bf16:  # oneDNN bf16 (AMX/AVX512-BF16 where present): a bf16 copy of the weights
            import copy

            net = copy.deepcopy(self.net).to(torch.bfloat16)
            if not _cpu_bf16_runs(net, self.config.n_channel_in, self.divisor):
                net, cpu_bf16 = self.net, False

        def run(x_np: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
            x = torch.from_numpy(x_np[np.newaxis]).to(device, non_blocking=True)
            if cpu_bf16:
                x = x.to(torch.bfloat16)
                dtype = None
            with torch.inference_mode():
                if dtype is None:
                    p, d = net(x)
                else:
                    with torch.autocast(device_type=device.type, dtype=dtype):
                        p, d = net(x)
            return p[0].float().cpu().numpy(), d[0].float().cpu().numpy()

        key = (id(self.net), str(device))

        def forward(x_np: np.ndarray):
            mode = self._autocast_dtype()
            if mode == "check":
                ok = _TENSOR_CHECK_CACHE.get(key)
                if ok is None:
                    p32, d32 = run(x_np, None)
                    p16, d16 = run(x_np, torch.float16)
                    ok = bool(
                        np.isfinite(p16).all()
                        and np.isfinite(d16).all()
                        and np.abs(p16 - p32).max() <= 1e-3
                        and (np.abs(d16 - d32) / np.maximum(1.0, np.abs(d32))).max() <= 1e-2
                    )
                    _TENSOR_CHECK_CACHE[key] = ok
                    return p32, d32
                mode = torch.float16 if ok else None
            return run(x_np, mode)

        if tta:
            from napari_neuroseg.runtime.tta import FLIPS, flip_average, ray_flip_weights, unflip_dist

            rays = self.rays
            weights = {axes: ray_flip_weights(rays.vertices, rays.faces, axes) for axes in FLIPS if axes}

            def unflip(outs, axes):
                return outs[0], unflip_dist(outs[1], weights[axes])

            return flip_average(forward, grid=self.grid, unflip=unflip)
        return forward

    def _n_tiles(self, shape, n_tiles):
        from napari_neuroseg.runtime.tiling import auto_tiles, normalize_n_tiles

        if n_tiles is not None:
            return normalize_n_tiles(n_tiles, shape)
        bpv = self.net.bytes_per_voxel()
        fraction = 0.7 if self.device.type == "cuda" else 0.25
        return auto_tiles(
            shape, divisor=self.divisor, overlap=self.receptive_field, bytes_per_voxel=bpv,
            device=self.device, fraction=fraction,
        )

    def predict_iter(
        self, image: np.ndarray, *, n_tiles: int | Sequence[int] | None = None, channel_axis: int | None = None,
        tta: bool = False,
    ) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
        """Generator form of :meth:`predict`."""
        from napari_neuroseg.runtime.tiling import predict_tiled_auto

        x = self.prepare_image(image, normalize=False, channel_axis=channel_axis)
        tiles = self._n_tiles(x.shape[1:], n_tiles)
        prob, dist = yield from predict_tiled_auto(
            self.make_forward(tta=tta), x, divisor=self.divisor, overlap=self.receptive_field, grid=self.grid,
            n_tiles=tiles, device=self.device,
        )
        return prob[0], np.moveaxis(np.maximum(dist, np.float32(1e-3)), 0, -1)

    def predict(
        self, image: np.ndarray, *, n_tiles: int | Sequence[int] | None = None, channel_axis: int | None = None,
        tta: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Network outputs at grid resolution for an already normalised image (as ``stardist``):
        ``prob`` (Z', Y', X') and ``dist`` (Z', Y', X', n_rays) clipped at 1e-3, with
        Z' = ceil(Z / grid_z) etc. ``n_tiles=None`` chooses tiles from the free memory; ``tta``: flip
        averaging (:meth:`make_forward`)."""
        return run_to_completion(self.predict_iter(image, n_tiles=n_tiles, channel_axis=channel_axis, tta=tta))

    # ------------------------------------------------------------------ instances
    def predict_instances_iter(
        self,
        image: np.ndarray,
        *,
        normalize: bool = True,
        prob_thresh: float | None = None,
        nms_thresh: float | None = None,
        n_tiles: int | Sequence[int] | None = None,
        percentiles: tuple[float, float] | None = None,
        channel_axis: int | None = None,
        use_subprocess: bool | None = None,
        return_predict: bool = False,
        border: int | None = None,
        voxel_size: Sequence[float] | None = None,
        object_size: Any = None,
        scale_factors: Sequence[float] | None = None,
        nms: str = "neuroseg",
        tta: bool = False,
    ) -> Generator[Progress, None, tuple]:
        """Segment nuclei, yielding a :class:`Progress` per tile and while NMS/rendering run;
        returns ``(labels int32 (Z, Y, X), details)`` (plus ``(prob, dist)`` if
        ``return_predict``). :meth:`predict_instances` runs it to completion.

        ``normalize``: percentile normalisation (``percentiles``; None: the model's
        :attr:`percentiles`, 1 and 99.8 unless its package says otherwise) first;
        thresholds and ``border`` (grid voxels at the volume's edge without object centres,
        stardist's 2) default to the model's; ``n_tiles=None`` picks tiles from the free (GPU or
        CPU) memory and retries with more tiles after an out-of-memory error. ``nms``: the NMS and
        rendering backend, ``"neuroseg"`` (own numba code; runs in this thread, not holding the
        GIL) or ``"stardist"`` (the package's C++, the reference; runs in the worker process as it
        holds the GIL); ``use_subprocess=True`` runs either in the worker process, ``False`` here.
        ``details`` has the kept ``points``, ``prob``, ``dist`` and the rays'
        ``rays_vertices``/``rays_faces``. ``tta``: flip averaging of the network outputs over the 8
        flips of Z/Y/X (:meth:`make_forward`; 8× the network time, off by default).

        Physical scale (:mod:`napari_neuroseg.runtime.scale`): with ``voxel_size`` (Z, Y, X µm),
        ``object_size`` (``"3.2 um"``, ``"25 vox"``, ``"auto"``) or explicit ``scale_factors`` the
        image is resampled to the model's :attr:`scale` first and the labels come back at the
        input's shape (nearest neighbour); ``details["points"]`` are in input voxels,
        ``details["resample_factors"]`` the factors (polyhedra: ``points + dist·rays / factors``),
        ``details["scale_plan"]`` what was decided; ``prob``/``dist`` of ``return_predict`` stay at
        the model's scale."""
        from napari_neuroseg.runtime.tiling import predict_tiled_auto

        prob_thresh, nms_thresh, border = self._instance_thresholds(prob_thresh, nms_thresh, border, nms, use_subprocess)
        if percentiles is None:
            percentiles = self.percentiles
        x = self.prepare_image(image, normalize=normalize, percentiles=percentiles, channel_axis=channel_axis)
        in_shape = tuple(int(s) for s in x.shape[1:])
        plan = None
        if voxel_size is not None or object_size is not None or scale_factors is not None:
            x, plan = yield from self._to_model_scale_iter(x, voxel_size, object_size, scale_factors)
        shape = tuple(int(s) for s in x.shape[1:])
        tiles = self._n_tiles(shape, n_tiles)
        n_total = math.prod(min(t, math.ceil(s / d)) for t, s, d in zip(tiles, shape, self.divisor)) + 1
        yield Progress(0, n_total, f"predicting {math.prod(tiles)} tile(s)")
        cands, dense = yield from predict_tiled_auto(
            self.make_forward(tta=tta), x, divisor=self.divisor, overlap=self.receptive_field, grid=self.grid,
            n_tiles=tiles, device=self.device,
            run=self._candidates_run(shape, prob_thresh=prob_thresh, border=border, keep_dense=return_predict),
        )
        del x
        prob, dist, points = cands.arrays()
        span = [n_total]  # the NMS may lengthen the scale (its candidates)
        labels, details = yield from self._nms_and_render_iter(
            prob, dist, points, nms_thresh, shape, nms=nms, use_subprocess=use_subprocess, span=span)
        yield Progress(span[0], span[0], f"{int(labels.max()) if labels is not None else 0} objects")
        if plan is not None:
            labels = _back_to_input_scale(labels, details, plan, shape, in_shape)
        if return_predict:
            assert dense is not None
            return labels, details, (dense[0][0], np.moveaxis(np.maximum(dense[1], np.float32(1e-3)), 0, -1))
        return labels, details

    def _instance_thresholds(self, prob_thresh, nms_thresh, border, nms: str, use_subprocess) -> tuple:
        """(prob_thresh, nms_thresh, border): the given ones or the model's, checked; starts
        compiling the numba NMS in the background when it will run in this process."""
        from napari_neuroseg.models.stardist3d.postprocess import check_nms_backend

        prob_thresh = self.thresholds.prob if prob_thresh is None else float(prob_thresh)
        nms_thresh = self.thresholds.nms if nms_thresh is None else float(nms_thresh)
        border = self.thresholds.border if border is None else int(border)
        if border < 0:
            raise NeurosegError(f"border={border} is negative", fix="use 0 (objects up to the edge) or stardist's 2")
        check_nms_backend(nms)
        if nms == "neuroseg" and not use_subprocess:  # compile the numba NMS while the network runs
            from napari_neuroseg.models.stardist3d.nms import warmup_async

            warmup_async()
        if not (0 <= prob_thresh <= 1 and 0 <= nms_thresh <= 1):
            raise NeurosegError(
                f"thresholds must lie in [0, 1] (prob={prob_thresh}, nms={nms_thresh})", fix="use e.g. 0.5 and 0.4"
            )
        return prob_thresh, nms_thresh, border

    def _to_model_scale_iter(self, x, voxel_size, object_size, scale_factors) -> Generator[Progress, None, tuple]:
        """``(x resampled to the model's scale, the ScalePlan)`` (``x`` as it is when the plan is
        the identity); see :mod:`napari_neuroseg.runtime.scale`."""
        from napari_neuroseg.runtime.scale import check_growth, plan_scale, resample_image

        if object_size is not None and str(object_size).strip().lower() == "auto":
            yield Progress(0, 1, "estimating the nucleus size")
        plan = plan_scale(self.scale, voxel_size=voxel_size, object_size=object_size,
                          image=x[0] if x.shape[0] == 1 else x.max(0), factors=scale_factors)
        if not plan.identity:
            check_growth(tuple(int(s) for s in x.shape[1:]), plan.factors)
            yield Progress(0, 1, f"rescaling: {plan.describe()}")
            x = resample_image(x, plan.factors, channel_axis=0)
        return x, plan

    def _candidates_run(self, shape, *, prob_thresh: float, border: int, keep_dense: bool):
        """The ``run`` of ``predict_tiled_auto``: goes over the tiles and keeps only the candidates
        (grid voxels above ``prob_thresh``, none within ``border`` of the volume's edge); returns
        ``(Candidates, dense)`` with ``dense`` the whole ``(prob, dist)`` when ``keep_dense``."""
        from napari_neuroseg.models.stardist3d.postprocess import Candidates, select_candidates
        from napari_neuroseg.runtime.tiling import iter_tiles

        grid = self.grid
        dense_shape = tuple(math.ceil(s / g) for s, g in zip(shape, grid))
        n_rays = self.config.n_rays

        def sparse_run(fwd, img, *, n_tiles, divisor, overlap, grid):
            cands = Candidates(n_rays)
            dense = None
            if keep_dense:
                dense = (np.empty((1,) + dense_shape, np.float32), np.empty((n_rays,) + dense_shape, np.float32))
            for i, (tile, total, (p, d)) in enumerate(
                iter_tiles(fwd, img, n_tiles=n_tiles, divisor=divisor, overlap=overlap, grid=grid)
            ):
                edge = tuple(
                    (border if tile.first[ax] else 0, border if tile.last[ax] else 0) for ax in range(3)
                )
                offset = tuple(s.start for s in tile.dst)
                cands.add(*select_candidates(p[0], d, offset=offset, grid=grid, prob_thresh=prob_thresh,
                                             border=edge, shape=shape))
                if dense is not None:
                    dst = tuple(slice(s.start, min(s.stop, n)) for s, n in zip(tile.dst, dense_shape))
                    keep = (slice(None),) + tuple(slice(0, s.stop - s.start) for s in dst)
                    dense[0][(slice(None),) + dst] = p[keep]
                    dense[1][(slice(None),) + dst] = d[keep]
                yield Progress(i + 1, total + 1, f"tile {i + 1}/{total}: {len(cands)} candidates")
            return cands, dense

        return sparse_run

    def _nms_and_render_iter(self, prob, dist, points, nms_thresh, shape, *, nms: str, use_subprocess,
                             span: list[int]) -> Generator[Progress, None, tuple]:
        """``(labels, details)`` of NMS and rendering: the numba backend in this (worker) thread,
        stardist's C++ (which holds the GIL) or ``use_subprocess=True`` in the worker process.
        ``span[0]``: the job's scale (its tiles + 1) on entry, as lengthened by the NMS on exit."""
        n_total = span[0]
        from napari_neuroseg.models.stardist3d import postprocess
        from napari_neuroseg.runtime.subprocess import ProcessWorker, get_worker

        nms_args = (prob, dist, points, rays_spec(self.config), self.config.n_rays, nms_thresh, shape)
        if nms == "neuroseg" and not use_subprocess:
            # numba without the GIL: this (worker) thread. The scale grows by the candidates (+ the
            # rendering): the bar follows the run's longest step, never going back in steps, with the
            # time left in it
            clock = StepClock().start()
            done = n_total - 1  # the tiles' steps

            def step(p: Progress) -> Progress:
                span[0] = max(span[0], done + p.total)
                return Progress(done + p.step, done + p.total, clock.describe(p.message, p.step, p.total))

            return (yield from relay(postprocess.nms_and_render_iter(*nms_args, nms=nms), step))
        # stardist's C++ holds the GIL: the worker process (either backend with use_subprocess=True)
        worker = get_worker() if use_subprocess in (None, True) else ProcessWorker(in_process=True)
        if use_subprocess is None and len(prob) < 64 and math.prod(shape) < 64**3:
            worker = ProcessWorker(in_process=True)  # tiny job: not worth a round trip
        msg = f"non-maximum suppression of {len(prob)} candidates"
        return (yield from relay(
            worker.call_iter(postprocess.nms_and_render, *nms_args, nms=nms),
            lambda elapsed: Progress(n_total - 1, n_total, f"{msg} ({elapsed:.1f} s)")))

    def predict_instances(self, image: np.ndarray, **options: Any):
        """Segment nuclei: ``(labels int32 (Z, Y, X), details)`` (plus ``(prob, dist)`` with
        ``return_predict``): :meth:`predict_instances_iter` run to completion, with the same
        keyword options."""
        return run_to_completion(self.predict_instances_iter(image, **options))



def _back_to_input_scale(labels: np.ndarray, details: dict, plan, shape, in_shape) -> np.ndarray:
    """Labels at the input's shape (nearest neighbour) after a run at the model's scale;
    ``details`` gets ``scale_plan`` and, when resampled, ``points`` in input voxels and the
    ``resample_factors`` actually used (after rounding)."""
    details["scale_plan"] = plan.to_dict()
    if plan.identity:
        return labels
    from napari_neuroseg.runtime.scale import restore_labels

    real = np.asarray(shape, np.float64) / np.asarray(in_shape, np.float64)  # after rounding
    labels = restore_labels(labels, in_shape)
    pts = np.asarray(details["points"], np.float64).reshape(-1, 3)
    details["points"] = ((pts + 0.5) / real - 0.5).astype(np.float32)
    details["resample_factors"] = tuple(float(v) for v in real)
    return labels
