"""Training augmentation: output shapes, the off switch, each switch's effect, and the CLI grammar."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deepret.augment import AugmentConfig, eval_transform, train_transform
from deepret.errors import DeepretError
from deepret.imageio import to_tensor

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
OFF = {"crop": False, "color": False, "pixel_noise": 0.0, "rotate": 0.0, "tilt": 0.0, "flip": False}


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _draws(spec: str | None, im: Image.Image, n: int = 8, size: int = 32, seed: int = 0) -> list[torch.Tensor]:
    transform = train_transform(size, MEAN, STD, None if spec is None else AugmentConfig.parse(spec))
    torch.manual_seed(seed)
    return [transform(im) for _ in range(n)]


def test_shapes_and_dtypes():
    wide, tall = _image(80, 48), _image(48, 80)
    for im in (wide, tall):
        for x in _draws("all", im, n=4) + _draws("none", im, n=1) + _draws("crop=off,rotate=45,tilt=1", im, n=4):
            assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert eval_transform(32, MEAN, STD)(wide).shape == (3, 19, 32)
    assert eval_transform(32, MEAN, STD)(tall).shape == (3, 32, 19)
    assert eval_transform(32, MEAN, STD, round_to=8)(wide).shape == (3, 16, 32)
    assert torch.equal(eval_transform(32, MEAN, STD)(wide), to_tensor(wide, (19, 32), MEAN, STD))


def test_everything_off_is_resize_and_normalise():
    im = _image(80, 48)
    expected = to_tensor(im, (32, 32), MEAN, STD)
    for spec in (None, "none", "crop=off,color=off,noise=0,rotate=0,tilt=0,flip=off", "all,none"):
        first, second = _draws(spec, im, n=2)
        assert torch.equal(first, second)
        torch.testing.assert_close(first, expected, atol=1e-5, rtol=0)


def test_seeded_draws_are_reproducible():
    im = _image(80, 48)
    a, b = _draws("all", im, seed=5), _draws("all", im, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, _draws("all", im, seed=6)))


@pytest.mark.parametrize("spec", ["crop", "ratio=0.5:2", "color", "brightness=0.5", "hue=0.2", "noise",
                                  "rotate", "tilt", "flip", "all"])
def test_each_switch_changes_the_output(spec):
    im = _image(40, 40)
    base = to_tensor(im.resize((32, 32), Image.BILINEAR), (32, 32), MEAN, STD)
    draws = _draws(spec, im)
    assert sum(not torch.allclose(x, base, atol=1e-4) for x in draws) >= 2
    assert all(x.shape == base.shape for x in draws)


def test_flip_gives_the_mirror_image_about_half_the_time():
    im = _image(32, 32)
    base = to_tensor(im, (32, 32), MEAN, STD)
    draws = _draws("flip", im, n=30)
    flipped = sum(torch.allclose(x, base.flip(-1), atol=1e-5) for x in draws)
    same = sum(torch.allclose(x, base, atol=1e-5) for x in draws)
    assert flipped + same == 30 and 5 <= flipped <= 25


def test_rotation_and_tilt_keep_the_size_and_fill_with_the_mean():
    for spec in ("rotate=45", "tilt=1"):
        draws = _draws(spec, _image(80, 48), n=6)
        assert all(x.shape == (3, 32, 32) for x in draws)
        corners = torch.stack([x[:, [0, 0, -1, -1], [0, -1, 0, -1]] for x in draws])
        assert (corners.abs() < 0.03).any()  # the mean colour normalises to about 0


def test_pixel_noise_has_the_requested_std():
    grey = Image.new("RGB", (32, 32), (128, 128, 128))
    base = to_tensor(grey, (32, 32), MEAN, STD)
    noise = (_draws("noise=0.05", grey, n=1)[0] - base) * torch.tensor(STD).view(3, 1, 1)
    assert abs(noise.std().item() - 0.05) < 0.01 and abs(noise.mean().item()) < 0.01


def test_parse_grammar():
    assert AugmentConfig.parse("all") == AugmentConfig() and AugmentConfig.parse("none") == AugmentConfig(**OFF)
    assert AugmentConfig.parse("crop,flip") == AugmentConfig(**{**OFF, "crop": True, "flip": True})
    cfg = AugmentConfig.parse("crop=0.4:1, rotate=15,tilt=0,noise=0.05")
    assert cfg == AugmentConfig(**{**OFF, "crop": True, "crop_scale": (0.4, 1.0), "rotate": 15.0, "pixel_noise": 0.05})
    assert AugmentConfig.parse("all,rotate=0,flip=off") == AugmentConfig(rotate=0.0, flip=False)
    assert AugmentConfig.parse("BRIGHTNESS=0.5") == AugmentConfig(**{**OFF, "color": True, "brightness": 0.5})
    assert AugmentConfig.parse("rotate,tilt,noise") == AugmentConfig(**{**OFF, "rotate": 10.0, "tilt": 0.2,
                                                                          "pixel_noise": 0.02})
    assert not AugmentConfig.parse("none").active and AugmentConfig.parse("tilt").active


@pytest.mark.parametrize("spec", ["all", "none", "crop,flip", "crop=0.4:1,rotate=15,tilt=0,noise=0.05",
                                  "all,rotate=0", "ratio=1:2,crop=off,hue=0.1,color=off", "color,flip=yes"])
def test_parse_round_trips(spec):
    cfg = AugmentConfig.parse(spec)
    assert AugmentConfig.parse(cfg.to_spec()) == cfg
    assert AugmentConfig.parse(AugmentConfig(crop_ratio=(1 / 3, 3.0), rotate=2.5).to_spec()) == \
        AugmentConfig(crop_ratio=(1 / 3, 3.0), rotate=2.5)


@pytest.mark.parametrize("spec, token", [("crop,blur", "'blur'"), ("crop=2:1", "'crop=2:1'"),
                                         ("crop=0.4", "'crop=0.4'"), ("crop=0.6:0.5", "'crop=0.6:0.5'"),
                                         ("rotate=abc", "'rotate=abc'"), ("noise=-1", "'noise=-1'"),
                                         ("hue=0.9", "'hue=0.9'"), ("flip=maybe", "'flip=maybe'"),
                                         ("color=0.5", "'color=0.5'"), ("brightness", "'brightness'"),
                                         ("all=1", "'all=1'"), ("crop,,flip", "'crop,,flip'"), ("", "''"),
                                         ("tilt=nan", "'tilt=nan'"), ("ratio=1:inf", "'ratio=1:inf'")])
def test_parse_rejects_bad_tokens(spec, token):
    with pytest.raises(DeepretError, match=token):
        AugmentConfig.parse(spec)
