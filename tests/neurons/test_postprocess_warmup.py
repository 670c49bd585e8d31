"""The post-processing's warm-up compiles (or loads) what a prediction calls, and nothing less."""

from __future__ import annotations

import subprocess
import sys

import pytest

#: in a fresh interpreter: warm up, then predict with the shipped model (design A) and post-process
#: the same network outputs as a fine-tuned model may (affinities, whitened colours); prints the
#: kernel signatures the prediction added after the warm-up, and whether the warm-up made any
CODE = """
import numba
import numpy as np
from napari_neuroseg.models.neurons import PostprocessParams, instances_from_outputs, normalize, predict
from napari_neuroseg.models.neurons import _postprocess_kernels as K
from napari_neuroseg.models.neurons.postprocess import warmup
from napari_neuroseg.synth import make_neurons

def signatures():
    return {(n, str(s)) for n in dir(K) if isinstance(getattr(K, n), numba.core.registry.CPUDispatcher)
            for s in getattr(K, n).signatures}

warmup()
warm = signatures()
raw = make_neurons((24, 48, 48), seed=7, n_neurons=3).raw
res = predict(raw, return_outputs=True)
instances_from_outputs(res.foreground, res.affinities, normalize(raw),
                       PostprocessParams(use_affinities=True, colour_whiten=True))
print(len(warm) > 0, res.n_instances > 0, sorted(signatures() - warm))
"""


@pytest.mark.timeout(200)
def test_a_prediction_after_the_warmup_compiles_no_kernel():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True True []"
