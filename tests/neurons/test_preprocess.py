import numpy as np
import pytest

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.models.neurons import check_raw, normalize


@pytest.mark.parametrize(
    "shape, words",
    [
        ((20, 30, 30), "single-channel"),
        ((1, 20, 30, 30), "single-channel"),
        ((3, 30, 30), "2D"),
        ((30, 30), "2D"),
        ((20, 30, 30, 3), "channels seem to be last"),
        ((4, 20, 30, 30), "3 colour channels"),
        ((3, 0, 30, 30), "empty"),
        ((2, 3, 20, 30, 30), "dimensions"),
    ],
)
def test_bad_shapes_raise_clear_errors(shape, words):
    with pytest.raises(NeurosegError, match=words) as err:
        check_raw(np.zeros(shape, np.uint16))
    assert "Fix:" in str(err.value)


def test_channels_last_conversion_and_nan():
    a = np.random.default_rng(0).integers(0, 100, (8, 10, 12, 3)).astype(np.uint16)
    out = check_raw(a, channel_axis=-1)
    assert out.shape == (3, 8, 10, 12)
    np.testing.assert_array_equal(out[1], a[..., 1])
    bad = np.zeros((3, 4, 5, 5), np.float32)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(NeurosegError, match="NaN"):
        check_raw(bad)
    with pytest.raises(NeurosegError, match="dtype"):
        check_raw(np.zeros((3, 4, 5, 5), bool))


def test_normalize_keeps_colour_ratios_for_any_dtype():
    rng = np.random.default_rng(1)
    raw = rng.poisson(5, (3, 16, 32, 32)).astype(np.uint16)
    raw[:, 7:10, 15:18, :] += np.array([1000, 500, 0], np.uint16)[:, None, None, None]  # an orange neurite
    n16 = normalize(raw)
    n8 = normalize((raw // 8).astype(np.uint8))
    nf = normalize(raw.astype(np.float32) / 65535)
    for n in (n16, n8, nf):
        assert n.dtype == np.float32 and n.shape == raw.shape
        v = n[:, 8, 16, 16]
        assert v[0] == pytest.approx(2 * v[1], rel=0.1)  # ratio 2:1 preserved
        assert abs(v[2]) < 0.1 * v[0]
        assert abs(float(np.median(n))) < 0.05  # background near 0
    np.testing.assert_allclose(n16, nf, atol=1e-3)


def test_constant_volume_normalises_to_zero():
    assert not normalize(np.full((3, 4, 8, 8), 7, np.uint16)).any()
