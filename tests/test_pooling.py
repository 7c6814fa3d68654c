import pytest
import torch

from deepret.models import MAC, GeM, SPoC, gem, l2n, mac, spoc


@pytest.fixture
def fmap():
    torch.manual_seed(0)
    return torch.rand(2, 4, 5, 7) + 0.01


def test_mac_and_spoc_are_spatial_max_and_mean(fmap):
    assert torch.equal(mac(fmap), fmap.flatten(2).max(-1).values)
    assert torch.allclose(spoc(fmap), fmap.flatten(2).mean(-1))
    assert torch.equal(MAC()(fmap), mac(fmap)) and torch.equal(SPoC()(fmap), spoc(fmap))


def test_gem_interpolates_between_mean_and_max(fmap):
    assert torch.allclose(gem(fmap, 1.0), spoc(fmap), atol=1e-6)
    assert torch.allclose(gem(fmap, 200.0), mac(fmap), rtol=2e-2)
    hand = fmap.pow(3).mean(dim=(-2, -1)).pow(1 / 3)
    assert torch.allclose(gem(fmap, 3.0), hand, atol=1e-6)
    assert torch.allclose(GeM(3.0)(fmap), hand, atol=1e-6)


def test_gem_per_channel_p_uses_each_channels_own_p(fmap):
    p = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = gem(fmap, p)
    for c in range(4):
        assert torch.allclose(out[:, c], gem(fmap[:, c:c + 1], float(p[c]))[:, 0], atol=1e-6)
    module = GeM(3.0, per_channel=True, channels=4, learn_p=True)
    assert module.p.shape == (4,)


def test_learnable_p_receives_gradient_and_fixed_p_does_not(fmap):
    learnable = GeM(3.0, learn_p=True)
    learnable(fmap).sum().backward()
    assert learnable.p.grad is not None and learnable.p.grad.abs().item() > 0
    fixed = GeM(3.0)
    assert not any(True for _ in fixed.parameters()) and "p" in dict(fixed.named_buffers())


def test_gem_clamps_negative_activations(fmap):
    assert torch.isfinite(gem(fmap - 0.5, 3.0)).all()


def test_l2n_gives_unit_rows():
    x = torch.randn(5, 9)
    assert torch.allclose(l2n(x).norm(dim=1), torch.ones(5), atol=1e-6)
