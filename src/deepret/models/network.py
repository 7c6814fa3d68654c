"""The retrieval network: backbone trunk + head (pooling or fc7) + optional whitening + L2 norm.

Every network carries a `meta` dict that rebuilds it: `save` writes it beside the state_dict and
`load` turns a checkpoint back into the same network, with no download. `load` also takes a
checkpoint of cirtorch (deepret.models.cirtorch), and `get_model` its published names.
"""
from __future__ import annotations

import copy
import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepret.errors import DeepretError
from deepret.fileio import atomic_path
from deepret.models import cirtorch
from deepret.models.backbones import build_backbone, default_size
from deepret.models.pooling import POOLINGS, GeM, l2n
from deepret.models.registry import CIRTORCH_MODELS, FC7_INPUT_SIZE
from deepret.models.weights import safe_load
from deepret.version import __version__

HEADS = ("fc7", "mac", "spoc", "gem")


class WhiteningStages(nn.Module):
    """Linear whitenings applied in turn, each output L2-normalised before the next one (cirtorch's FC
    whitening followed by its Lw); the network normalises the last output."""

    def __init__(self, stages: list[dict[str, Any]]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(s["dim_in"], s["dim_out"], bias=True) for s in stages)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            v = layer(l2n(v) if i else v)
        return v


class RetrievalNet(nn.Module):
    """Maps a normalised image batch (B, 3, H, W) to L2-normalised descriptors (B, D)."""

    def __init__(self, trunk: nn.Module, pool: nn.Module | None, meta: dict[str, Any]) -> None:
        super().__init__()
        self.trunk = trunk
        self.pool = pool
        self.meta = meta
        self.whiten: nn.Linear | None = None
        self.whitening_from_meta()

    def whitening_from_meta(self) -> None:
        """(Re)create the whitening layer that meta["whitening"] describes (untrained), or none; a
        whitening of several "stages" becomes WhiteningStages."""
        w = self.meta.get("whitening")
        if w and w.get("stages"):
            self.whiten = WhiteningStages(w["stages"])
        else:
            self.whiten = nn.Linear(w["dim_in"], w["dim_out"], bias=True) if w else None

    @property
    def dim(self) -> int:
        """Descriptor dimensionality."""
        return self.meta["whitening"]["dim_out"] if self.meta.get("whitening") else self.meta["dim"]

    @property
    def input_size(self) -> int | None:
        """Fixed square input side (fc7 heads), or None for any size."""
        return self.meta["input"]["size"]

    @property
    def default_size(self) -> int:
        """Evaluation size (longest image side) used when none is given: the backbone's, kept in meta
        (checkpoints written before it was kept take the backbone registry's)."""
        return int(self.meta["input"].get("default_size") or default_size(self.meta["backbone"]))

    def pool_map(self, features: torch.Tensor) -> torch.Tensor:
        """The pooled trunk output (B, D), computed in float32 outside any autocast region: GeM's
        power needs fp32's range and precision whatever the trunk ran in (fc7 features pass through)."""
        with torch.autocast(features.device.type, enabled=False):
            features = features.float()
            return self.pool(features) if self.pool is not None else features

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised descriptors before whitening."""
        return l2n(self.pool_map(self.trunk(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.pooled(x)
        if self.whiten is None:
            return v
        with torch.autocast(v.device.type, enabled=False):  # whitening and L2 norm in fp32 too
            return l2n(self.whiten(v))

    def set_whitening(self, matrix: torch.Tensor, bias: torch.Tensor, method: str) -> None:
        """Install a learned projection v -> matrix @ v + bias after pooling (kept in meta)."""
        dim_out, dim_in = matrix.shape
        self.meta["whitening"] = {"dim_in": dim_in, "dim_out": dim_out, "method": method}
        self.whiten = nn.Linear(dim_in, dim_out, bias=True).to(next(self.trunk.parameters()).device)
        with torch.no_grad():
            self.whiten.weight.copy_(matrix)
            self.whiten.bias.copy_(bias)

    def gem_p(self) -> float | None:
        """The GeM exponent as one number (mean if per channel), None for other heads."""
        return float(self.pool.p.detach().mean()) if isinstance(self.pool, GeM) else None


def parse_name(name: str) -> tuple[str, str]:
    """'resnet50-gem' -> ('resnet50', 'gem')."""
    backbone, sep, head = name.rpartition("-")
    if not sep or head not in HEADS:
        raise DeepretError(f"model name {name!r} is not <backbone>-<head> with head one of "
                           f"{', '.join(HEADS)}: run `deepret models` for the names")
    return backbone, head


def create_model(name: str, weights: str = "imagenet", p: float = 3.0, learn_p: bool = False,
                 per_channel_p: bool = False) -> RetrievalNet:
    """Build a registered network by name, e.g. create_model('resnet50-gem', weights='imagenet')."""
    backbone_name, head = parse_name(name)
    backbone = build_backbone(backbone_name, weights)
    trunk = backbone.fc7_trunk() if head == "fc7" else backbone.conv_trunk()
    dim = _output_dim(trunk, needs_map=head != "fc7")
    if head == "fc7":
        pool, size = None, FC7_INPUT_SIZE
    else:
        pool = GeM(p, learn_p=learn_p, per_channel=per_channel_p, channels=dim) if head == "gem" \
            else POOLINGS[head]()
        size = None
    meta = {
        "name": name, "backbone": backbone_name, "head": head,
        "gem": {"p": p, "learn_p": learn_p, "per_channel": per_channel_p} if head == "gem" else None,
        "dim": int(dim), "whitening": None,
        "input": {"size": size, "default_size": backbone.spec.default_size,
                  "mean": list(backbone.mean), "std": list(backbone.std)},
        "weights": str(weights), "provenance": backbone.provenance,
        "deepret_version": __version__,
    }
    net = RetrievalNet(trunk, pool, meta)
    return net.eval()


def _output_dim(trunk: nn.Module, needs_map: bool) -> int:
    """Channels (or features) the trunk gives on a 224x224 input."""
    trunk.eval()
    with torch.no_grad():
        out = trunk(torch.zeros(1, 3, 224, 224))
    if needs_map and out.dim() != 4:
        raise DeepretError(f"the backbone gives {out.dim()}-d features, not a (B, C, H, W) map: "
                           "pooling heads need a convolutional backbone")
    return int(out.shape[1])


def save(net: RetrievalNet, path: str | Path, **extra: Any) -> Path:
    """Write {'meta', 'state_dict', **extra} atomically (deepret.fileio); loadable with weights_only."""
    with atomic_path(path) as tmp:
        torch.save({"meta": copy.deepcopy(net.meta), "state_dict": net.state_dict(), **extra}, tmp)
    return Path(path)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A deepret (or cirtorch) checkpoint as a dict, loaded with `weights_only=True` (tensors, plain
    Python containers and numpy arrays of numbers only: a downloaded file cannot run code).
    DeepretError for missing, corrupt, foreign or pre-weights_only files."""
    path = Path(path)
    if not path.is_file():
        raise DeepretError(f"checkpoint {path} not found: give a model name (`deepret models`) or a saved checkpoint")
    try:
        checkpoint = safe_load(path, map_location=map_location)
    except pickle.UnpicklingError as exc:  # weights_only refused an object: not written by deepret's save
        raise DeepretError(f"checkpoint {path} holds Python objects other than tensors and plain data "
                           "(a pickled model or a file of another program): deepret loads only its own "
                           "checkpoints; re-save the network with deepret.models.save") from exc
    except Exception as exc:
        raise DeepretError(f"cannot read checkpoint {path} ({exc.__class__.__name__}): "
                           "it is not a deepret checkpoint or it is corrupt") from exc
    if not isinstance(checkpoint, dict) or not {"meta", "state_dict"} <= set(checkpoint):
        raise DeepretError(f"checkpoint {path} has no deepret 'meta' and 'state_dict': for a plain state_dict "
                           "use --weights FILE with a model name")
    return checkpoint


def load(path: str | Path, map_location: str | torch.device = "cpu", name: str | None = None,
         origin: str = "") -> RetrievalNet:
    """Rebuild a network saved by `save` (architecture from its meta, then its weights), or the
    network of a cirtorch checkpoint (deepret.models.cirtorch: `name` and `origin` name it and say
    where the file came from)."""
    checkpoint = read_checkpoint(path, map_location)
    kind = "deepret"
    if cirtorch.is_cirtorch_checkpoint(checkpoint):
        kind = "cirtorch"
        try:
            checkpoint = cirtorch.to_deepret(checkpoint, path, name=name, origin=origin)
        except (KeyError, TypeError, AttributeError, ValueError, RuntimeError) as exc:
            raise DeepretError(f"cirtorch checkpoint {path} cannot be read ({exc.__class__.__name__}: "
                               f"{_first_line(exc)}): it is damaged or of another version") from exc
    meta, state = checkpoint["meta"], checkpoint["state_dict"]
    try:
        gem_cfg = meta.get("gem") or {}
        # by backbone and head: the name may be another one (a cirtorch network's, saved by deepret)
        arch = f"{meta['backbone']}-{meta['head']}" if "backbone" in meta and "head" in meta else meta["name"]
        net = create_model(arch, weights="random", p=gem_cfg.get("p", 3.0),
                           learn_p=gem_cfg.get("learn_p", False), per_channel_p=gem_cfg.get("per_channel", False))
        net.meta = copy.deepcopy(meta)
        net.whitening_from_meta()
        net.load_state_dict(state)
    except (DeepretError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
        raise DeepretError(f"checkpoint {path} does not describe a {kind} network deepret builds "
                           f"({exc.__class__.__name__}: {_first_line(exc)}): it is foreign or damaged") from exc
    net.meta["checkpoint"] = str(path)
    return net.eval()


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else ""


def get_model(spec: str, weights: str = "imagenet") -> RetrievalNet:
    """`--model` semantics: a checkpoint path if such a file exists, else a registered name; a
    published cirtorch name loads its network, downloaded once into the torch hub cache."""
    if Path(spec).is_file() or spec.endswith((".pt", ".pth")):
        return load(spec)
    if spec in CIRTORCH_MODELS:
        if weights != "imagenet":
            raise DeepretError(f"{spec} is a network published by cirtorch with its own weights: "
                               f"leave out --weights {weights}")
        path, origin = cirtorch.published_path(spec)
        return load(path, name=spec, origin=origin)
    return create_model(spec, weights=weights)


def model_fingerprint(net: RetrievalNet) -> str:
    """sha1 of the network's meta (architecture, whitening, input) and every weight."""
    h = hashlib.sha1()
    stable_meta = {k: v for k, v in net.meta.items() if k not in ("checkpoint", "provenance", "deepret_version")}
    h.update(json.dumps(stable_meta, sort_keys=True).encode())
    for key, tensor in net.state_dict().items():
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
