"""Modulated deformable convolution (DCNv2), 2D and 3D, in pure PyTorch.

Deformable convolution (Dai et al., "Deformable Convolutional Networks", ICCV 2017; DCNv1) samples
its input at the regular kernel positions moved by learned, per-output-position offsets; the
modulated version (Zhu et al., "Deformable ConvNets v2: More Deformable, Better Results",
CVPR 2019; DCNv2) also multiplies each sample by a learned mask. PGD-UNet (Li et al., IJCNN 2020)
uses it in its middle blocks; the LFAM alignment module uses it to warp a skip feature.

The pure version samples with :func:`torch.nn.functional.grid_sample` (bilinear/trilinear, zero
padding, ``align_corners=True``), multiplies by the mask and contracts with the weight (im2col),
kernel points in chunks so that at most ``CHUNK_ELEMENTS`` sampled values exist at a time. It
follows torchvision's :func:`torchvision.ops.deform_conv2d` exactly (layouts, zero padding: a
point reads 0 when it lies at or beyond one pixel outside the input) and extends it to 3D.

Layouts (G offset groups, K kernel points in row-major order, ``nd`` = 2 or 3):

* offset: 2D (B, 2*G*K, Ho, Wo), channel ``g*2K + 2k + {0: dy, 1: dx}``;
  3D (B, 3*G*K, Do, Ho, Wo), channel ``g*3K + 3k + {0: dz, 1: dy, 2: dx}``.
* mask: (B, G*K, *So), channel ``g*K + k``; ``None`` is DCNv1 (mask 1).

Backend switch: the module attribute ``use_torchvision`` (set it with
:func:`set_torchvision_backend`; the package re-exports the function :func:`deform_conv` under the
same name as this module, so ``import ... layers.deform_conv`` gives the function):

* ``None`` (default, "auto"): torchvision's 2D kernel on CUDA tensors if torchvision imports, the
  pure version otherwise. ``benchmarks/deform_conv.py`` (4 x 64 x 64^2, 3x3, float32; torch 2.11,
  torchvision 0.26, one H100 and its host CPU with 2 threads): on CUDA torchvision took 0.31 /
  1.85 ms (forward / forward+backward) against 1.65 / 4.54 ms for the pure version; on the CPU the
  pure version took 24 / 129 ms against torchvision's 205 / 2347 ms. The auto choice follows
  these figures; other GPUs and shapes are unmeasured.
* ``True``: torchvision's kernel for every 2D call if torchvision imports (pure otherwise).
* ``False``: always the pure version.

3D always uses the pure version.

Known difference from torchvision: at sampling positions that are exactly integers (zero offsets,
so at initialisation) the normalise/unnormalise round trip of ``grid_sample`` may land a hair
below the integer, and the offset gradient is then the backward instead of torchvision's forward
difference (5-25 % of positions in a quick check). Both are valid one-sided derivatives of the
piecewise-linear interpolation; values agree to rounding, and the effect vanishes once offsets
are non-integer.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from .. import factories as fx

__all__ = ["deform_conv", "DeformConv", "set_torchvision_backend", "CHUNK_ELEMENTS"]

#: ``None`` = auto (torchvision on CUDA if importable), ``True`` = torchvision for 2D when
#: importable, ``False`` = pure PyTorch always. See the module docstring.
use_torchvision: bool | None = None

#: Upper bound on the number of sampled values (B * C * chunk * prod(So)) materialised at once by
#: the pure version when ``chunk_size`` is not given (at least one kernel point is processed).
CHUNK_ELEMENTS: int = 1 << 22


def set_torchvision_backend(flag: bool | None) -> None:
    """Set the module-level backend switch ``use_torchvision`` (``None``, ``True`` or ``False``)."""
    global use_torchvision
    if flag not in (None, True, False):
        raise ValueError(f"flag must be None, True or False, got {flag!r}")
    use_torchvision = flag


@functools.lru_cache(maxsize=None)
def _torchvision_deform_conv2d():
    try:
        from torchvision.ops import deform_conv2d
    except Exception:  # not installed, or a broken/ABI-mismatched install
        return None
    return deform_conv2d


def _want_torchvision(x: torch.Tensor) -> bool:
    if use_torchvision is False or x.ndim != 4:
        return False
    if use_torchvision is None and x.device.type != "cuda":
        return False
    return _torchvision_deform_conv2d() is not None


def _tuple(v, nd: int, name: str) -> tuple[int, ...]:
    t = tuple(int(i) for i in v) if isinstance(v, (tuple, list)) else (int(v),) * nd
    if len(t) != nd:
        raise ValueError(f"{name} needs {nd} values, got {v!r}")
    return t


def _base_positions(so, ks, stride, padding, dilation, shift, device, dtype) -> torch.Tensor:
    """(K, *So, nd) sampling positions, in input index units, of the undeformed kernel."""
    nd = len(so)
    kgrid = torch.meshgrid(*[torch.arange(k, device=device, dtype=dtype) for k in ks], indexing="ij")
    kpos = torch.stack([g.reshape(-1) for g in kgrid], dim=1)  # (K, nd), row-major kernel points
    axes = []
    for a in range(nd):
        view = [1] * nd
        view[a] = so[a]
        o = (torch.arange(so[a], device=device, dtype=dtype) * stride[a] - padding[a] + shift[a]).view(view)
        axes.append(kpos[:, a].view(-1, *[1] * nd) * dilation[a] + o)  # broadcasts to (K, *So)
    return torch.stack(torch.broadcast_tensors(*axes), dim=-1)


def _chunk(xg, off, msk, w, base_n, scale, groups: int):
    """One chunk of kernel points.

    xg (B*G, C/G, *S); off (B, G, Kc, nd, *So); msk (B, G, Kc, P) or None; w (groups, Og, Cg, Kc);
    base_n (Kc, *So, nd) normalised base grid, x first; scale (nd,) 2 / (L - 1), x first.
    Returns (B, groups, Og, P).
    """
    b, g, kc, nd = off.shape[:4]
    so = off.shape[4:]
    p = math.prod(so)
    # (B, G, Kc, *So, nd) in grid_sample's (x, y[, z]) order, written in one pass per axis
    grid = torch.stack([off[:, :, :, a] * scale[nd - 1 - a] + base_n[..., nd - 1 - a]
                        for a in reversed(range(nd))], dim=-1)
    grid = grid.view(b * g, kc * so[0], *so[1:], nd)
    sampled = F.grid_sample(xg, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    sampled = sampled.view(b, g, -1, kc, p)  # (B, G, C/G, Kc, P)
    if msk is not None:
        sampled = sampled * msk.unsqueeze(2)
    cg, og = w.shape[2], w.shape[1]
    cols = sampled.reshape(b, groups, cg * kc, p)
    return torch.matmul(w.reshape(groups, og, cg * kc), cols)


def deform_conv(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None, weight: torch.Tensor,
                bias: torch.Tensor | None = None, stride=1, padding=0, dilation=1, *,
                chunk_size: int | None = None, checkpoint: bool = False) -> torch.Tensor:
    """Modulated deformable convolution (DCNv2; DCNv1 when ``mask`` is None), 2D or 3D.

    The dimension comes from ``x.ndim`` (4: 2D, 5: 3D). Convolution groups are
    ``in_channels // weight.shape[1]``; offset groups ``G = offset.shape[1] // (nd * K)`` (each
    offset group deforms ``in_channels // G`` consecutive input channels). Output position ``o``,
    kernel point ``k`` (index ``kk`` per axis) samples ``x`` at
    ``o * stride - padding + kk * dilation + offset[..., k]`` (bilinear/trilinear, zero outside).

    Args:
        x: (B, C, H, W) or (B, C, D, H, W).
        offset: (B, 2*G*K, Ho, Wo) or (B, 3*G*K, Do, Ho, Wo); layout in the module docstring.
        mask: (B, G*K, *So) modulation (channel ``g*K + k``) or None (DCNv1).
        weight: (O, C / groups, *kernel).
        bias: (O,) or None.
        stride, padding, dilation: int or per-axis tuple.
        chunk_size: kernel points sampled at a time by the pure version (default: as many as keep
            B*C*chunk*prod(So) within ``CHUNK_ELEMENTS``).
        checkpoint: recompute each chunk in the backward pass (torch.utils.checkpoint) instead of
            keeping the sampled values: training memory then stays at about one chunk. Pure only.

    Returns:
        (B, O, *So) with ``So = (S + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1``.
    """
    nd = x.ndim - 2
    if nd not in (2, 3):
        raise ValueError(f"x must be (B, C, H, W) or (B, C, D, H, W), got shape {tuple(x.shape)}")
    if weight.ndim != x.ndim:
        raise ValueError(f"weight must have {x.ndim} dims, got shape {tuple(weight.shape)}")
    b, c, *s = x.shape
    o_ch, cg, *ks = weight.shape
    if c % cg or o_ch % (c // cg):
        raise ValueError(f"{c} input channels do not match weight shape {tuple(weight.shape)}")
    groups = c // cg
    stride, padding, dilation = (_tuple(v, nd, n) for v, n in ((stride, "stride"), (padding, "padding"),
                                                                 (dilation, "dilation")))
    so = [(s[a] + 2 * padding[a] - dilation[a] * (ks[a] - 1) - 1) // stride[a] + 1 for a in range(nd)]
    if min(so) < 1:
        raise ValueError(f"empty output for input {tuple(s)}, kernel {tuple(ks)}")
    k = math.prod(ks)
    g = offset.shape[1] // (nd * k) if offset.ndim == x.ndim else 0
    if (g < 1 or offset.shape[1] != nd * g * k or c % g or offset.shape[0] != b
            or list(offset.shape[2:]) != so):
        raise ValueError(f"offset must be (B={b}, {nd}*G*{k}, {', '.join(map(str, so))}) with G dividing "
                         f"{c}, got {tuple(offset.shape)}")
    if mask is not None and tuple(mask.shape) != (b, g * k, *so):
        raise ValueError(f"mask must be {(b, g * k, *so)}, got {tuple(mask.shape)}")
    if bias is not None and tuple(bias.shape) != (o_ch,):
        raise ValueError(f"bias must be ({o_ch},), got {tuple(bias.shape)}")

    if _want_torchvision(x):
        return _torchvision_deform_conv2d()(x, offset, weight, bias, stride=stride, padding=padding,
                                            dilation=dilation, mask=mask)

    # grid_sample with align_corners=True cannot address an axis of size 1 (it maps every
    # coordinate to index 0): pad such axes with one zero on each side and shift the positions.
    shift = [1 if L == 1 else 0 for L in s]
    if any(shift):
        pad = []
        for a in reversed(range(nd)):
            pad += [shift[a], shift[a]]
        x = F.pad(x, pad)
        s = list(x.shape[2:])
    p = math.prod(so)
    dtype, device = x.dtype, x.device
    scale = torch.tensor([2.0 / (L - 1) for L in reversed(s)], dtype=dtype, device=device)
    base = _base_positions(so, ks, stride, padding, dilation, shift, device, dtype)
    base_n = base.flip(-1) * scale - 1.0  # (K, *So, nd), normalised, x first
    xg = x.reshape(b * g, c // g, *s)
    off = offset.reshape(b, g, k, nd, *so)
    msk = mask.reshape(b, g, k, p) if mask is not None else None
    w = weight.reshape(groups, o_ch // groups, cg, k)
    kc = chunk_size or max(1, CHUNK_ELEMENTS // max(1, b * c * p))
    kc = max(1, min(k, int(kc)))
    use_ckpt = checkpoint and torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, offset, mask, weight))
    out = None
    for k0 in range(0, k, kc):
        k1 = min(k, k0 + kc)
        args = (xg, off[:, :, k0:k1], msk[:, :, k0:k1] if msk is not None else None, w[..., k0:k1],
                base_n[k0:k1], scale, groups)
        part = _checkpoint(_chunk, *args, use_reentrant=False) if use_ckpt else _chunk(*args)
        out = part if out is None else out + part
    out = out.reshape(b, o_ch, *so)
    if bias is not None:
        out = out + bias.view(1, -1, *[1] * nd)
    return out


class DeformConv(nn.Module):
    """Deformable convolution layer with its own offset/mask predictor, 2D or 3D.

    The offset (and mask) head is a convolution with the main one's kernel size, stride, padding
    and dilation whose weights and bias start at zero; the mask is ``2 * sigmoid(m)``. At
    initialisation the offsets are therefore exactly 0 and the mask exactly 1: the layer starts as
    the plain convolution with ``weight`` and ``bias``.

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: channels of ``x`` and of the output.
        kernel_size, stride, dilation: int or per-axis tuple (e.g. ``(1, 3, 3)``).
        padding: int, tuple, or None for 'same' (``dilation * (kernel - 1) // 2``, odd kernels).
        groups: convolution groups.
        offset_groups: G, groups of input channels that share one offset field.
        bias: learnable bias of the main convolution.
        modulated: DCNv2 (with mask) if True, DCNv1 otherwise.
        offset_in_channels: channels of the tensor the offsets are predicted from (default
            ``in_channels``); PGD-UNet passes a localisation feature, LFAM the concatenation of the
            skip and the upsampled decoder feature. It must have ``x``'s spatial size.
        chunk_size, checkpoint: passed to :func:`deform_conv`.

    Shapes:
        x (B, in_channels, *S), offset_input (B, offset_in_channels, *S) -> (B, out_channels, *So).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size=3, stride=1,
                 padding=None, dilation=1, groups: int = 1, offset_groups: int = 1, bias: bool = True,
                 modulated: bool = True, offset_in_channels: int | None = None,
                 chunk_size: int | None = None, checkpoint: bool = False):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        nd = spatial_dims
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide {in_channels} and {out_channels}")
        if in_channels % offset_groups:
            raise ValueError(f"offset_groups={offset_groups} must divide in_channels={in_channels}")
        self.spatial_dims = nd
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _tuple(kernel_size, nd, "kernel_size")
        self.stride = _tuple(stride, nd, "stride")
        self.dilation = _tuple(dilation, nd, "dilation")
        if padding is None:
            if any(k % 2 == 0 for k in self.kernel_size):
                raise ValueError("padding=None ('same') needs odd kernel sizes; give padding explicitly")
            padding = tuple(d * (k - 1) // 2 for k, d in zip(self.kernel_size, self.dilation))
        self.padding = _tuple(padding, nd, "padding")
        self.groups, self.offset_groups, self.modulated = groups, offset_groups, modulated
        self.chunk_size, self.checkpoint = chunk_size, checkpoint
        k = math.prod(self.kernel_size)
        self._n_offset = nd * offset_groups * k
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.offset_in_channels = offset_in_channels or in_channels
        self.offset_conv = fx.conv(nd, self.offset_in_channels,
                                   self._n_offset + (offset_groups * k if modulated else 0),
                                   self.kernel_size, stride=self.stride, dilation=self.dilation,
                                   padding=self.padding)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Main weights as ``nn.Conv`` (Kaiming-uniform, a = sqrt 5); offset head to zero."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.offset_conv.weight)
        nn.init.zeros_(self.offset_conv.bias)

    def offsets_and_mask(self, x: torch.Tensor, offset_input: torch.Tensor | None = None):
        """Predicted ``(offset (B, nd*G*K, *So), mask (B, G*K, *So) or None)``."""
        src = x if offset_input is None else offset_input
        if src.shape[2:] != x.shape[2:] or src.shape[0] != x.shape[0]:
            raise ValueError(f"offset_input {tuple(src.shape)} must have x's batch and spatial size "
                             f"{tuple(x.shape)}")
        om = self.offset_conv(src)
        offset = om[:, :self._n_offset]
        mask = 2.0 * torch.sigmoid(om[:, self._n_offset:]) if self.modulated else None
        return offset, mask

    def forward(self, x: torch.Tensor, offset_input: torch.Tensor | None = None) -> torch.Tensor:
        offset, mask = self.offsets_and_mask(x, offset_input)
        return self.forward_with(x, offset, mask)

    def forward_with(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The deformable convolution with given ``offset`` and ``mask`` (the head is not used)."""
        return deform_conv(x, offset, mask, self.weight, self.bias, self.stride, self.padding, self.dilation,
                           chunk_size=self.chunk_size, checkpoint=self.checkpoint)

    def extra_repr(self) -> str:
        return (f"spatial_dims={self.spatial_dims}, {self.in_channels}, {self.out_channels}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, groups={self.groups}, offset_groups={self.offset_groups}, "
                f"modulated={self.modulated}, offset_in_channels={self.offset_in_channels}")
