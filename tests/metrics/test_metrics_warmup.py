"""The metrics' warm-up compiles (or loads) what an evaluation calls, and nothing less."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from napari_neuroseg.metrics.warmup import label_signature

#: in a fresh interpreter: warm up for uint16 ground truth / uint32 prediction, then evaluate
#: both tasks; prints whether the warm-up compiled anything and the numba signatures (of every
#: module loaded) the evaluations added after it
CODE = """
import sys
import numba
import numpy as np
from napari_neuroseg.metrics.warmup import label_signature, warmup
from napari_neuroseg.metrics.nuclei import evaluate_task_iter
from napari_neuroseg.runtime.progress import run_to_completion

def signatures():
    out = set()
    for name, mod in list(sys.modules.items()):
        for key, obj in list(vars(mod).items()) if mod is not None else ():
            if isinstance(obj, numba.core.registry.CPUDispatcher):
                out |= {(name, key, str(s)) for s in obj.signatures}
    return out

gt = np.zeros((24, 48, 48), np.uint16)
for i in range(12):
    z, y, x = 2 + (i % 4) * 5, 4 + (i // 4) * 14, 6 + (i % 3) * 14
    gt[z:z + 4, y:y + 8, x:x + 30] = i + 1
pred = gt.astype(np.uint32)
pred[pred == 3] = 0
warmup([(label_signature(gt), label_signature(pred))])
warm = signatures()
for task in ("nuclei", "neurons"):
    run_to_completion(evaluate_task_iter(task, gt, pred, False, with_instances=True))
print(len(warm) > 0, sorted(signatures() - warm))
"""


@pytest.mark.timeout(200)
def test_an_evaluation_after_the_warmup_compiles_no_kernel():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True []"


def test_label_signature():
    assert label_signature(np.zeros((2, 3, 4), np.uint16)) == ("<u2", 3)
    assert label_signature(np.zeros((3, 4), bool)) == ("|u1", 2)  # as the nuclei metrics read it
    assert label_signature(np.zeros((2, 3, 4), np.float32)) is None
    assert label_signature(np.zeros((1, 2, 3, 4), np.int32)) is None
    assert label_signature(None) is None and label_signature(type("A", (), {"dtype": "no", "ndim": 3})()) is None
