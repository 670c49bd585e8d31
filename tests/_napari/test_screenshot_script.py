"""scripts/screenshot_widgets.py keeps working: it drives the Batch and Fine-tune docks in a
1280x800 window and writes one PNG per step (the model-running steps are left to the script's
own runs: minutes of CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.gui, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "screenshot_widgets.py"


def test_screenshot_script_drives_the_docks(tmp_path):
    from imageio.v3 import imread

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--only", "batch", "finetune"],
                          capture_output=True, text=True, timeout=600, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ["widgets-batch-1-dock.png", "widgets-batch-2-result.png", "widgets-batch-3-open-result.png",
                     "widgets-finetune-1-dock.png"]
    for name in names:
        img = imread(tmp_path / name)
        assert img.shape[:2] == (800, 1280), (name, img.shape)
        assert np.asarray(img)[..., :3].std() > 5  # not a blank window
    assert "failed steps: none" in proc.stdout
