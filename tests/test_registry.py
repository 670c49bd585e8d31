"""The user model folder (models/registry.py), `neuroseg models list`, model names everywhere and
the shared training flag names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.models import registry


@pytest.fixture(autouse=True)
def _user_models(tmp_path, monkeypatch):
    monkeypatch.setenv(registry.ENV_VAR, str(tmp_path / "user_models"))


def _fake_nuclei_model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in ("config.json", "thresholds.json", "weights.pt", "scale.json", "MODEL_CARD.md"):
        (folder / name).write_text("{}")
    (folder / "checkpoint.pt").write_text("optimizer state")
    (folder / ".weights.pt.tmp").write_text("temporary")
    return folder


def test_models_dir_env_and_default(tmp_path, monkeypatch):
    import platformdirs

    assert registry.models_dir() == tmp_path / "user_models"
    monkeypatch.delenv(registry.ENV_VAR)
    assert registry.models_dir() == Path(platformdirs.user_data_dir("napari-neuroseg")) / "models"


def test_register_list_lookup_replace(tmp_path):
    src = _fake_nuclei_model(tmp_path / "out" / "my_nuclei")
    entry = registry.register_model(src, kind="nuclei", voxel_size=(0.5, 0.25, 0.25),
                                    scores={"f1_0.5_heldout_before": 0.1, "f1_0.5_heldout_after": 0.9})
    dest = tmp_path / "user_models" / "my_nuclei"
    assert entry["path"] == str(dest) and entry["name"] == "my_nuclei"
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        ["config.json", "thresholds.json", "weights.pt", "scale.json", "MODEL_CARD.md", registry.ENTRY_FILE])
    rows = {d["name"]: d for d in registry.list_models()}
    assert {"neuroseg_nuclei", "neuroseg_neurons", "my_nuclei"} <= set(rows)
    assert rows["neuroseg_nuclei"]["shipped"] and rows["neuroseg_nuclei"]["voxel_size"] == [0.5, 0.25, 0.25]
    assert rows["neuroseg_neurons"]["kind"] == "neurons" and Path(rows["neuroseg_neurons"]["path"]).is_file()
    assert rows["my_nuclei"]["scores"]["f1_0.5_heldout_after"] == 0.9 and not rows["my_nuclei"]["shipped"]
    assert registry.lookup("my_nuclei")["kind"] == "nuclei" and registry.lookup("nope") is None
    assert registry.lookup("../etc") is None
    # registering again under the same name replaces it in one step
    (src / "thresholds.json").write_text('{"prob": 0.4}')
    registry.register_model(src, kind="nuclei")
    assert (dest / "thresholds.json").read_text() == '{"prob": 0.4}'
    assert not [p for p in (tmp_path / "user_models").iterdir() if p.name.startswith(".")]
    with pytest.raises(NeurosegError, match="already registered"):
        registry.register_model(src, kind="nuclei", replace=False)


def test_bad_registrations(tmp_path):
    src = _fake_nuclei_model(tmp_path / "m")
    with pytest.raises(NeurosegError, match="cannot be a registered model name"):
        registry.register_model(src, kind="nuclei", name="neuroseg_nuclei")
    with pytest.raises(NeurosegError, match="cannot be a registered model name"):
        registry.register_model(src, kind="nuclei", name="../evil")
    with pytest.raises(NeurosegError, match="unknown model kind"):
        registry.register_model(src, kind="cells")
    with pytest.raises(NeurosegError, match="not found"):
        registry.register_model(tmp_path / "missing", kind="nuclei")
    # an entry pointing outside its folder is ignored
    bad = tmp_path / "user_models" / "bad"
    bad.mkdir(parents=True)
    (bad / registry.ENTRY_FILE).write_text(json.dumps({"kind": "nuclei", "file": "../../etc/passwd"}))
    assert registry.lookup("bad") is None


def test_disk_full_while_registering(tmp_path, monkeypatch):
    import errno
    import shutil

    src = _fake_nuclei_model(tmp_path / "m")
    registry.register_model(src, kind="nuclei")
    before = sorted(p.name for p in (tmp_path / "user_models" / "m").iterdir())

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copy2", full)
    with pytest.raises(NeurosegError, match="cannot register") as e:
        registry.register_model(src, kind="nuclei")
    assert str(src) in str(e.value)  # says where the trained model is
    assert sorted(p.name for p in (tmp_path / "user_models" / "m").iterdir()) == before  # old entry intact
    assert not [p for p in (tmp_path / "user_models").iterdir() if p.name.startswith(".")]


def test_names_resolve_by_kind(tmp_path):
    from napari_neuroseg.models.neurons.model import DEFAULT_MODEL
    from napari_neuroseg.models.stardist3d.pretrained import (
        BUNDLED_DIR,
        resolve_model_path,
    )

    nuc = _fake_nuclei_model(tmp_path / "nuc")
    registry.register_model(nuc, kind="nuclei", name="reg_nuc")
    pt = tmp_path / "neu.pt"
    pt.write_bytes(b"x")
    registry.register_model(pt, kind="neurons", name="reg_neu")
    assert resolve_model_path("neuroseg_nuclei") == BUNDLED_DIR / "neuroseg_nuclei"
    assert resolve_model_path("reg_nuc") == tmp_path / "user_models" / "reg_nuc"
    assert registry.resolve_neuron_model("neuroseg_neurons") == DEFAULT_MODEL
    assert registry.resolve_neuron_model("reg_neu") == tmp_path / "user_models" / "reg_neu" / "model.pt"
    assert registry.resolve_neuron_model(None) is None
    with pytest.raises(NeurosegError, match="neuron model, not a StarDist-3D nuclei model"):
        resolve_model_path("neuroseg_neurons")
    with pytest.raises(NeurosegError, match="is a neurons model, not a nuclei model"):
        resolve_model_path("reg_neu")
    with pytest.raises(NeurosegError, match="is a nuclei model, not a neuron model"):
        registry.resolve_neuron_model("reg_nuc")
    with pytest.raises(NeurosegError, match="nuclei model"):
        registry.resolve_neuron_model("neuroseg_nuclei")
    with pytest.raises(NeurosegError, match="nuclei model folder"):
        registry.resolve_neuron_model(nuc)
    with pytest.raises(NeurosegError, match="models list"):
        resolve_model_path("no_such_model")


def test_models_list_cli(tmp_path, capsys):
    from napari_neuroseg.cli import main

    registry.register_model(_fake_nuclei_model(tmp_path / "mine"), kind="nuclei", voxel_size=(0.5, 0.25, 0.25),
                            scores={"f1_0.5_heldout_before": 0.15, "f1_0.5_heldout_after": 0.85})
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "neuroseg_nuclei (shipped)" in out and "neuroseg_neurons (shipped)" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("mine "))
    assert "nuclei" in line and "0.5 x 0.25 x 0.25" in line and "0.150 -> 0.850" in line
    assert str(tmp_path / "user_models" / "mine") in line
    assert main(["models", "list", "--json", "--kind", "neurons"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in doc["models"]] == ["neuroseg_neurons"]


def test_shared_training_flag_names():
    from napari_neuroseg.cli import build_parser

    p = build_parser()
    for argv in (["--init-from", "A", "--output", "O", "--steps", "5"], ["--init", "A", "--out", "O", "--iterations", "5"],
                 ["--init-from", "A", "-o", "O", "--steps", "5"]):
        a = p.parse_args(["train", "neurons", "--synthetic", *argv, "--max-minutes", "1", "--device", "cpu"])
        assert (a.init_from, a.output, a.steps, a.max_minutes, a.device) == ("A", "O", 5, 1.0, "cpu")
    for argv in (["--init-from", "A", "--output", "O", "--steps", "5"], ["--init", "A", "-o", "O", "--iterations", "5"]):
        a = p.parse_args(["train", "nuclei", *argv, "--max-minutes", "1", "--device", "cpu"])
        assert (a.init_from, a.output, a.steps, a.max_minutes, a.device) == ("A", "O", 5, 1.0, "cpu")


def test_shipped_paths_need_no_model_code():
    """Finding a shipped model's file (as the docks do when they open) imports neither the model
    packages nor numba nor torch, and the model packages use the same paths (one home)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from napari_neuroseg.models import registry as r\n"
        "n, s = r._shipped_path('neuroseg_neurons'), r._shipped_path('neuroseg_nuclei')\n"
        "assert n.is_file() and s.is_dir(), (n, s)\n"
        "heavy = [m for m in ('torch', 'numba', 'napari_neuroseg.models.neurons',"
        " 'napari_neuroseg.models.stardist3d') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from napari_neuroseg.models.neurons import DEFAULT_MODEL\n"
        "from napari_neuroseg.models.stardist3d.pretrained import BUNDLED_DIR\n"
        "assert DEFAULT_MODEL == n and BUNDLED_DIR / 'neuroseg_nuclei' == s\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
