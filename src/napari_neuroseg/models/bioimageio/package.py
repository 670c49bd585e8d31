"""Open a BioImage.IO model package (a folder, its ``rdf.yaml``/``bioimageio.yaml``, or a ``.zip``)
without running anything from it and without the network.

* The description is read with ``yaml.safe_load`` (plain data only: no tags, no objects).
* Files are read only when a description field names them, by a relative path inside the package:
  absolute paths, ``..``, URLs, symbolic links (in a zip or a folder) and paths that resolve outside
  the folder are refused. A zip is never extracted as a whole: each needed member is copied to a
  name chosen here in a private temporary folder (no zip slip), with a size limit.
* Format 0.4 (``name``, ``attachments: {files: [...]}``, file names as strings, axes as a string)
  and 0.5 (``id``, lists of ``{source: ...}``, axes as lists of dicts) are both read.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from napari_neuroseg.errors import NeurosegError

__all__ = ["RDF_NAMES", "ModelPackage", "find_rdf", "is_package", "source_of"]

#: Names of the description file inside a package (first found wins).
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
#: The largest member read out of a zip (weights of a big model fit easily).
MAX_MEMBER_BYTES = 4 << 30
#: A member compressed more than this is refused (zip bomb).
MAX_RATIO = 1000

_FIX_PKG = "give a BioImage.IO model package: a folder with rdf.yaml, the rdf.yaml itself or the .zip from the Zoo"


def _is_rdf_name(name: str) -> bool:
    return name in RDF_NAMES or name.endswith(".bioimageio.yaml")


def find_rdf(folder: Path) -> Path | None:
    """The description file of a package folder, or None."""
    for n in RDF_NAMES:
        if (folder / n).is_file():
            return folder / n
    found = sorted(folder.glob("*.bioimageio.yaml"))
    return found[0] if found else None


def is_package(path: str | Path) -> bool:
    """Whether ``path`` looks like a BioImage.IO package (cheap: no parsing)."""
    p = Path(path)
    if p.is_dir():
        return find_rdf(p) is not None and not (p / "config.json").is_file()
    if p.is_file() and _is_rdf_name(p.name):
        return True
    if p.is_file() and p.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(p) as z:
                return any(_is_rdf_name(n) for n in z.namelist() if "/" not in n.strip("/"))
        except (OSError, zipfile.BadZipFile):
            return False
    return False


def source_of(entry: Any) -> str | None:
    """The file name of a description entry: a string (format 0.4) or ``{source: ...}`` (0.5)."""
    if entry is None:
        return None
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict):
        s = entry.get("source", entry.get("uri"))
        return None if s is None else str(s)
    return str(entry)


def _safe_relative(name: str, where: Path) -> PurePosixPath:
    """``name`` as a path inside the package, or a NeurosegError."""
    s = str(name).strip()
    if "://" in s or s.startswith(("http:", "https:", "doi:", "zenodo:")):
        raise NeurosegError(
            f"the package refers to the remote file {s!r}; files are never downloaded at run time",
            path=where, fix="download the complete package (.zip) from the BioImage.IO Model Zoo and open that",
        )
    p = PurePosixPath(s.replace("\\", "/"))
    if not s or p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise NeurosegError(f"the package names the file {s!r} outside itself", path=where,
                            fix="use a package whose files are named relative to its rdf.yaml")
    return p


class ModelPackage:
    """An opened package: :attr:`rdf` (the parsed description) and :meth:`file` (a local copy or
    the file itself of a member named by the description). Use as a context manager; temporary
    copies are removed on :meth:`close`."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self._zip: zipfile.ZipFile | None = None
        self._tmp: Path | None = None
        self._root: Path | None = None
        self._prefix = ""
        if not self.path.exists():
            raise NeurosegError("model package not found", path=self.path, fix=_FIX_PKG)
        if self.path.is_dir():
            rdf = find_rdf(self.path)
            if rdf is None:
                raise NeurosegError("no rdf.yaml (or bioimageio.yaml) in the folder", path=self.path, fix=_FIX_PKG)
            self._root, self.rdf_name = self.path, rdf.name
            text = self._read_local(rdf)
        elif self.path.suffix.lower() == ".zip":
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (OSError, zipfile.BadZipFile) as err:
                raise NeurosegError(f"not a readable zip file ({err})", path=self.path, fix=_FIX_PKG) from err
            names = [n for n in self._zip.namelist() if _is_rdf_name(PurePosixPath(n).name)]
            top = [n for n in names if "/" not in n.strip("/")]
            if not top and names:  # a zip of the package folder: rdf.yaml one level down
                one = [n for n in names if n.count("/") == 1]
                top = one[:1]
            if not top:
                self.close()
                raise NeurosegError("the zip holds no rdf.yaml", path=self.path, fix=_FIX_PKG)
            pick = sorted(top, key=lambda n: (PurePosixPath(n).name not in RDF_NAMES, n))[0]
            self.rdf_name = pick
            self._prefix = pick[: len(pick) - len(PurePosixPath(pick).name)]
            text = self._read_member(pick).decode("utf-8", errors="replace")
        elif _is_rdf_name(self.path.name) or self.path.suffix.lower() in (".yaml", ".yml"):
            self._root, self.rdf_name = self.path.parent, self.path.name
            text = self._read_local(self.path)
        else:
            raise NeurosegError("not a BioImage.IO model package", path=self.path, fix=_FIX_PKG)
        self.rdf = self._parse(text)

    # -- reading ---------------------------------------------------------------------------
    def _parse(self, text: str) -> dict:
        import yaml

        try:
            rdf = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise NeurosegError(f"the package description is not valid YAML ({str(err).splitlines()[0]})",
                                path=self.path, fix="restore the package") from err
        if not isinstance(rdf, dict):
            raise NeurosegError("the package description is not a YAML mapping", path=self.path, fix=_FIX_PKG)
        return rdf

    def _read_local(self, p: Path) -> str:
        try:
            return p.read_text(encoding="utf-8", errors="replace")
        except OSError as err:
            raise NeurosegError(f"cannot read the package description ({err})", path=p, fix=_FIX_PKG) from err

    def _member_info(self, name: str) -> zipfile.ZipInfo:
        assert self._zip is not None
        try:
            info = self._zip.getinfo(name)
        except KeyError:
            raise NeurosegError(f"the package has no file {name!r}", path=self.path,
                                fix="the package is incomplete: download it again") from None
        if stat.S_ISLNK(info.external_attr >> 16):
            raise NeurosegError(f"the package file {name!r} is a symbolic link (refused)", path=self.path,
                                fix="use a package with plain files")
        if info.file_size > MAX_MEMBER_BYTES or info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise NeurosegError(f"the package file {name!r} is too large ({info.file_size} bytes unpacked)",
                                path=self.path, fix="use a package of a regular size")
        return info

    def _read_member(self, name: str) -> bytes:
        assert self._zip is not None
        info = self._member_info(name)
        with self._zip.open(info) as f:
            data = f.read(MAX_MEMBER_BYTES + 1)
        if len(data) > MAX_MEMBER_BYTES:
            raise NeurosegError(f"the package file {name!r} is too large", path=self.path, fix="check the package")
        return data

    def file(self, name: str) -> Path:
        """A local path to the package file ``name`` (relative to the description)."""
        rel = _safe_relative(name, self.path)
        if self._zip is None:
            assert self._root is not None
            p = self._root / Path(*rel.parts)
            if p.is_symlink():
                raise NeurosegError(f"the package file {name!r} is a symbolic link (refused)", path=p,
                                    fix="use a package with plain files")
            root = self._root.resolve()
            if root not in p.resolve().parents or not p.is_file():
                raise NeurosegError(f"the package has no file {name!r}", path=self.path,
                                    fix="the package is incomplete: download it again")
            return p
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="neuroseg-bioimageio-"))
        member = self._prefix + str(rel)
        info = self._member_info(member)
        digest = hashlib.sha1(member.encode()).hexdigest()[:12]
        suffix = "".join(c for c in PurePosixPath(member).suffix if c.isalnum() or c == ".")[:10]
        out = self._tmp / f"{digest}{suffix}"  # a name chosen here: no path from the archive is used
        if not out.exists():
            with self._zip.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            if out.stat().st_size > MAX_MEMBER_BYTES:
                out.unlink()
                raise NeurosegError(f"the package file {name!r} is too large", path=self.path, fix="check the package")
        return out

    # -- lifetime --------------------------------------------------------------------------
    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> "ModelPackage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
