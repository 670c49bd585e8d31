"""The CPU inference fast path of the StarDist-3D network (oneDNN, channels-last, weights packed
once per input shape, ResNet skip add fused into the last conv) against the plain PyTorch path
(taken with gradients enabled): same outputs for tiles of different shapes, and packed weights
rebuilt when the weights change."""

from __future__ import annotations

import pytest
import torch

from napari_neuroseg.models.stardist3d import StarDistConfig
from napari_neuroseg.models.stardist3d import network as netmod
from napari_neuroseg.models.stardist3d.network import build_network

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch build")

SPECS = {
    "unet": dict(backbone="unet", n_rays=16, grid=(1, 2, 2), unet_n_filter_base=4, unet_n_depth=2,
                 net_conv_after_unet=8),
    "resnet": dict(backbone="resnet", n_rays=16, grid=(2, 2, 2), resnet_n_filter_base=4, resnet_n_blocks=3,
                   net_conv_after_resnet=8, anisotropy=(2, 1, 1)),
    "resnet_2ch": dict(backbone="resnet", n_rays=8, grid=(1, 1, 1), n_channel_in=2, resnet_n_filter_base=4,
                       resnet_n_blocks=2),
}


def _net(spec: dict, seed: int = 0):
    torch.manual_seed(seed)
    net = build_network(StarDistConfig.from_dict(spec))
    with torch.no_grad():  # PyTorch's default init keeps activations O(1); make the biases non-zero
        for m in net.modules():
            if isinstance(m, torch.nn.Conv3d):
                m.bias.normal_(0, 0.1)
    return net


def _close(a, b):
    """Equal up to float32 rounding (the summation order differs)."""
    torch.testing.assert_close(a, b, atol=1e-5 * max(1.0, b.abs().max().item()), rtol=0)


def _reference(net, x):
    """The plain ATen path: ``_use_mkldnn`` is false while gradients are enabled."""
    with torch.enable_grad():
        p, d = net(x)
    return p.detach(), d.detach()


@pytest.mark.parametrize("name", list(SPECS))
def test_fast_path_matches_plain_path_for_several_tile_shapes(name):
    net = _net(SPECS[name])
    c_in = net.config.n_channel_in
    gen = torch.Generator().manual_seed(1)
    for shape in [(8, 16, 24), (4, 32, 8), (8, 16, 24)]:  # the last one hits the packed-weight cache
        x = torch.rand((1, c_in) + shape, generator=gen)
        p0, d0 = _reference(net, x)
        with torch.inference_mode():
            p1, d1 = net(x)
        assert p1.shape == p0.shape and d1.shape == d0.shape
        _close(p1, p0)
        _close(d1, d0)
    conv = net.keras_layers[0][1]
    if netmod.onednn_direct_ok():
        assert len(netmod._PACKED[conv]) == 2  # one packed weight per input shape
    else:  # direct path off (NEUROSEG_ONEDNN_DIRECT=0 or a failed probe): the plain path, nothing packed
        assert conv not in netmod._PACKED


def test_packed_weights_follow_weight_changes():
    net = _net(SPECS["resnet"])
    x = torch.rand(1, 1, 8, 16, 16)
    with torch.inference_mode():
        before = [t.clone() for t in net(x)]
    other = _net(SPECS["resnet"], seed=5)
    net.load_state_dict(other.state_dict())  # in place: same tensors, new versions
    with torch.inference_mode():
        after = net(x)
    p_ref, d_ref = _reference(other, x)
    _close(after[0], p_ref)
    _close(after[1], d_ref)
    assert not torch.allclose(after[1], before[1])


def test_fast_path_leaves_the_input_untouched():
    net = _net(SPECS["resnet_2ch"])
    x = torch.rand(1, 2, 4, 8, 8)
    x0 = x.clone()
    with torch.inference_mode():
        net(x)
    assert torch.equal(x, x0)
