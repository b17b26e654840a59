"""Exports of networks whose graph follows the input's size (PGD-UNet's CoordConv and position-
guided deformable convolutions, LFAM's deformable alignment): traced at the window, they give
PyTorch's logits there and run no other window; a plain U-Net still runs stretched windows."""

import numpy as np
import pytest
import torch

from medseg_core.inference import runtime
from medseg_core.inference.runtime import OpenVinoWindows
from medseg_core.nets import build_network

needs_openvino = pytest.mark.skipif(runtime.openvino_version() is None,
                                    reason="OpenVINO is optional (pip install openvino onnx); PyTorch runs without it")


@needs_openvino
@pytest.mark.parametrize("name,dims,window", [("pgd_unet", 2, (1, 32, 48)), ("lfam_unet", 2, (1, 32, 48))])
def test_a_network_that_follows_the_input_size_is_exported_at_its_window(name, dims, window):
    """On the old export (traced at the largest power of two dividing every side, 16 here) the
    bundled PGD-UNet's Dice on HNOAR fell from 0.60 to 0.01, LFAM's from 0.67 to 0.27."""
    torch.manual_seed(0)
    net = build_network(name, spatial_dims=dims, in_channels=1, out_channels=3, features=(4, 8, 16, 32)).eval()
    assert not net.traces_at_any_size
    with torch.no_grad():  # kernels and offsets that are not zero (LFAM's start so), so the sampling grid matters
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, *window)
    xml = runtime.export(net, window, "5e" * 32)
    ov = OpenVinoWindows(xml, window, threads=1, net=net)
    with torch.inference_mode():
        ref = net(x).logits.numpy()
    out = ov(x.numpy())
    assert np.allclose(out, ref, atol=1e-3), float(np.abs(out - ref).max())
    stretched = (1, *window[1:-1], window[-1] + 4)
    assert ov.fits(x[:1].numpy()) and not ov.fits(np.zeros((1, *stretched), np.float32))
    cached = OpenVinoWindows.cached("5e" * 32, window)  # read from the cache alone: the same rule
    assert cached.exact == window and not cached.takes(stretched)


def test_a_plain_unet_traces_at_any_size():
    assert build_network("unet", spatial_dims=3, features=[4, 8, 16]).traces_at_any_size
