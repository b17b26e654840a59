"""Building blocks in medseg_core.nets.layers: deformable convolution, coordinates, ASPP, SE."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from medseg_core.nets.layers import (ASPP, AddCoords, CoordPool, DeformConv, DenseASPP, PreActSEResBlock,
                                     SqueezeExcitation, add_coords, deform_conv, set_torchvision_backend)

dc_module = importlib.import_module("medseg_core.nets.layers.deform_conv")
D64 = torch.float64


@pytest.fixture(autouse=True)
def pure_backend():
    """Every test runs the pure version unless it says otherwise; the switch is restored."""
    saved = dc_module.use_torchvision
    set_torchvision_backend(False)
    yield
    set_torchvision_backend(saved)


def _out_size(s, k, st, p, d):
    return (s + 2 * p - d * (k - 1) - 1) // st + 1


# ----------------------------------------------------------------------------- deform_conv

@pytest.mark.parametrize("stride,padding,dilation,groups,offset_groups,kernel", [
    (1, 1, 1, 1, 1, (3, 3)),
    (2, 0, 1, 2, 1, (3, 3)),
    (1, 2, 2, 1, 2, (3, 3)),
    ((2, 1), (1, 0), (1, 2), 2, 4, (3, 2)),
])
def test_deform_conv_2d_zero_offset_is_conv(stride, padding, dilation, groups, offset_groups, kernel):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 7, 6, dtype=D64, generator=g)
    w = torch.randn(6, 4 // groups, *kernel, dtype=D64, generator=g)
    b = torch.randn(6, dtype=D64, generator=g)
    ref = F.conv2d(x, w, b, stride, padding, dilation, groups)
    k = math.prod(kernel)
    offset = torch.zeros(2, 2 * offset_groups * k, *ref.shape[2:], dtype=D64)
    mask = torch.ones(2, offset_groups * k, *ref.shape[2:], dtype=D64)
    torch.testing.assert_close(deform_conv(x, offset, mask, w, b, stride, padding, dilation), ref,
                               atol=1e-12, rtol=0)
    torch.testing.assert_close(deform_conv(x, offset, None, w, None, stride, padding, dilation),
                               ref - b.view(1, -1, 1, 1), atol=1e-12, rtol=0)


@pytest.mark.parametrize("stride,padding,dilation,groups,offset_groups,kernel,size", [
    (1, 1, 1, 1, 1, (3, 3, 3), (4, 5, 3)),
    ((1, 2, 2), (0, 1, 1), 1, 2, 2, (1, 3, 3), (3, 6, 5)),
    (2, 2, (1, 2, 1), 1, 4, (3, 3, 2), (5, 4, 4)),
    (1, (1, 0, 1), 1, 1, 1, (3, 1, 3), (3, 1, 4)),  # an axis of size 1
])
def test_deform_conv_3d_zero_offset_is_conv(stride, padding, dilation, groups, offset_groups, kernel, size):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, *size, dtype=D64, generator=g)
    w = torch.randn(4, 4 // groups, *kernel, dtype=D64, generator=g)
    b = torch.randn(4, dtype=D64, generator=g)
    ref = F.conv3d(x, w, b, stride, padding, dilation, groups)
    k = math.prod(kernel)
    offset = torch.zeros(1, 3 * offset_groups * k, *ref.shape[2:], dtype=D64)
    mask = torch.ones(1, offset_groups * k, *ref.shape[2:], dtype=D64)
    torch.testing.assert_close(deform_conv(x, offset, mask, w, b, stride, padding, dilation), ref,
                               atol=1e-12, rtol=0)


def _bilinear_loop(img: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """torchvision's bilinear_interpolate, one point, all channels of ``img`` (C, H, W); differentiable
    in ``img`` and in the 0-d tensors ``h``, ``w``."""
    height, width = img.shape[1:]
    hv, wv = h.item(), w.item()
    if hv <= -1 or hv >= height or wv <= -1 or wv >= width:
        return img.new_zeros(img.shape[0]) + 0 * (h + w)
    h_low, w_low = math.floor(hv), math.floor(wv)
    lh, lw = h - h_low, w - w_low
    hh, hw = 1 - lh, 1 - lw
    val = img.new_zeros(img.shape[0])
    for yy, wy in ((h_low, hh), (h_low + 1, lh)):
        for xx, wx in ((w_low, hw), (w_low + 1, lw)):
            if 0 <= yy < height and 0 <= xx < width:
                val = val + wy * wx * img[:, yy, xx]
    return val


def _deform_conv_loop(x, offset, mask, weight, bias, stride, padding, dilation):
    """Explicit loop reference of torchvision's deform_conv2d semantics (2D, int stride/pad/dil)."""
    b_, c, _, _ = x.shape
    o_, cg, kh, kw = weight.shape
    groups = c // cg
    k = kh * kw
    ho, wo = offset.shape[2:]
    g = offset.shape[1] // (2 * k)
    cpg = c // g
    rows = []
    for b in range(b_):
        cols = x.new_zeros(0)
        per_k = []
        for ki in range(k):
            i, j = divmod(ki, kw)
            samples = []
            for oy in range(ho):
                for ox in range(wo):
                    vals = []
                    for gi in range(g):
                        dy = offset[b, gi * 2 * k + 2 * ki, oy, ox]
                        dx = offset[b, gi * 2 * k + 2 * ki + 1, oy, ox]
                        h = oy * stride - padding + i * dilation + dy
                        w = ox * stride - padding + j * dilation + dx
                        v = _bilinear_loop(x[b, gi * cpg:(gi + 1) * cpg], h, w)
                        if mask is not None:
                            v = v * mask[b, gi * k + ki, oy, ox]
                        vals.append(v)
                    samples.append(torch.cat(vals))  # (C,)
            per_k.append(torch.stack(samples, dim=1))  # (C, Ho*Wo)
        cols = torch.stack(per_k, dim=1)  # (C, K, Ho*Wo)
        outs = []
        for o in range(o_):
            gr = o // (o_ // groups)
            acc = (weight[o].reshape(cg, k, 1) * cols[gr * cg:(gr + 1) * cg]).sum(dim=(0, 1))
            outs.append(acc + (bias[o] if bias is not None else 0))
        rows.append(torch.stack(outs).reshape(o_, ho, wo))
    return torch.stack(rows)


@pytest.mark.parametrize("stride,padding,dilation,groups,offset_groups", [(1, 1, 1, 1, 2), (2, 1, 2, 2, 1)])
def test_deform_conv_matches_loop_reference_forward_and_gradients(stride, padding, dilation, groups,
                                                                   offset_groups):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 5, 6, dtype=D64, generator=g)
    w = torch.randn(2, 4 // groups, 2, 3, dtype=D64, generator=g)
    bias = torch.randn(2, dtype=D64, generator=g)
    ho, wo = _out_size(5, 2, stride, padding, dilation), _out_size(6, 3, stride, padding, dilation)
    k = 6
    # fractional offsets up to +-3 px: many samples are partly or wholly outside the 5 x 6 image
    offset = (torch.rand(1, 2 * offset_groups * k, ho, wo, dtype=D64, generator=g) - 0.5) * 6
    mask = torch.rand(1, offset_groups * k, ho, wo, dtype=D64, generator=g) * 2
    inputs = [t.requires_grad_() for t in (x, offset, mask, w, bias)]
    ours = deform_conv(x, offset, mask, w, bias, stride, padding, dilation)
    ref = _deform_conv_loop(x, offset, mask, w, bias, stride, padding, dilation)
    assert ours.shape == ref.shape == (1, 2, ho, wo)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=0)
    upstream = torch.randn(ours.shape, dtype=D64, generator=g)
    g_ours = torch.autograd.grad(ours, inputs, upstream)
    g_ref = torch.autograd.grad(ref, inputs, upstream)
    for name, a, r in zip(("input", "offset", "mask", "weight", "bias"), g_ours, g_ref):
        torch.testing.assert_close(a, r, atol=1e-10, rtol=0, msg=lambda m: f"grad {name}: {m}")
    assert g_ours[1].abs().sum() > 0


def test_deform_conv_chunking_and_checkpoint_do_not_change_results():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 4, 5, 4, dtype=D64, generator=g, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, 3, dtype=D64, generator=g, requires_grad=True)
    offset = torch.randn(1, 81, 4, 5, 4, dtype=D64, generator=g, requires_grad=True)
    mask = torch.rand(1, 27, 4, 5, 4, dtype=D64, generator=g, requires_grad=True)
    full = deform_conv(x, offset, mask, w, None, 1, 1, 1, chunk_size=27)
    grads = torch.autograd.grad(full.square().sum(), (x, offset, mask, w))
    for kwargs in ({"chunk_size": 5}, {"chunk_size": 1, "checkpoint": True}):
        out = deform_conv(x, offset, mask, w, None, 1, 1, 1, **kwargs)
        torch.testing.assert_close(out, full, atol=1e-12, rtol=0)
        for a, r in zip(torch.autograd.grad(out.square().sum(), (x, offset, mask, w)), grads):
            torch.testing.assert_close(a, r, atol=1e-12, rtol=0)


def test_deform_conv_matches_torchvision():
    try:
        from torchvision.ops import deform_conv2d
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
        pytest.skip(f"torchvision not installed: it is an optional dependency ({exc})")
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4, 7, 6, dtype=D64, generator=g)
    w = torch.randn(6, 2, 3, 2, dtype=D64, generator=g)
    bias = torch.randn(6, dtype=D64, generator=g)
    offset = (torch.rand(2, 2 * 2 * 6, 4, 6, dtype=D64, generator=g) - 0.5) * 8
    mask = torch.rand(2, 2 * 6, 4, 6, dtype=D64, generator=g)
    inputs = [t.requires_grad_() for t in (x, offset, mask, w, bias)]
    ours = deform_conv(x, offset, mask, w, bias, (2, 1), (1, 1), (1, 2))
    theirs = deform_conv2d(x, offset, w, bias, stride=(2, 1), padding=(1, 1), dilation=(1, 2), mask=mask)
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=0)
    upstream = torch.randn(ours.shape, dtype=D64, generator=g)
    for a, r in zip(torch.autograd.grad(ours, inputs, upstream), torch.autograd.grad(theirs, inputs, upstream)):
        torch.testing.assert_close(a, r, atol=1e-10, rtol=0)
    set_torchvision_backend(True)  # the switch routes 2D calls to torchvision
    torch.testing.assert_close(deform_conv(x, offset, mask, w, bias, (2, 1), (1, 1), (1, 2)), theirs,
                               atol=0, rtol=0)


@pytest.mark.parametrize("depth", [1, 3])
def test_deform_conv_3d_depth1_kernel_equals_2d_per_slice(depth):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, depth, 6, 5, dtype=D64, generator=g)
    w = torch.randn(4, 2, 1, 3, 3, dtype=D64, generator=g)  # groups 2
    bias = torch.randn(4, dtype=D64, generator=g)
    G, K = 2, 9
    off2 = (torch.rand(2, 2 * G * K, 3, 5, dtype=D64, generator=g) - 0.5) * 5  # stride (2, 1), pad 1
    mask = torch.rand(2, G * K, 3, 5, dtype=D64, generator=g)
    off3 = torch.zeros(2, G, K, 3, depth, 3, 5, dtype=D64)
    off3[:, :, :, 1:] = off2.view(2, G, K, 2, 1, 3, 5)  # dz = 0, the same (dy, dx) on every slice
    off3 = off3.view(2, 3 * G * K, depth, 3, 5)
    mask3 = mask.unsqueeze(2).expand(-1, -1, depth, -1, -1)
    out3 = deform_conv(x, off3, mask3, w, bias, (1, 2, 1), (0, 1, 1), 1)
    for d in range(depth):
        out2 = deform_conv(x[:, :, d], off2, mask, w[:, :, 0], bias, (2, 1), 1, 1)
        torch.testing.assert_close(out3[:, :, d], out2, atol=1e-12, rtol=0)


def test_deform_conv_3d_integer_depth_offset_shifts_slices():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 2, 4, 5, 5, dtype=D64, generator=g)
    w = torch.randn(2, 2, 1, 3, 3, dtype=D64, generator=g)
    offset = torch.zeros(1, 9, 3, 4, 5, 5, dtype=D64)
    offset[:, :, 0] = 1.0  # dz = +1: every sample reads the next slice
    out = deform_conv(x, offset.view(1, 27, 4, 5, 5), None, w, None, 1, (0, 1, 1), 1)
    shifted = F.pad(x[:, :, 1:], (0, 0, 0, 0, 0, 1))
    torch.testing.assert_close(out, F.conv3d(shifted, w, None, 1, (0, 1, 1)), atol=1e-12, rtol=0)


def test_deform_conv_rejects_bad_shapes():
    x = torch.randn(1, 4, 6, 6)
    w = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="offset"):
        deform_conv(x, torch.zeros(1, 17, 6, 6), None, w, padding=1)
    with pytest.raises(ValueError, match="mask"):
        deform_conv(x, torch.zeros(1, 18, 6, 6), torch.ones(1, 8, 6, 6), w, padding=1)


@pytest.mark.parametrize("spatial_dims,kernel,stride,dilation,offset_groups", [
    (2, 3, 1, 1, 1), (2, (3, 5), 2, (2, 1), 2), (3, 3, 1, 1, 1), (3, (1, 3, 3), (1, 2, 2), 1, 2)])
def test_deform_conv_module_starts_as_plain_conv_and_trains_offsets(spatial_dims, kernel, stride, dilation,
                                                                   offset_groups):
    torch.manual_seed(7)
    layer = DeformConv(spatial_dims, 4, 3, kernel, stride=stride, dilation=dilation,
                       offset_groups=offset_groups).double()
    x = torch.randn(2, 4, *([5, 6, 7][3 - spatial_dims:]), dtype=D64)
    conv = F.conv2d if spatial_dims == 2 else F.conv3d
    ref = conv(x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation)
    out = layer(x)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    (out * torch.randn_like(out)).sum().backward()
    for p in (layer.offset_conv.weight, layer.offset_conv.bias, layer.weight, layer.bias):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_deform_conv_module_offset_input_and_forward_with():
    torch.manual_seed(8)
    layer = DeformConv(3, 2, 4, (1, 3, 3), offset_in_channels=5, modulated=False)
    x, feat = torch.randn(1, 2, 3, 6, 5), torch.randn(1, 5, 3, 6, 5)
    offset, mask = layer.offsets_and_mask(x, feat)
    assert offset.shape == (1, 27, 3, 6, 5) and mask is None
    torch.nn.init.normal_(layer.offset_conv.weight, std=0.1)
    out = layer(x, feat)
    offset, _ = layer.offsets_and_mask(x, feat)
    torch.testing.assert_close(out, layer.forward_with(x, offset, None))
    with pytest.raises(ValueError, match="spatial size"):
        layer(x, feat[:, :, :2])


# ----------------------------------------------------------------------------- coordinates

@pytest.mark.parametrize("size", [(4, 5), (3, 4, 5)])
def test_add_coords_corners_and_radius(size):
    nd = len(size)
    x = torch.randn(2, 3, *size)
    out = add_coords(x, with_r=True)
    assert out.shape == (2, 3 + nd + 1, *size)
    assert torch.equal(out[:, :3], x)
    first = (0,) * nd
    last = tuple(s - 1 for s in size)
    for a in range(nd):
        assert out[(0, 3 + a) + first] == -1 and out[(1, 3 + a) + last] == 1
        # coordinate a varies only along axis a
        assert torch.equal(out[0, 3 + a], torch.linspace(-1, 1, size[a]).view(
            [-1 if i == a else 1 for i in range(nd)]).expand(size))
    torch.testing.assert_close(out[(0, 3 + nd) + first], torch.tensor(math.sqrt(nd)))
    torch.testing.assert_close(out[(0, 3 + nd) + last], torch.tensor(math.sqrt(nd)))
    assert AddCoords()(x).shape == (2, 3 + nd, *size)


def _hand_made(size, window, n_channels, seed):
    """Small distinct background in [0, 0.1), one known maximum per pooling window and channel."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, n_channels, *size, dtype=D64, generator=g) * 0.1
    pooled_shape = [s // w for s, w in zip(size, window)]
    positions = torch.zeros(n_channels, len(size), *pooled_shape, dtype=torch.long)
    for c in range(n_channels):
        for cell in torch.cartesian_prod(*[torch.arange(p) for p in pooled_shape]).view(-1, len(size)).tolist():
            inside = [int(torch.randint(w, (1,), generator=g)) for w in window]
            pos = [ci * w + i for ci, w, i in zip(cell, window, inside)]
            x[(0, c, *pos)] = 10.0 if c == 0 else 1.0
            positions[(c, slice(None), *cell)] = torch.tensor(pos)
    return x, positions


@pytest.mark.parametrize("size,window", [((9, 5), (2, 2)), ((3, 5, 9), (1, 2, 2))])
def test_coord_pool_positions(size, window):
    nd = len(size)
    x, pos = _hand_made(size, window, 2, seed=9)
    scale = torch.tensor([2.0 / (s - 1) for s in size], dtype=D64).view(1, nd, *[1] * nd)
    expected = pos * scale - 1  # (C, nd, *S'); L - 1 is a power of two: exact
    x.requires_grad_()
    pooled, coords = CoordPool(nd, window, mode="channel")(x)
    assert pooled.shape == (1, 2, *[s // w for s, w in zip(size, window)])
    assert coords.shape == (1, 2 * nd, *pooled.shape[2:]) and not coords.requires_grad
    assert torch.equal(coords[0].view(2, nd, *pooled.shape[2:]), expected)
    assert torch.equal(pooled.detach(), torch.tensor([10.0, 1.0], dtype=D64).view(1, 2, *[1] * nd).expand_as(pooled))
    pooled_m, coords_m = CoordPool(nd, window, mode="mean")(x)
    assert torch.equal(pooled_m, pooled)
    assert coords_m.shape == (1, nd, *pooled.shape[2:])
    assert torch.equal(coords_m[0], expected[0])  # channel 0's maxima dominate the channel mean
    pooled.sum().backward()
    assert x.grad.sum() == pooled.numel()


# ----------------------------------------------------------------------------- ASPP / SE

def _check_grads(module, out):
    (out * torch.randn_like(out)).sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("size", [(11, 9), (5, 9, 7)])
def test_aspp_shapes_and_gradients(size):
    torch.manual_seed(10)
    nd = len(size)
    rates = (1, 2, 3) if nd == 2 else (1, (1, 2, 2), (1, 3, 3))
    module = ASPP(nd, 3, 4, rates=rates, kernel_size=3 if nd == 2 else (1, 3, 3))
    x = torch.randn(2, 3, *size)
    out = module(x)
    assert out.shape == (2, 4, *size)
    _check_grads(module, out)
    assert module.branches[0][0].kernel_size == (1,) * nd


@pytest.mark.parametrize("size", [(11, 9), (5, 9, 7)])
def test_dense_aspp_shapes_and_gradients(size):
    torch.manual_seed(11)
    nd = len(size)
    rates = (1, 3, 6) if nd == 2 else ((1, 3, 3), (1, 6, 6), (1, 12, 12), (1, 18, 18))
    module = DenseASPP(nd, 4, growth=2, rates=rates, bottleneck=4)
    x = torch.randn(2, 4, *size)
    out = module(x)
    assert module.out_channels == 4 + len(rates) * 2
    assert out.shape == (2, module.out_channels, *size)
    assert torch.equal(out[:, :4], x)
    _check_grads(module, out)


@pytest.mark.parametrize("size", [(11, 9), (5, 9, 7)])
def test_se_and_preact_block_shapes_and_gradients(size):
    torch.manual_seed(12)
    nd = len(size)
    se = SqueezeExcitation(nd, 4, reduction=2)
    x = torch.randn(2, 4, *size)
    out = se(x)
    assert out.shape == x.shape
    _check_grads(se, out)
    kernel = 3 if nd == 2 else (1, 3, 3)
    stride = 2 if nd == 2 else (1, 2, 2)
    block = PreActSEResBlock(nd, 4, 6, stride=stride, dilation=2, kernel_size=kernel)
    out = block(x)
    expected = [(s - 1) // st + 1 for s, st in zip(size, (stride,) * nd if isinstance(stride, int) else stride)]
    assert out.shape == (2, 6, *expected)
    _check_grads(block, out)
    same = PreActSEResBlock(nd, 4, 4, kernel_size=kernel, norm="none")
    assert same.projection is None
    x_copy = x.clone()
    assert same(x).shape == x.shape and torch.equal(x, x_copy)  # no in-place change of the input
