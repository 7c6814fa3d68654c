"""Training-time augmentation with torchvision.transforms.v2, and the matching evaluation transform.

CLI grammar for `AugmentConfig.parse`: comma-separated tokens applied left to right, starting from
everything off. `all` = every default on, `none` = everything off (so `all,rotate=0` = defaults
without rotation). A bare name switches one augmentation on with its default; `name=value` sets it:
  crop[=LO:HI]   RandomResizedCrop area range, 0 < LO <= HI <= 1      ratio=LO:HI  its aspect range
  color          ColorJitter; brightness=, contrast=, saturation= (>= 0), hue= (0..0.5) set and switch it on
  noise[=STD]    Gaussian pixel noise on [0, 1] pixels (0..1)           rotate[=DEG]  up to +-DEG (0..180)
  tilt[=S]       RandomPerspective distortion scale (0..1)              flip          horizontal flip
`name=off` (or no/false, or 0) switches any of them off; `crop`, `color`, `flip` also take on/yes/true.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from deepret.errors import DeepretError
from deepret.imageio import target_shape, to_tensor

Transform = Callable[[Image.Image], torch.Tensor]
_ON, _OFF = {"on", "yes", "true"}, {"off", "no", "false"}
_COLOR = ("brightness", "contrast", "saturation", "hue")
_AMOUNTS = {"noise": ("pixel_noise", 1.0), "rotate": ("rotate", 180.0), "tilt": ("tilt", 1.0)}
_NAMES = "all, none, crop[=LO:HI], ratio=LO:HI, color, brightness=, contrast=, saturation=, hue=, noise=, " \
         "rotate=, tilt=, flip (name=off to disable)"


@dataclass
class AugmentConfig:
    """Which random augmentations `train_transform` applies; the defaults are all on ("all")."""

    crop: bool = True
    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    color: bool = True
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.05
    pixel_noise: float = 0.02  # std of additive Gaussian noise on [0, 1] pixels ("pixel jitter"), 0 = off
    rotate: float = 10.0  # degrees, 0 = off
    tilt: float = 0.2  # RandomPerspective distortion scale, 0 = off
    flip: bool = True

    @classmethod
    def none(cls) -> AugmentConfig:
        """Everything off (settings at their defaults)."""
        return cls(crop=False, color=False, pixel_noise=0.0, rotate=0.0, tilt=0.0, flip=False)

    @property
    def active(self) -> bool:
        """Whether any augmentation is switched on."""
        return self.crop or self.color or self.flip or bool(self.pixel_noise or self.rotate or self.tilt)

    @classmethod
    def parse(cls, spec: str) -> AugmentConfig:
        """Build a config from a CLI string such as "all", "none", "crop,flip" or "crop=0.4:1,rotate=15"."""
        tokens = [t.strip() for t in spec.split(",")]
        if not all(tokens):
            raise DeepretError(f"empty token in augmentation spec {spec!r}: use {_NAMES}")
        cfg = cls.none()
        for token in tokens:
            cfg = _apply(cfg, token, spec)
        return cfg

    def to_spec(self) -> str:
        """The `parse` string for this config: `AugmentConfig.parse(c.to_spec()) == c`."""
        d, parts = AugmentConfig(), []
        if self.crop or (self.crop_scale, self.crop_ratio) != (d.crop_scale, d.crop_ratio):
            parts += [f"crop={_pair(self.crop_scale)}", f"ratio={_pair(self.crop_ratio)}"]
            parts += [] if self.crop else ["crop=off"]
        if self.color or any(getattr(self, k) != getattr(d, k) for k in _COLOR):
            parts += [f"{k}={_fmt(getattr(self, k))}" for k in _COLOR] + ([] if self.color else ["color=off"])
        parts += [f"{name}={_fmt(getattr(self, attr))}" for name, (attr, _) in _AMOUNTS.items() if getattr(self, attr)]
        parts += ["flip"] if self.flip else []
        return ",".join(parts) or "none"


def train_transform(size: int, mean: Sequence[float], std: Sequence[float],
                    augment: AugmentConfig | None) -> Transform:
    """PIL image -> (3, size, size) float32 tensor, randomly augmented and normalised with mean/std.

    Training batches need one shape, so the output is always a size x size square: RandomResizedCrop
    when `crop` is on, else a plain resize to the square (aspect not kept). Geometry and colour work on
    the PIL image; noise is added to [0, 1] pixels before normalising; rotated/tilted corners are filled
    with the mean colour. `augment=None` or everything off = the resize + normalise of `imageio.to_tensor`.
    """
    a = augment or AugmentConfig.none()
    fill = [int(round(255 * m)) for m in mean]
    steps: list[Callable] = [v2.RandomResizedCrop(size, scale=a.crop_scale, ratio=a.crop_ratio, antialias=True)
                             if a.crop else v2.Resize((size, size), antialias=True)]
    if a.flip:
        steps.append(v2.RandomHorizontalFlip())
    if a.rotate:
        steps.append(v2.RandomRotation(a.rotate, interpolation=InterpolationMode.BILINEAR, fill=fill))
    if a.tilt:
        steps.append(v2.RandomPerspective(a.tilt, fill=fill))
    if a.color:
        steps.append(v2.ColorJitter(a.brightness, a.contrast, a.saturation, a.hue))
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if a.pixel_noise:
        steps.append(v2.GaussianNoise(sigma=a.pixel_noise))
    steps.append(v2.Normalize(list(mean), list(std)))
    return v2.Compose(steps)


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float], round_to: int = 1) -> Transform:
    """PIL image -> (3, H, W) tensor with the longest side `size` (aspect kept, the short side rounded to
    `round_to` px as `deepret extract` does with its round_to), normalised; deterministic."""
    return partial(_eval, size=size, mean=tuple(mean), std=tuple(std), round_to=round_to)


def _eval(im: Image.Image, size: int, mean: Sequence[float], std: Sequence[float], round_to: int) -> torch.Tensor:
    return to_tensor(im, target_shape(im.size[0], im.size[1], size, round_to), mean, std)


def _apply(cfg: AugmentConfig, token: str, spec: str) -> AugmentConfig:
    """`cfg` with one token of the grammar applied."""
    name, eq, value = (s.strip().lower() for s in token.partition("="))

    def bad(why: str) -> DeepretError:
        return DeepretError(f"bad augmentation token {token!r} in {spec!r}: {why}")

    if name in ("all", "none"):
        if eq:
            raise bad(f"{name} takes no value")
        return AugmentConfig() if name == "all" else AugmentConfig.none()
    if name in ("crop", "color", "flip") and (not eq or value in _ON | _OFF | {"1", "0"}):
        return replace(cfg, **{name: not eq or value in _ON | {"1"}})
    if name == "crop":
        return replace(cfg, crop=True, crop_scale=_range(value, 1.0, bad, "crop=LO:HI with 0 < LO <= HI <= 1"))
    if name == "ratio":
        return replace(cfg, crop=True, crop_ratio=_range(value, math.inf, bad, "ratio=LO:HI with 0 < LO <= HI"))
    if name in _COLOR and eq:
        return replace(cfg, color=True, **{name: _number(value, 0.5 if name == "hue" else math.inf, bad)})
    if name in _AMOUNTS:
        attr, top = _AMOUNTS[name]
        amount = getattr(AugmentConfig(), attr) if not eq or value in _ON else 0.0 if value in _OFF else None
        return replace(cfg, **{attr: _number(value, top, bad) if amount is None else amount})
    if name in ("color", "flip"):
        hint = "; set brightness=, contrast=, saturation=, hue=" if name == "color" else ""
        raise bad(f"{name} takes on or off{hint}")
    if name in _COLOR:
        raise bad(f"{name} needs a value, e.g. {name}={getattr(AugmentConfig(), name)}")
    raise DeepretError(f"unknown augmentation {name!r} in {spec!r}: use {_NAMES}")


def _number(text: str, top: float, bad: Callable[[str], DeepretError]) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise bad(f"{text!r} is not a number") from exc
    if not (math.isfinite(value) and 0 <= value <= top):
        raise bad(f"{text} is out of range [0, {top:g}]")
    return value


def _range(text: str, top: float, bad: Callable[[str], DeepretError], form: str) -> tuple[float, float]:
    lo_hi = text.split(":")
    if len(lo_hi) != 2:
        raise bad(f"expected {form}")
    lo, hi = (_number(t, top, bad) for t in lo_hi)
    if not 0 < lo <= hi:
        raise bad(f"expected {form}")
    return lo, hi


def _fmt(x: float) -> str:
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


def _pair(pair: tuple[float, float]) -> str:
    return f"{_fmt(pair[0])}:{_fmt(pair[1])}"
