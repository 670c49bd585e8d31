"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from pathlib import Path

import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

# Nothing written into the repository (CI clones may be read-only; tests write only to
# tmp_path): no example database, and Hypothesis' other caches go to the temp folder. No
# per-example deadline: the suite runs on loaded 2-core machines.
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "napari-neuroseg-hypothesis")
settings.register_profile(
    "neuroseg", database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "neuroseg"))

#: ``../shared`` next to the repository (read-only reference data; absent on some machines).
SHARED_DIR = Path(os.environ.get("NEUROSEG_SHARED", Path(__file__).resolve().parents[2] / "shared"))
REPO_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared reference folder; tests that need it skip cleanly where it is absent."""
    if not (SHARED_DIR / "fisbe").is_dir():
        pytest.skip(f"shared reference data not found at {SHARED_DIR}")
    return SHARED_DIR


@pytest.fixture(scope="session")
def fisbe_real_dir(shared_dir: Path) -> Path:
    """``shared/fisbe/real`` (ground truth, Duan et al. predictions, reference TOMLs)."""
    return shared_dir / "fisbe" / "real"


@pytest.fixture(scope="session")
def repo_dir() -> Path:
    return REPO_DIR


#: test folders whose modules run torch models: torch gets at most 2 threads there (oversubscribed
#: threads on shared CPUs make tiny models crawl)
FEW_THREAD_DIRS = ("bioimageio", "stardist3d")


@pytest.fixture(scope="module", autouse=True)
def _few_threads(request):
    """At most 2 torch threads for each module under :data:`FEW_THREAD_DIRS`, restored after it."""
    if Path(str(request.path)).parent.name not in FEW_THREAD_DIRS:
        yield
        return
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    yield
    torch.set_num_threads(n)


@pytest.fixture
def one_thread():
    """For the trainer tests that set torch's thread count (``threads=1`` in their settings): the
    process's count is restored afterwards."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def pytest_itemcollected(item):
    """Every test under ``tests/_napari`` runs a viewer or Qt widgets: marked ``gui`` (so that
    ``-m 'not gui'`` deselects all of them)."""
    if REPO_DIR / "tests" / "_napari" in Path(str(item.path)).parents and not item.get_closest_marker("gui"):
        item.add_marker(pytest.mark.gui)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """GUI tests need a display. pytest-xvfb (a test dependency) starts Xvfb where it is installed;
    where neither a display nor Xvfb is there, stop with one line saying what to install instead
    of letting Qt abort the process."""
    import sys

    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        return
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return
    if any(item.get_closest_marker("gui") for item in items):
        pytest.exit(
            "GUI tests need a display and none was found: install Xvfb (Debian/Ubuntu: "
            "'apt-get install -y xvfb'; pytest-xvfb then starts it) or deselect them with -m 'not gui'",
            returncode=4,
        )
