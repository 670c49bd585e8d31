"""The model pickers of the Nuclei and Neurons docks never execute a model file (issue 16, finding 1)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_neurons_widget_model_field_refuses_a_payload(make_napari_viewer, tmp_path):
    import torch

    from napari_neuroseg._napari.neurons_widget import FILE, NeuronsWidget
    from napari_neuroseg.models.neurons import NetConfig, save_model

    marker = tmp_path / "marker"
    cfg = NetConfig(base=4, levels=2)
    path = tmp_path / "evil.pt"
    save_model(path, cfg.build(), cfg)
    ckpt = torch.load(path, weights_only=True)
    ckpt["train_info"] = _Payload(marker)
    torch.save(ckpt, path)

    w = NeuronsWidget(make_napari_viewer())
    f = w.form
    before = (f.fg_threshold.value, f.merge_threshold.value, f.min_size.value)
    f.model.value = FILE
    f.model_path.value = str(path)
    assert not marker.exists()
    assert "refused" in w.status.text()
    assert (f.fg_threshold.value, f.merge_threshold.value, f.min_size.value) == before


def test_nuclei_widget_threshold_preview_refuses_a_payload(tmp_path):
    import torch

    from napari_neuroseg._napari.nuclei_widget import _model_thresholds

    marker = tmp_path / "marker"
    torch.save({"thresholds": {"prob": 0.1}, "payload": _Payload(marker)}, tmp_path / "evil.pt")
    assert _model_thresholds(str(tmp_path / "evil.pt")) is None
    assert not marker.exists()
