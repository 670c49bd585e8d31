"""The StarDist-3D networks (ResNet and U-Net backbones + prob/dist head) in PyTorch, with the
exact semantics of the Keras models of the ``stardist`` package.

* Convolutions use TensorFlow's ``"same"`` padding: ``k // 2`` on both sides for stride 1, and
  the asymmetric split (``before = total // 2``) for strided convolutions.
* Max pooling is ``valid`` with stride = pool; up-sampling is nearest-neighbour; U-Net skips are
  concatenated as ``[up, skip]``.
* Every convolution is recorded in :attr:`StarDistNet.keras_layers` in the order Keras creates
  it, with its Keras name (``None`` for layers Keras names automatically ``conv3d[_N]``), so
  :mod:`.keras_import` can map a weight file onto it.
"""

from __future__ import annotations

import math
import os
import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from napari_neuroseg.models.stardist3d.config import StarDistConfig

__all__ = ["Conv3dSame", "StarDistNet", "build_network"]


def _activation(name: str | None):
    return {
        None: None,
        "linear": None,
        "relu": F.relu,
        "elu": F.elu,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "softplus": F.softplus,
        "selu": F.selu,
        "swish": F.silu,
        "gelu": F.gelu,
    }[name]


class Conv3dSame(nn.Module):
    """A 3D convolution with TensorFlow ``"same"`` padding and an optional activation."""

    def __init__(self, c_in: int, c_out: int, kernel, stride=(1, 1, 1), activation: str | None = None, bias=True):
        super().__init__()
        kernel = tuple(int(k) for k in kernel)
        stride = tuple(int(s) for s in stride)
        self.kernel, self.stride = kernel, stride
        self._symmetric = all(s == 1 and k % 2 == 1 for k, s in zip(kernel, stride))
        pad = tuple(k // 2 for k in kernel) if self._symmetric else 0
        self.conv = nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=pad, bias=bias)
        self.activation = activation
        self._act = _activation(activation)

    def _tf_pad(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for n, k, s in zip(reversed(x.shape[-3:]), reversed(self.kernel), reversed(self.stride)):
            total = max(k - s, 0) if n % s == 0 else max(k - n % s, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads) if any(pads) else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._symmetric:
            x = self._tf_pad(x)
        if _use_mkldnn(x):
            return self._forward_onednn(x)
        x = self.conv(x)
        return x if self._act is None else self._act(x)

    def _forward_onednn(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                        residual_act: str | None = None) -> torch.Tensor:
        """oneDNN directly, channels-last, ReLU fused: for small channel counts ATen would
        otherwise fall back to its much slower im2col kernel (3-4x on CPU).

        The weights are reordered once per input shape into oneDNN's blocked layout
        (:func:`_packed`). With ``residual`` (same shape as the output, channels-last), computes
        ``residual_act(act(conv(x)) + residual)`` in place in ``residual`` (the ResNet block's
        skip add; ``residual_act`` None or ``"relu"``).
        """
        c = self.conv
        if x.shape[1] == 1:
            # a 1-channel tensor counts as plain layout for oneDNN (slow kernel + reorders):
            # add a zero channel with zero weights, which leaves every sum exactly unchanged
            x2 = x.new_zeros((x.shape[0], 2) + tuple(x.shape[2:])).contiguous(memory_format=torch.channels_last_3d)
            x2[:, :1] = x
            x = x2
        w = _packed(self, (c.weight,), x, c.padding, c.stride)
        if residual is not None and _POINTWISE_INPLACE is not None and self._act is None:
            return _POINTWISE_INPLACE(residual, x, w, c.bias, list(c.padding), list(c.stride), list(c.dilation), 1,
                                      "add", 1.0, residual_act, [], "")
        fused = "relu" if self.activation == "relu" else "none"
        if _POINTWISE is not None:
            y = _POINTWISE(x, w, c.bias, list(c.padding), list(c.stride), list(c.dilation), 1, fused, [], "")
        else:  # pragma: no cover - builds without the fused op
            y = torch.ops.aten.mkldnn_convolution(x, _plain(w), c.bias, c.padding, c.stride, c.dilation, 1)
            fused = "none"
        if self._act is not None and fused == "none":
            y = self._act(y)
        if residual is not None:
            y.add_(residual)
            if residual_act == "relu":
                F.relu_(y)
        return y


#: per-module cache of oneDNN-packed weights: {module: {key: packed}}; weak, so copies/deleted
#: modules never share or keep entries
_PACKED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _weight_key(weights: tuple[torch.Tensor, ...], x: torch.Tensor) -> tuple:
    # _version changes on any in-place update (load_state_dict, optimiser step), data_ptr on .to()
    return (tuple(x.shape), x.dtype) + tuple((w.data_ptr(), w._version, w.dtype, tuple(w.shape)) for w in weights)


def _packed(module: nn.Module, weights: tuple[torch.Tensor, ...], x: torch.Tensor, padding, stride) -> torch.Tensor:
    """The concatenated ``weights`` (zero-padded to ``x``'s channel count) reordered by oneDNN
    for input shape ``x.shape``, cached per module, input shape and weight version; the plain
    (channels-last) weight where packing is unavailable."""
    key = _weight_key(weights, x)
    cache = _PACKED.setdefault(module, {})
    hit = cache.get(key)
    if hit is not None:
        return hit
    w = weights[0] if len(weights) == 1 else torch.cat(weights, 0)
    if w.shape[1] < x.shape[1]:
        w = torch.cat([w, w.new_zeros((w.shape[0], x.shape[1] - w.shape[1]) + tuple(w.shape[2:]))], 1)
    w = w.detach().contiguous(memory_format=torch.channels_last_3d)
    try:
        p = torch.ops.mkldnn._reorder_convolution_weight(w, list(padding), list(stride), [1, 1, 1], 1, list(x.shape))
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without the op
        p = w
    if len(cache) >= 8:  # tiles come in a few shapes; bound the cache anyway
        cache.clear()
    cache[key] = p
    return p


_HEAD_BIAS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _head_bias(module: nn.Module, weights: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
    """``cat([prob.bias, dist.bias])``, cached like :func:`_packed`."""
    key = _weight_key(weights, x)
    hit = _HEAD_BIAS.get(module)
    if hit is None or hit[0] != key:
        hit = (key, torch.cat(weights[2:], 0))
        _HEAD_BIAS[module] = hit
    return hit[1]


def _plain(w: torch.Tensor) -> torch.Tensor:
    """A dense weight for ops that do not take oneDNN-packed tensors."""
    if not w.is_mkldnn:
        return w
    return w.to_dense().contiguous(memory_format=torch.channels_last_3d)


def _pointwise_op():
    try:
        return torch.ops.mkldnn._convolution_pointwise
    except (AttributeError, RuntimeError):  # pragma: no cover - older/other builds
        return None


_POINTWISE = _pointwise_op()
try:
    _POINTWISE_INPLACE = torch.ops.mkldnn._convolution_pointwise_.binary
except (AttributeError, RuntimeError):  # pragma: no cover - older/other builds
    _POINTWISE_INPLACE = None

#: ``NEUROSEG_ONEDNN_DIRECT=0`` turns the direct oneDNN path (private ``torch.ops.mkldnn`` ops) off;
#: it is also turned off, with a one-line notice, when a probe of those ops fails on this CPU/build.
_DIRECT_STATE: dict[str, bool] = {}


def onednn_direct_ok() -> bool:
    """Whether the direct oneDNN convolution path may be used: enabled (``NEUROSEG_ONEDNN_DIRECT``
    is not ``0``), oneDNN available, and a tiny fused convolution through the private ops really
    runs here (checked once per process; a failure warns once and falls back to ``nn.Conv3d``)."""
    if "ok" in _DIRECT_STATE:
        return _DIRECT_STATE["ok"]
    ok = os.environ.get("NEUROSEG_ONEDNN_DIRECT", "1") != "0" and torch.backends.mkldnn.is_available()
    if ok and _POINTWISE is not None:
        try:
            with torch.inference_mode():
                x = torch.zeros((1, 2, 4, 4, 4)).contiguous(memory_format=torch.channels_last_3d)
                w = torch.zeros((2, 2, 3, 3, 3)).contiguous(memory_format=torch.channels_last_3d)
                _POINTWISE(x, w, None, [1, 1, 1], [1, 1, 1], [1, 1, 1], 1, "relu", [], "")
        except Exception as err:  # noqa: BLE001 - any failure of a private op: use the public path
            warnings.warn(f"napari-neuroseg: oneDNN's fused convolution failed on this CPU ({type(err).__name__}); "
                          "using PyTorch's standard convolution (same results, slower)", RuntimeWarning, stacklevel=2)
            ok = False
    _DIRECT_STATE["ok"] = ok
    return ok


def _use_mkldnn(x: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and not torch.is_grad_enabled()
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and onednn_direct_ok()
    )


class _ResBlock(nn.Module):
    def __init__(self, c_in, n_filter, kernel, pool, n_conv, activation, register):
        super().__init__()
        self.first = register(None, Conv3dSame(c_in, n_filter, kernel, pool, activation))
        self.middle = nn.ModuleList(
            register(None, Conv3dSame(n_filter, n_filter, kernel, activation=activation)) for _ in range(n_conv - 2)
        )
        self.last = register(None, Conv3dSame(n_filter, n_filter, kernel))
        self.shortcut = None
        if any(p != 1 for p in pool) or n_filter != c_in:
            self.shortcut = register(None, Conv3dSame(c_in, n_filter, (1, 1, 1), pool))
        self._act = _activation(activation)

    def forward(self, x):
        y = self.first(x)
        for conv in self.middle:
            y = conv(y)
        s = x if self.shortcut is None else self.shortcut(x)
        if _use_mkldnn(y) and self.last._symmetric and y.shape[1] > 1 and self._act in (None, F.relu):
            # oneDNN: conv + skip add (+ ReLU) in one pass, written into the skip tensor (the
            # block input is not used after this)
            s = s.contiguous(memory_format=torch.channels_last_3d)
            return self.last._forward_onednn(y, residual=s, residual_act="relu" if self._act is F.relu else None)
        y = self.last(y)
        if not torch.is_grad_enabled():
            y.add_(s)
            return F.relu_(y) if self._act is F.relu else (y if self._act is None else self._act(y))
        y = y + s
        return y if self._act is None else self._act(y)


class StarDistNet(nn.Module):
    """Backbone + ``features`` conv + ``prob`` (sigmoid) and ``dist`` (linear) 1³ convs.

    ``forward(x)`` takes (N, C, Z, Y, X) with spatial sizes divisible by ``config.divisor`` and
    returns ``(prob (N,1,Z/gz,Y/gy,X/gx), dist (N,n_rays,...))``.
    """

    def __init__(self, config: StarDistConfig):
        super().__init__()
        self.config = config
        #: (keras name or None for auto-named ``conv3d_N``, module) in Keras creation order
        self.keras_layers: list[tuple[str | None, Conv3dSame]] = []
        if config.backbone == "resnet":
            c_out = self._build_resnet()
            k_feat, act = config.resnet_kernel_size, config.resnet_activation
            n_feat = config.net_conv_after_resnet
        else:
            c_out = self._build_unet()
            k_feat, act = config.unet_kernel_size, config.unet_activation
            n_feat = config.net_conv_after_unet
        self.features = None
        if n_feat > 0:
            self.features = self._reg("features", Conv3dSame(c_out, n_feat, k_feat, activation=act))
            c_out = n_feat
        self.prob = self._reg("prob", Conv3dSame(c_out, 1, (1, 1, 1), activation="sigmoid"))
        self.dist = self._reg("dist", Conv3dSame(c_out, config.n_rays, (1, 1, 1)))

    def _reg(self, name: str | None, module: Conv3dSame) -> Conv3dSame:
        self.keras_layers.append((name, module))
        return module

    # -- backbones -------------------------------------------------------------------------
    def _build_resnet(self) -> int:
        c = self.config
        n_filter = c.resnet_n_filter_base
        self.stem = nn.Sequential(
            self._reg(None, Conv3dSame(c.n_channel_in, n_filter, (7, 7, 7))),
            self._reg(None, Conv3dSame(n_filter, n_filter, (3, 3, 3))),
        )
        blocks = []
        pooled = [1, 1, 1]
        c_in = n_filter
        for _ in range(c.resnet_n_blocks):
            pool = tuple(2 if g > p else 1 for g, p in zip(c.grid, pooled))
            pooled = [p * q for p, q in zip(pooled, pool)]
            if any(p > 1 for p in pool):
                n_filter *= 2
            blocks.append(
                _ResBlock(c_in, n_filter, c.resnet_kernel_size, pool, c.resnet_n_conv_per_block,
                          c.resnet_activation, self._reg)
            )
            c_in = n_filter
        self.blocks = nn.ModuleList(blocks)
        return c_in

    def _build_unet(self) -> int:
        c = self.config
        k, act, pre = c.unet_kernel_size, c.unet_activation, c.unet_prefix
        # max-pool the input to the grid, with convs before each pooling
        self.pre_convs = nn.ModuleList()
        self.pre_pools: list[tuple[int, int, int]] = []
        pooled = [1, 1, 1]
        c_in = c.n_channel_in
        while tuple(pooled) != tuple(c.grid):
            pool = tuple(2 if g > p else 1 for g, p in zip(c.grid, pooled))
            pooled = [p * q for p, q in zip(pooled, pool)]
            convs = nn.ModuleList()
            for _ in range(c.unet_n_conv_per_depth):
                convs.append(self._reg(None, Conv3dSame(c_in, c.unet_n_filter_base, k, activation=act)))
                c_in = c.unet_n_filter_base
            self.pre_convs.append(convs)
            self.pre_pools.append(pool)

        def nf(n: int) -> int:
            return int(c.unet_n_filter_base * c.unet_expansion**n)

        depth, n_conv = c.unet_n_depth, c.unet_n_conv_per_depth
        self.down = nn.ModuleList()
        skip_channels = []
        for n in range(depth):
            convs = nn.ModuleList()
            for i in range(n_conv):
                convs.append(self._reg(f"{pre}down_level_{n}_no_{i}", Conv3dSame(c_in, nf(n), k, activation=act)))
                c_in = nf(n)
            self.down.append(convs)
            skip_channels.append(c_in)
        self.middle = nn.ModuleList()
        for i in range(n_conv - 1):
            self.middle.append(self._reg(f"{pre}middle_{i}", Conv3dSame(c_in, nf(depth), k, activation=act)))
            c_in = nf(depth)
        self.middle.append(
            self._reg(f"{pre}middle_{n_conv}", Conv3dSame(c_in, nf(max(0, depth - 1)), k, activation=act))
        )
        c_in = nf(max(0, depth - 1))
        self.up = nn.ModuleList()
        last_act = c.unet_last_activation if c.unet_last_activation is not None else act
        for n in reversed(range(depth)):
            convs = nn.ModuleList()
            c_in = c_in + skip_channels[n]
            for i in range(n_conv - 1):
                convs.append(self._reg(f"{pre}up_level_{n}_no_{i}", Conv3dSame(c_in, nf(n), k, activation=act)))
                c_in = nf(n)
            convs.append(
                self._reg(
                    f"{pre}up_level_{n}_no_{n_conv}",
                    Conv3dSame(c_in, nf(max(0, n - 1)), k, activation=act if n > 0 else last_act),
                )
            )
            c_in = nf(max(0, n - 1))
            self.up.append(convs)
        return c_in

    # -- forward ---------------------------------------------------------------------------
    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.backbone == "resnet":
            x = self.stem(x)
            for block in self.blocks:
                x = block(x)
            return x
        for convs, pool in zip(self.pre_convs, self.pre_pools):
            for conv in convs:
                x = conv(x)
            x = F.max_pool3d(x, pool, pool)
        skips = []
        for convs in self.down:
            for conv in convs:
                x = conv(x)
            skips.append(x)
            x = F.max_pool3d(x, c.unet_pool, c.unet_pool)
        for conv in self.middle:
            x = conv(x)
        for convs, skip in zip(self.up, reversed(skips)):
            x = F.interpolate(x, scale_factor=tuple(float(p) for p in c.unet_pool), mode="nearest")
            x = torch.cat([x, skip], dim=1)
            for conv in convs:
                x = conv(x)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if _use_mkldnn(x):
            x = x.contiguous(memory_format=torch.channels_last_3d)
        x = self.backbone(x)
        if self.features is not None:
            x = self.features(x)
        if _use_mkldnn(x):
            # one 1x1 conv for both heads: the features are read once
            weights = (self.prob.conv.weight, self.dist.conv.weight, self.prob.conv.bias, self.dist.conv.bias)
            w = _packed(self, weights[:2], x, (0, 0, 0), (1, 1, 1))
            b = _head_bias(self, weights, x)
            if _POINTWISE is not None:
                out = _POINTWISE(x, w, b, [0, 0, 0], [1, 1, 1], [1, 1, 1], 1, "none", [], "")
            else:
                out = torch.ops.aten.mkldnn_convolution(x, _plain(w), b, (0, 0, 0), (1, 1, 1),
                                                        (1, 1, 1), 1)
            return torch.sigmoid(out[:, :1]), out[:, 1:]
        return self.prob(x), self.dist(x)

    # -- sizing ----------------------------------------------------------------------------
    def bytes_per_voxel(self, dtype_bytes: int = 4) -> float:
        """Estimated peak memory of a forward pass (no gradients) per input voxel, in bytes.

        Traced with a tiny input: the largest input + output of any convolution plus every U-Net
        skip connection held meanwhile, times 1.5 for allocator slack and workspaces. Cached.
        """
        cached = getattr(self, "_bpv", None)
        if cached is not None:
            return cached * dtype_bytes
        c = self.config
        div = c.divisor
        shape = (1, c.n_channel_in) + tuple(2 * d for d in div)
        n_in = math.prod(shape[2:])
        sizes: list[int] = []

        def hook(mod, inp, out):
            sizes.append(inp[0].numel() + out.numel())

        dev = next(self.parameters()).device
        handles = [m.register_forward_hook(hook) for _, m in self.keras_layers]
        try:
            with torch.no_grad():
                self(torch.zeros(shape, device=dev))
        finally:
            for h in handles:
                h.remove()
        skips = 0
        if c.backbone == "unet":
            g = math.prod(c.grid)
            p = math.prod(c.unet_pool)
            skips = sum(c.unet_n_filter_base * c.unet_expansion**n / (g * p**n) for n in range(c.unet_n_depth))
        self._bpv = float((max(sizes) / n_in + skips) * 1.5)
        return self._bpv * dtype_bytes


def build_network(config: StarDistConfig) -> StarDistNet:
    """A :class:`StarDistNet` in eval mode."""
    return StarDistNet(config).eval()
