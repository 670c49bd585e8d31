import numpy as np
import pytest

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.models.neurons import load_model, predict, predict_iter
from napari_neuroseg.models.neurons.predict import network_outputs
from napari_neuroseg.models.neurons.preprocess import normalize
from napari_neuroseg.runtime.progress import Progress, run_to_completion


def test_tiled_outputs_equal_untiled(tiny_model_path, small_volume):
    m = load_model(tiny_model_path, "cpu")
    img = normalize(small_volume.raw)
    whole = run_to_completion(network_outputs(m, img, n_tiles=(1, 1, 1)))
    tiled = run_to_completion(network_outputs(m, img, n_tiles=(2, 2, 3)))
    assert whole.shape == (7,) + img.shape[1:] and whole.dtype == np.uint8
    assert np.abs(whole.astype(int) - tiled).max() <= 1


def test_predict_labels_consistent_across_tiles(tiny_model_path, small_volume):
    m = load_model(tiny_model_path, "cpu")
    # a random-weight model: make the foreground threshold low enough to get instances
    params = {"fg_threshold": 0.0, "min_size": 1}
    a = predict(small_volume.raw, m, params=params, n_tiles=(1, 1, 1))
    b = predict(small_volume.raw, m, params=params, n_tiles=(2, 2, 2))
    assert a.labels.shape == small_volume.raw.shape[1:] and a.labels.dtype == np.uint32
    assert a.n_instances >= 1
    # same partition (ids may only differ by a permutation)
    pairs = np.unique(np.stack([a.labels.ravel(), b.labels.ravel()]), axis=1)
    assert pairs.shape[1] == len(np.unique(a.labels)) == len(np.unique(b.labels))


def test_progress_and_cancel(tiny_model_path, small_volume):
    """Closing the generator mid-network stops it: no further tiles go through the network (and
    closing raises nothing); a full run's last step is its total."""
    import inspect

    m = load_model(tiny_model_path, "cpu")
    tiles = []
    forward = m.net.forward
    m.net.forward = lambda *a, **k: (tiles.append(1), forward(*a, **k))[1]
    full = list(predict_iter(small_volume.raw, m, n_tiles=(2, 2, 2)))
    n_full = len(tiles)
    assert n_full >= 8 and full[-1].step == full[-1].total
    tiles.clear()
    gen = predict_iter(small_volume.raw, m, n_tiles=(2, 2, 2))
    items = [next(gen) for _ in range(3)]  # normalising, then the first network tiles
    assert all(isinstance(p, Progress) for p in items) and items[-1].message.startswith("network")
    n_at_cancel = len(tiles)
    gen.close()  # cancel
    assert inspect.getgeneratorstate(gen) == inspect.GEN_CLOSED
    assert len(tiles) == n_at_cancel < n_full  # nothing ran after the close, the rest never ran


def test_progress_through_the_post_processing_steps(tiny_model_path, small_volume):
    """The post-processing reports each of its steps (what runs next, its share of the
    post-processing's time done) inside the bar's last unit, after the network's tiles."""
    from napari_neuroseg.models.neurons.postprocess import STEPS, PostprocessParams

    m = load_model(tiny_model_path, "cpu")
    steps = [p for p in predict_iter(small_volume.raw, m, n_tiles=(1, 2, 2),
                                     params=PostprocessParams(fg_threshold=0.0, min_size=1))
             if p.message != "normalising"]
    post = [p for p in steps if p.message.startswith("post-processing: ")]
    assert [p.message.split(": ")[1].split(" (")[0] for p in post] == [text for _, text, _ in STEPS]
    assert [p.message.split("(")[1].split(" %")[0] for p in post] == [str(pct) for _, _, pct in STEPS]
    tiles = [p for p in steps if p.message.startswith("network")]
    assert tiles[-1].step == 400 and {p.total for p in steps} == {500}  # 4 tiles + the post-processing
    assert [p.step for p in post] == [400 + pct for _, _, pct in STEPS]
    assert steps[-1].step == steps[-1].total and steps[-1].message.endswith("neurons")


def test_bad_inputs(tiny_model_path):
    m = load_model(tiny_model_path, "cpu")
    with pytest.raises(NeurosegError, match="single-channel"):
        predict(np.zeros((16, 32, 32), np.uint16), m)
    with pytest.raises(NeurosegError, match="channels seem to be last"):
        predict(np.zeros((16, 32, 32, 3), np.uint16), m)
    res = predict(np.zeros((16, 32, 32, 3), np.uint16), m, channel_axis=-1)
    assert res.labels.shape == (16, 32, 32) and res.n_instances == 0  # empty volume: no neurons
