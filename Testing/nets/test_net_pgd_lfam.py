"""PGD-UNet (position-guided deformable U-Net) and the LFAM U-Net (lateral feature alignment)."""

import pytest
import torch

from medseg_core.nets import SegOutput, build_network
from medseg_core.nets.layers import DeformConv
from medseg_core.nets.lfam_unet import LFAM

# (spatial_dims, input shape, features): odd sizes, batch 2, tiny widths.
CASES = [
    (2, (2, 1, 37, 45), (4, 8, 8, 16, 16)),   # five levels: deformable levels 1, 2, 3
    (3, (2, 1, 17, 19, 21), (4, 8, 8, 16)),   # four levels: deformable levels 1, 2
]


def _check_output(out, shape, classes):
    assert isinstance(out, SegOutput)
    assert out.logits.shape == (shape[0], classes) + shape[2:]
    assert len(out.deep_supervision) == 2
    for k, ds in enumerate(out.deep_supervision, start=1):
        assert ds.shape[:2] == (shape[0], classes)
        assert all(abs(d - s // 2 ** k) <= 1 for d, s in zip(ds.shape[2:], shape[2:]))


def _missing_grads(net, out):
    (out.logits.mean() + sum(d.mean() for d in out.deep_supervision)).backward()
    return [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]


# --------------------------------------------------------------------------------------- PGD-UNet

@pytest.mark.parametrize("coord_mode", ["mean", "channel"])
@pytest.mark.parametrize("dims,shape,features", CASES)
def test_pgd_unet_odd_shapes_and_gradients(dims, shape, features, coord_mode):
    torch.manual_seed(0)
    net = build_network("pgd_unet", spatial_dims=dims, in_channels=1, out_channels=3, features=features,
                        deep_supervision=True, coord_mode=coord_mode)
    assert net.middle == list(range(1, len(features) - 1))
    n_deform = sum(isinstance(m, DeformConv) for m in net.modules())
    assert n_deform == 2 * (len(features) - 2)  # encoder + decoder of every middle level
    out = net(torch.randn(*shape))
    _check_output(out, shape, 3)
    assert not _missing_grads(net, out)


def _perturb(modules, gen):
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.5)


@pytest.mark.parametrize("dims,shape", [(2, (2, 1, 23, 29)), (3, (1, 1, 13, 15, 17))])
def test_pgd_unet_localisation_path_acts_only_through_offsets(dims, shape):
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(2)
    net = build_network("pgd_unet", spatial_dims=dims, in_channels=1, out_channels=2,
                        features=(4, 8, 8, 16)).eval()
    x = torch.randn(*shape)
    loc_modules = [net.loc_down, net.loc_dilated] + [u.guide for u in (*net.enc_deform, *net.dec_second)
                                                     if hasattr(u, "guide")]
    with torch.no_grad():
        ref = net(x).logits
        # zero-initialised offset heads: the localisation path cannot change anything
        _perturb(loc_modules, gen)
        assert torch.equal(net(x).logits, ref)
        # once the offset heads are non-zero, the deformable convolutions deform ...
        heads = [m.offset_conv for m in net.modules() if isinstance(m, DeformConv)]
        assert len(heads) == 4
        for h in heads:
            h.weight.normal_(0.0, 0.2, generator=gen)
        deformed = net(x).logits
        assert not torch.allclose(deformed, ref)
        # ... and the localisation path now guides them
        _perturb(loc_modules, gen)
        assert not torch.allclose(net(x).logits, deformed)


def test_pgd_unet_rejects_bad_arguments():
    with pytest.raises(ValueError, match="coord_mode"):
        build_network("pgd_unet", spatial_dims=2, features=(4, 8, 16), coord_mode="max")
    with pytest.raises(ValueError, match="loc_dilations"):
        build_network("pgd_unet", spatial_dims=2, features=(4, 8, 8, 8, 8, 16), loc_dilations=(2, 3, 5))


# --------------------------------------------------------------------------------------- LFAM U-Net

@pytest.mark.parametrize("residual,share", [(False, False), (True, True)])
@pytest.mark.parametrize("dims,shape,features", CASES)
def test_lfam_unet_odd_shapes_and_gradients(dims, shape, features, residual, share):
    torch.manual_seed(0)
    net = build_network("lfam_unet", spatial_dims=dims, in_channels=1, out_channels=3, features=features,
                        residual=residual, share_alignment=share, offset_groups=2, deep_supervision=True)
    n_deform = sum(isinstance(m, DeformConv) for m in net.modules())
    assert n_deform == (1 if share else len(features) - 1)
    out = net(torch.randn(*shape))
    _check_output(out, shape, 3)
    assert not _missing_grads(net, out)


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("dims,shape", [(2, (2, 1, 23, 29)), (3, (1, 1, 13, 15, 17))])
def test_lfam_is_the_identity_at_init(dims, shape, share):
    """Each LFAM returns its skip input bit for bit, so the network is a U-Net with these weights;
    once its deformable kernel is non-zero it changes the skip."""
    torch.manual_seed(3)
    net = build_network("lfam_unet", spatial_dims=dims, in_channels=1, out_channels=2,
                        features=(4, 8, 8, 16), offset_groups=4, share_alignment=share).eval()
    seen = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append((args[0], out)))
             for m in net.modules() if isinstance(m, LFAM)]
    x = torch.randn(*shape)
    with torch.no_grad():
        ref = net(x).logits
        assert len(seen) == 3
        for skip, aligned in seen:
            assert torch.equal(aligned, skip)
        # The same network without its LFAMs: a plain U-Net with these weights gives these logits.
        unet = build_network("unet", spatial_dims=dims, in_channels=1, out_channels=2, features=(4, 8, 8, 16)).eval()
        result = unet.load_state_dict(net.state_dict(), strict=False)
        assert not result.missing_keys
        assert result.unexpected_keys and all(k.startswith(("lfam.", "shared_alignment."))
                                              for k in result.unexpected_keys)
        torch.testing.assert_close(unet(x).logits, ref, rtol=0, atol=0)
        seen.clear()
        for m in net.modules():
            if isinstance(m, DeformConv):
                m.weight.normal_(0.0, 0.3)
                m.offset_conv.weight.normal_(0.0, 0.3)
        out = net(x).logits
    for h in hooks:
        h.remove()
    assert all(not torch.allclose(aligned, skip) for skip, aligned in seen)
    assert not torch.allclose(out, ref)


def test_lfam_sharing_saves_parameters_and_checks_groups():
    def count(**kw):
        net = build_network("lfam_unet", spatial_dims=3, in_channels=1, out_channels=2,
                            features=(8, 16, 32, 32), offset_groups=4, **kw)
        return sum(p.numel() for p in net.parameters())

    assert count(share_alignment=True) < count(share_alignment=False)
    with pytest.raises(ValueError, match="offset_groups"):
        build_network("lfam_unet", spatial_dims=2, features=(4, 8, 16), offset_groups=8)
    with pytest.raises(ValueError, match="offset_groups"):
        build_network("lfam_unet", spatial_dims=2, features=(8, 16, 32), offset_groups=4,
                      share_alignment=True, align_channels=6)
