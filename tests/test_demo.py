"""The README's main command: ``neuroseg demo`` segments and scores both bundled samples."""

from __future__ import annotations

import tifffile

from napari_neuroseg.cli import main
from napari_neuroseg.io import read_fisbe


def test_demo_segments_and_scores_bundled_samples(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "nuclei" in out and "F1@0.5" in out
    assert "neurons" in out and "avF1" in out
    nuclei = tifffile.imread(tmp_path / "nuclei_labels.tif")
    assert nuclei.ndim == 3 and nuclei.max() > 10
    sample = read_fisbe(tmp_path / "neurons_pred.zarr")
    assert sample.gt_instances is not None and sample.gt_instances.shape[0] >= 1
    assert sample.raw is not None and sample.raw.shape[0] == 3
