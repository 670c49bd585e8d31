"""Training data for the neuron model: sources, foreground-biased patch sampling, augmentation.

Sources (all give a normalised float (3,Z,Y,X) raw and an (N,Z,Y,X) instance stack per patch):

* :class:`SyntheticSource` — a pool of volumes from :func:`napari_neuroseg.synth.make_neurons`
  (standard and hard, randomised settings), one volume replaced every ``refresh_every`` patches.
* :class:`VolumeSource` — FISBe Zarr samples (``volumes/raw`` (3,Z,Y,X), ``volumes/gt_instances``
  (N,Z,Y,X)) read lazily patch by patch, or raw/label pairs (labels ZYX, one id per neuron).

Normalisation statistics are computed once per whole volume (as at inference), never per patch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.io.atomic import atomic_save_npz
from napari_neuroseg.io.fisbe import GT_KEY, RAW_KEY, open_fisbe_arrays
from napari_neuroseg.io.npy import read_npz

from .preprocess import apply_norm, norm_stats

#: Seeds of synthetic training volumes start here (validation/benchmark volumes use seeds below
#: TRAIN_SEED_BASE, so they are never seen in training).
TRAIN_SEED_BASE = 1_000_000
#: Seeds of the synthetic validation volumes used during training.
VAL_SEED_BASE = 500_000


@dataclass
class Sample:
    """One training volume: ``raw`` (3,Z,Y,X) (array-like, maybe lazy), ``norm`` statistics,
    ``gt`` (N,Z,Y,X) stack or ``labels`` (Z,Y,X), foreground and overlap voxel coordinates."""

    raw: object
    norm: tuple
    gt: object = None
    labels: object = None
    fg_coords: np.ndarray | None = None
    overlap_coords: np.ndarray | None = None
    name: str = ""
    pre_normalised: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.raw.shape[1:])

    def crop(self, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray]:
        raw = np.asarray(self.raw[(slice(None),) + sl])
        raw = raw.astype(np.float32) if self.pre_normalised else apply_norm(raw, self.norm)
        if self.gt is not None:
            stack = np.asarray(self.gt[(slice(None),) + sl])
            stack = stack[stack.reshape(len(stack), -1).any(1)] if len(stack) else stack
        else:
            lab = np.asarray(self.labels[sl])
            ids = np.unique(lab)
            ids = ids[ids != 0]
            stack = (lab[None] == ids[:, None, None, None]).astype(np.uint8)
        return raw, stack


def _coords(masks_any: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    c = np.argwhere(masks_any)
    if len(c) > limit:
        c = c[rng.choice(len(c), limit, replace=False)]
    return c.astype(np.int32)


def make_sample(raw, gt=None, labels=None, *, name: str = "", rng=None, limit: int = 200_000) -> Sample:
    """A :class:`Sample` with its normalisation and foreground/overlap coordinates."""
    rng = rng or np.random.default_rng(0)
    if gt is not None:
        count = np.zeros(raw.shape[1:], np.uint8)
        for i in range(gt.shape[0]):
            count += np.asarray(gt[i]) > 0
        fg, ov = count > 0, count > 1
    else:
        fg = np.asarray(labels) > 0
        ov = np.zeros_like(fg)
    return Sample(raw=raw, norm=norm_stats(raw), gt=gt, labels=labels, fg_coords=_coords(fg, limit, rng),
                  overlap_coords=_coords(ov, limit, rng), name=name)


# ---------------------------------------------------------------------------------------------
# sources


class RealMorphology:
    """Neuron masks of real ground truth (FISBe ``volumes/gt_instances``), kept sparse (voxel
    coordinates per neuron), cut into randomly placed, rotated, flipped and rescaled crops for
    :func:`napari_neuroseg.synth.render_neurons` (real morphology, synthetic appearance).

    Only masks are read (never ``volumes/raw``). ``cache``: an ``.npz`` written after the first
    read (reading a 400×700×700 FISBe mask stack takes ~30 s)."""

    def __init__(self, coords: list[list[np.ndarray]], shapes: list[tuple[int, int, int]], names: list[str]):
        if not coords or not any(len(c) for c in coords):
            raise NeurosegError("no neuron masks in the real-morphology data", fix="pass FISBe samples with volumes/gt_instances")
        self.coords, self.shapes, self.names = coords, shapes, names
        self.weights = np.array([sum(len(x) for x in c) for c in coords], float)
        self.weights /= self.weights.sum()

    @classmethod
    def load(cls, paths, cache: str | Path | None = None) -> RealMorphology:
        if cache is not None and Path(cache).is_file():
            z = read_npz(cache)
            names = [str(x) for x in z["names"]]
            shapes = [tuple(int(v) for v in s) for s in z["shapes"]]
            coords = [[z[f"c{i}_{k}"] for k in range(int(z["counts"][i]))] for i in range(len(names))]
            return cls(coords, shapes, names)
        coords, shapes, names = [], [], []
        for path in paths:
            _raw, gt = _open_gt(Path(path))
            coords.append([np.argwhere(np.asarray(gt[k]) > 0).astype(np.int16) for k in range(gt.shape[0])])
            shapes.append(tuple(int(v) for v in gt.shape[1:]))
            names.append(Path(path).name)
        out = cls(coords, shapes, names)
        if cache is not None:
            arrays = {f"c{i}_{k}": c for i, cs in enumerate(coords) for k, c in enumerate(cs)}
            atomic_save_npz(cache, {"names": np.array(names), "shapes": np.array(shapes),
                                    "counts": np.array([len(c) for c in coords]), **arrays})
        return out

    @property
    def n_neurons(self) -> int:
        return sum(len(c) for c in self.coords)

    def crop(self, rng: np.random.Generator, shape=(48, 128, 128), zoom: tuple[float, float] = (0.7, 1.6),
             min_voxels: int = 30) -> np.ndarray:
        """(N, Z, Y, X) float32 coverage of the neurons in one random crop: centred near a
        neuron voxel, axes permuted (the FISBe voxels are isotropic), flipped, rotated in the new
        YX plane, rescaled by a log-uniform ``zoom`` (linear interpolation). N may be 0."""
        from scipy import ndimage as ndi

        shape = tuple(int(v) for v in shape)
        i = int(rng.choice(len(self.coords), p=self.weights))
        cs = [c for c in self.coords[i] if len(c)]
        pick = cs[int(rng.integers(len(cs)))]
        centre = pick[int(rng.integers(len(pick)))].astype(float) + rng.normal(0, 8, 3)
        z = float(np.exp(rng.uniform(np.log(zoom[0]), np.log(zoom[1]))))
        th = rng.uniform(0, 2 * np.pi)
        rot = np.array([[1, 0, 0], [0, np.cos(th), -np.sin(th)], [0, np.sin(th), np.cos(th)]])
        perm = np.eye(3)[rng.permutation(3)] if rng.random() < 0.5 else np.eye(3)
        flip = np.diag(np.where(rng.random(3) < 0.5, -1.0, 1.0))
        mat = perm @ flip @ rot / z  # output offset from the centre → source offset
        oc = (np.asarray(shape) - 1) / 2.0
        corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(3, -1).T - oc
        src = corners @ mat.T + centre
        full = np.asarray(self.shapes[i])
        lo = np.maximum(np.floor(src.min(0)).astype(int) - 1, 0)
        hi = np.minimum(np.ceil(src.max(0)).astype(int) + 2, full)
        out = []
        if np.any(hi <= lo):
            return np.zeros((0,) + shape, np.float32)
        for c in self.coords[i]:
            sel = np.all((c >= lo) & (c < hi), axis=1)
            if sel.sum() < min_voxels:
                continue
            box = np.zeros(tuple(hi - lo), np.float32)
            cc = c[sel].astype(np.int64) - lo
            box[cc[:, 0], cc[:, 1], cc[:, 2]] = 1.0
            offset = centre - lo - mat @ oc
            m = ndi.affine_transform(box, mat, offset=offset, output_shape=shape, order=1, mode="constant", cval=0.0)
            if (m >= 0.5).sum() >= min_voxels:
                out.append(m.astype(np.float32))
        return np.stack(out) if out else np.zeros((0,) + shape, np.float32)


class SyntheticSource:
    """A refreshing pool of synthetic FISBe-like volumes (training seeds ≥ TRAIN_SEED_BASE).

    ``wide``: fraction of volumes drawn with :meth:`NeuronSettings.randomized_wide` (else the
    standard/hard presets varied by ``randomize``); ``morphology`` (:class:`RealMorphology`)
    and ``morphology_fraction``: that fraction of volumes renders real neuron masks with the
    (wide or preset) appearance instead of generated trees. Defaults keep the former stream."""

    def __init__(self, pool_size: int = 24, shape=(48, 128, 128), hard_fraction: float = 0.5,
                 seed: int = 0, refresh_every: int = 40, randomize: float = 0.25, wide: float = 0.0,
                 morphology: RealMorphology | None = None, morphology_fraction: float = 0.0):
        self.shape = tuple(shape)
        self.pool_size = pool_size
        self.hard_fraction = hard_fraction
        self.refresh_every = refresh_every
        self.randomize = randomize
        self.wide = float(wide)
        self.morphology = morphology
        self.morphology_fraction = float(morphology_fraction) if morphology is not None else 0.0
        self.rng = np.random.default_rng(seed)
        self.next_seed = TRAIN_SEED_BASE + 1000 * seed
        self.samples: list[Sample] = []
        self._served = 0

    def _make(self) -> Sample:
        from napari_neuroseg.synth import NeuronSettings, make_neurons, render_neurons

        seed = self.next_seed
        self.next_seed += 1
        hard = bool(self.rng.random() < self.hard_fraction)
        base = NeuronSettings.hard() if hard else NeuronSettings.standard()
        srng = np.random.default_rng(seed)
        kind = ["hard"] if hard else []
        if self.wide and self.rng.random() < self.wide:
            settings, kind = base.randomized_wide(srng), ["wide"]
        else:
            settings = base.randomized(srng, self.randomize) if self.randomize else base
        v = None
        if self.morphology_fraction and self.rng.random() < self.morphology_fraction:
            for _ in range(5):
                masks = self.morphology.crop(srng, self.shape)
                if len(masks):
                    v = render_neurons(masks, seed=seed, settings=settings)
                    kind.append("real")
                    break
        if v is None:
            v = make_neurons(self.shape, settings=settings, seed=seed)
        s = make_sample(v.raw, gt=v.gt_instances, name="-".join([f"synth-{seed}"] + kind), rng=self.rng)
        s.raw = apply_norm(v.raw, s.norm).astype(np.float16)
        s.pre_normalised = True
        return s

    def fill(self):
        """Generator filling the pool; yields (done, total)."""
        while len(self.samples) < self.pool_size:
            self.samples.append(self._make())
            yield len(self.samples), self.pool_size

    def pick(self, rng: np.random.Generator) -> Sample:
        if not self.samples:
            for _ in self.fill():
                pass
        self._served += 1
        if self.refresh_every and self._served % self.refresh_every == 0:
            self.samples[int(rng.integers(len(self.samples)))] = self._make()
        return self.samples[int(rng.integers(len(self.samples)))]


class VolumeSource:
    """Fixed list of samples (FISBe Zarr or raw/label pairs)."""

    def __init__(self, samples: list[Sample]):
        if not samples:
            raise NeurosegError("no training samples", fix="check the --data folder")
        self.samples = samples

    def pick(self, rng: np.random.Generator) -> Sample:
        return self.samples[int(rng.integers(len(self.samples)))]


# ---------------------------------------------------------------------------------------------
# FISBe / pair folders


def _fisbe_arrays(path: Path, need: str, problem: str, fix: str):
    """``(raw, gt_instances)`` Zarr arrays of a FISBe sample that must hold ``need``; else a
    NeurosegError ``problem (cause)`` with ``fix``."""
    try:
        raw, gt = open_fisbe_arrays(path)
        if (raw if need == RAW_KEY else gt) is None:
            raise KeyError(need)
    except Exception as err:  # noqa: BLE001
        raise NeurosegError(f"{problem} ({type(err).__name__}: {err})", path=path, fix=fix) from err
    return raw, gt


def _open_gt(path: Path):
    """(None, gt_instances) of a FISBe Zarr (masks only)."""
    _raw, gt = _fisbe_arrays(path, GT_KEY, "no FISBe ground truth",
                             "real morphology needs FISBe Zarr samples with volumes/gt_instances (N,Z,Y,X)")
    if len(gt.shape) != 4:
        raise NeurosegError(f"volumes/gt_instances must be (N,Z,Y,X), got {gt.shape}", path=path,
                            fix="use FISBe samples")
    return None, gt


def _open_fisbe(path: Path):
    return _fisbe_arrays(path, RAW_KEY, "not a FISBe sample",
                         "a FISBe Zarr needs volumes/raw (3,Z,Y,X) and volumes/gt_instances (N,Z,Y,X)")


def _read_split(path: Path) -> dict[str, str]:
    """Map sample name → split from a JSON ({"train": [...], "val": [...], ...}) or text/CSV file
    (``name,split`` or ``name split`` per line; names may end in .zarr)."""
    text = path.read_text()
    out: dict[str, str] = {}
    try:
        js = json.loads(text)
    except json.JSONDecodeError:
        js = None
    if isinstance(js, dict):
        for split, names in js.items():
            for n in names:
                out[Path(str(n)).name.removesuffix(".zarr")] = str(split)
        return out
    for line in text.splitlines():
        parts = [p for p in line.replace(",", " ").replace("\t", " ").split() if p]
        if len(parts) >= 2 and not line.startswith("#"):
            out[Path(parts[0]).name.removesuffix(".zarr")] = parts[1].lower()
    if not out:
        raise NeurosegError("cannot read the split file", path=path,
                            fix='use JSON {"train": [...], "val": [...]} or lines "NAME,SPLIT"')
    return out


def find_samples(data_dir: str | Path, split_file: str | Path | None = None) -> dict[str, list[Path]]:
    """Sample paths per split ("train", "val") of a training folder.

    Layouts: FISBe Zarr groups (``*.zarr`` with ``volumes/raw``), directly in DIR, or in
    ``DIR/train`` and ``DIR/val`` (the official split layout), or with a split file
    (``--split``, or ``DIR/split.json``/``split.csv``/``split.txt``); raw/label pairs in
    ``DIR/raw/NAME.{tif,zarr}`` and ``DIR/labels/NAME.{tif,zarr}``. Without a split, every 5th
    sample (at least one, when there are ≥ 2) is held out for validation.
    """
    d = Path(data_dir)
    if not d.is_dir():
        raise NeurosegError("training data folder not found", path=d, fix="pass --data DIR with FISBe .zarr samples")
    if (d / "train").is_dir():
        out = {"train": sorted((d / "train").glob("*.zarr")),
               "val": sorted((d / "val").glob("*.zarr")) if (d / "val").is_dir() else []}
        if out["train"]:
            return out
    if (d / "raw").is_dir() and (d / "labels").is_dir():
        raws = sorted(p for p in (d / "raw").iterdir() if not p.name.startswith("."))
        pairs = []
        for r in raws:
            cands = [c for c in (d / "labels").iterdir() if c.stem == r.stem]
            if cands:
                pairs.append(r)
        if not pairs:
            raise NeurosegError("no raw/label pairs with matching names", path=d,
                                fix="put DIR/raw/NAME.tif and DIR/labels/NAME.tif")
        samples = pairs
    else:
        samples = sorted(p for p in d.glob("*.zarr") if (p / "volumes").exists())
    if not samples:
        raise NeurosegError("no training samples found", path=d,
                            fix="put FISBe *.zarr groups (volumes/raw, volumes/gt_instances) or raw/ + labels/ folders there")
    if split_file is None:
        for cand in ("split.json", "split.csv", "split.txt"):
            if (d / cand).is_file():
                split_file = d / cand
                break
    if split_file is not None:
        split = _read_split(Path(split_file))
        out = {"train": [], "val": []}
        for s in samples:
            sp = split.get(s.name.removesuffix(".zarr"), split.get(s.stem))
            if sp in ("train", "training"):
                out["train"].append(s)
            elif sp in ("val", "validation", "valid"):
                out["val"].append(s)
        if not out["train"]:
            raise NeurosegError("the split file names no training sample in this folder", path=split_file,
                                fix="check the sample names in the split file")
        return out
    if len(samples) == 1:
        return {"train": samples, "val": []}
    val = samples[4::5] or samples[-1:]
    return {"train": [s for s in samples if s not in val], "val": val}


def load_sample(path: Path, rng=None) -> Sample:
    """Open one FISBe Zarr (lazily) or raw/label pair as a :class:`Sample`."""
    path = Path(path)
    if path.parent.name == "raw" and (path.parent.parent / "labels").is_dir():
        from napari_neuroseg.io import read_image, read_labels

        lab_path = next(c for c in (path.parent.parent / "labels").iterdir() if c.stem == path.stem)
        vol = read_image(path)
        raw = np.asarray(vol.data)
        if raw.ndim != 4 or raw.shape[0] != 3:
            raise NeurosegError(f"raw must be (3,Z,Y,X), got {raw.shape}", path=path,
                                fix="save the raw as a CZYX volume with 3 colour channels first")
        labels = np.asarray(read_labels(lab_path))
        if labels.ndim == 4:
            return make_sample(raw, gt=labels, name=path.stem, rng=rng)
        return make_sample(raw, labels=labels, name=path.stem, rng=rng)
    raw, gt = _open_fisbe(path)
    if gt is None:
        raise NeurosegError("the sample has no volumes/gt_instances", path=path,
                            fix="training needs ground truth; predict-only samples cannot be used")
    if len(raw.shape) != 4 or raw.shape[0] != 3 or tuple(gt.shape[1:]) != tuple(raw.shape[1:]):
        raise NeurosegError(f"raw {raw.shape} and gt_instances {gt.shape} do not fit", path=path,
                            fix="volumes/raw must be (3,Z,Y,X) and volumes/gt_instances (N,Z,Y,X)")
    return make_sample(raw, gt=gt, name=path.name, rng=rng)


# ---------------------------------------------------------------------------------------------
# patches and augmentation


def sample_patch(sample: Sample, patch: tuple[int, int, int], rng: np.random.Generator,
                 p_fg: float = 0.7, p_overlap: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """A (raw (3,z,y,x), stack (n,z,y,x)) patch; centred on an overlap voxel with probability
    ``p_overlap`` (if any), on a foreground voxel with ``p_fg``, else anywhere. Zero-padded where
    the volume is smaller than the patch."""
    shape = sample.shape
    u = rng.random()
    centre = None
    if u < p_overlap and sample.overlap_coords is not None and len(sample.overlap_coords):
        centre = sample.overlap_coords[rng.integers(len(sample.overlap_coords))]
    elif u < p_overlap + p_fg and sample.fg_coords is not None and len(sample.fg_coords):
        centre = sample.fg_coords[rng.integers(len(sample.fg_coords))]
    sl, pads = [], []
    for ax, (n, p) in enumerate(zip(shape, patch)):
        if n <= p:
            sl.append(slice(0, n))
            pads.append((0, p - n))
            continue
        if centre is None:
            start = int(rng.integers(0, n - p + 1))
        else:
            start = int(np.clip(centre[ax] - p // 2 + rng.integers(-p // 4, p // 4 + 1), 0, n - p))
        sl.append(slice(start, start + p))
        pads.append((0, 0))
    raw, stack = sample.crop(tuple(sl))
    if any(p[1] for p in pads):
        raw = np.pad(raw, [(0, 0)] + pads)
        stack = np.pad(stack, [(0, 0)] + pads)
    return raw, stack


def augment(raw: np.ndarray, stack: np.ndarray, rng: np.random.Generator, *, elastic: bool = False
            ) -> tuple[np.ndarray, np.ndarray]:
    """Random flips (Z, Y, X), rot90 in YX, colour permutation and mixing (hue), per-channel and
    global gain, noise, intensity gaps along neurites, optional elastic deformation. Targets are
    computed after this, so geometric changes stay consistent with the affinities."""
    raw = raw.astype(np.float32, copy=True)
    for ax in (1, 2, 3):
        if rng.random() < 0.5:
            raw = np.flip(raw, ax)
            stack = np.flip(stack, ax)
    if raw.shape[2] == raw.shape[3]:
        k = int(rng.integers(4))
        raw = np.rot90(raw, k, axes=(2, 3))
        stack = np.rot90(stack, k, axes=(2, 3))
    if elastic and rng.random() < 0.5:
        raw, stack = _elastic(raw, stack, rng)
    raw = np.ascontiguousarray(raw)
    stack = np.ascontiguousarray(stack)
    # hue: permute channels and mix them slightly
    raw = raw[rng.permutation(3)]
    if rng.random() < 0.5:
        mix = np.eye(3, dtype=np.float32) + rng.uniform(0, 0.15, (3, 3)).astype(np.float32) * (1 - np.eye(3, dtype=np.float32))
        raw = np.einsum("ij,j...->i...", mix, raw)
    gain = rng.uniform(0.7, 1.3, 3).astype(np.float32) * np.float32(rng.uniform(0.5, 1.6))
    raw *= gain[:, None, None, None]
    fg = stack.any(0) if len(stack) else np.zeros(raw.shape[1:], bool)
    # gaps along neurites: dim small balls around random foreground voxels (GT unchanged)
    if fg.any() and rng.random() < 0.6:
        pts = np.argwhere(fg)
        for _ in range(int(rng.integers(1, 6))):
            c = pts[rng.integers(len(pts))]
            r = rng.uniform(1.5, 4.0)
            lo = np.maximum(c - int(np.ceil(r)), 0)
            hi = np.minimum(c + int(np.ceil(r)) + 1, raw.shape[1:])
            zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            ball = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r
            raw[:, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] *= np.where(ball, rng.uniform(0.0, 0.4), 1.0).astype(np.float32)
    if rng.random() < 0.7:
        raw += rng.normal(0, rng.uniform(0.005, 0.06), raw.shape).astype(np.float32)
    np.clip(raw, -0.5, 4.0, out=raw)
    return raw, stack


def _elastic(raw, stack, rng, alpha: float = 3.0, sigma: float = 6.0):
    from scipy import ndimage

    shape = raw.shape[1:]
    coarse = [rng.normal(0, 1, tuple(max(2, s // 8) for s in shape)) for _ in range(3)]
    disp = []
    for c in coarse:
        d = ndimage.zoom(c, [s / cs for s, cs in zip(shape, c.shape)], order=1)
        d = ndimage.gaussian_filter(d, sigma / 8) * alpha
        disp.append(d[: shape[0], : shape[1], : shape[2]])
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    coords = [g + d for g, d in zip(grid, disp)]
    raw = np.stack([ndimage.map_coordinates(ch, coords, order=1, mode="reflect") for ch in raw])
    stack = np.stack([ndimage.map_coordinates(ch, coords, order=0, mode="reflect") for ch in stack]) if len(stack) else stack
    return raw.astype(np.float32), stack
