"""cirtorch's retrieval networks (filipradenovic/cnnimageretrieval-pytorch) as deepret networks.

A cirtorch checkpoint is {'meta': {'architecture', 'pooling', 'whitening', 'mean', 'std', ...,
optionally 'Lw'}, 'state_dict': {'features.*', 'pool.p', 'whiten.*'}}: `features` are the torchvision
backbone's children without its final pool and fc (deepret's conv trunk, key for key), `pool` GeM
(p of shape (1,), or one p per channel for 'gemmp'), MAC or SPoC, `whiten` the FC whitening of the
`-w` networks, learned end to end. meta['Lw'][dataset]['ss'|'ms'] = {'m', 'P'} is a learned
whitening (Lw) applied after the network, v -> l2n(P @ (v - m)).

`to_deepret` rewrites such a checkpoint as a deepret one (meta + state_dict) that
deepret.models.load builds: FC whitening and Lw become deepret's whitening layer (both: two stages,
WhiteningStages). The single-scale Lw ('ss') is the one taken, because deepret whitens each scale
before averaging them (cirtorch's multi-scale Lw 'ms' whitens the power mean of the scales):
single-scale descriptors are cirtorch's, multi-scale ones differ (docs/benchmarks.md). Regional
pooling, local whitening and other architectures are refused in one line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from deepret.errors import DeepretError
from deepret.models.registry import CIRTORCH_EVAL_SIZE, CIRTORCH_MODELS
from deepret.models.weights import published_file
from deepret.version import __version__
from deepret.whiten import LearnedWhitening

# pooled dimension of the architectures deepret builds (torchvision names, as cirtorch's)
OUTPUT_DIMS = {"alexnet": 256, "vgg16": 512, "resnet18": 512, "resnet34": 512, "resnet50": 2048,
               "resnet101": 2048, "resnet152": 2048}
HEAD_OF_POOLING = {"gem": "gem", "gemmp": "gem", "mac": "mac", "spoc": "spoc"}
PREFERRED_LW = "retrieval-SfM-120k"  # the whitening set of cirtorch's published evaluations


def is_cirtorch_checkpoint(checkpoint: Any) -> bool:
    """A dict whose 'meta' names an 'architecture' and a 'pooling' and whose 'state_dict' has `features.*`."""
    if not isinstance(checkpoint, dict):
        return False
    meta, state = checkpoint.get("meta"), checkpoint.get("state_dict")
    return (isinstance(meta, dict) and {"architecture", "pooling"} <= set(meta) and isinstance(state, dict)
            and any(isinstance(k, str) and k.startswith("features.") for k in state))


def published_name(path: str | Path) -> str | None:
    """The published name of a file named as cirtorch publishes it (e.g. gl18-tl-resnet50-gem-w-83fdc30.pth)."""
    return next((m.name for m in CIRTORCH_MODELS.values() if m.url.rsplit("/", 1)[1] == Path(path).name), None)


def published_path(name: str) -> tuple[Path, str]:
    """The file of the published network `name` (torch hub cache; downloaded once) and where it came from."""
    model = CIRTORCH_MODELS[name]
    return published_file(model.url, f"the cirtorch network {name}")


def to_deepret(checkpoint: dict, source: str | Path, name: str | None = None, origin: str = "") -> dict:
    """A cirtorch checkpoint as {'meta', 'state_dict'} of a deepret network; `name` defaults to the
    published name of the file, else cirtorch-<file stem>; `origin` says where the file came from."""
    meta, state = checkpoint["meta"], checkpoint["state_dict"]
    arch, pooling = meta["architecture"], meta["pooling"]
    _refuse_unsupported(meta, source)
    dim = OUTPUT_DIMS[arch]
    if "outputdim" in meta and int(meta["outputdim"]) != dim:
        raise DeepretError(f"cirtorch checkpoint {source}: outputdim {meta['outputdim']} is not {arch}'s {dim}")
    out = {f"trunk.{k.removeprefix('features.')}": v for k, v in state.items() if k.startswith("features.")}
    for key in [k for k in out if k.endswith(".running_mean")]:  # older files lack BatchNorm's counter
        out.setdefault(key.removesuffix("running_mean") + "num_batches_tracked", torch.tensor(0))
    head, gem = HEAD_OF_POOLING[pooling], None
    if head == "gem":
        p = torch.as_tensor(_tensor(state, "pool.p", source)).float().reshape(-1)
        out["pool.p"] = p
        gem = {"p": float(p.mean()), "learn_p": False, "per_channel": p.numel() > 1}
    stages = []
    if meta.get("whitening"):
        weight, bias = _tensor(state, "whiten.weight", source), _tensor(state, "whiten.bias", source)
        stages.append(({"dim_in": int(weight.shape[1]), "dim_out": int(weight.shape[0]),
                        "method": "cirtorch FC layer, trained end to end"}, weight, bias))
    lw = _lw(meta, source)
    if lw is not None:
        lw_set, kind, whitening = lw
        matrix, bias = whitening.as_linear()
        stages.append(({"dim_in": int(matrix.shape[1]), "dim_out": int(matrix.shape[0]), "method": "lw",
                        "trained_on": lw_set, "source": f"cirtorch Lw ({kind})"}, matrix, bias))
    unknown = sorted(k for k in state if not k.startswith(("features.", "pool.", "whiten.")))
    if unknown:
        raise DeepretError(f"cirtorch checkpoint {source} holds tensors deepret does not know ({len(unknown)}, e.g. "
                           f"{unknown[0]}): only features.*, pool.p and whiten.* map onto a deepret network")
    whitening_meta = _whitening(stages, out, dim, source)
    name = name or published_name(source) or f"cirtorch-{Path(source).stem}"
    whitened = " + ".join(s[0]["method"].split(",")[0] for s in stages) or "no whitening"
    info = {"architecture": arch, "pooling": pooling, "whitening": bool(meta.get("whitening")),
            "lw": f"{lw[0]} ({lw[1]})" if lw else None,
            "lw_available": sorted(str(k) for k in (meta.get("Lw") or {})),
            "file": Path(source).name, "url": CIRTORCH_MODELS[name].url if name in CIRTORCH_MODELS else None}
    return {"meta": {
        "name": name, "backbone": arch, "head": head, "gem": gem, "dim": dim, "whitening": whitening_meta,
        "input": {"size": None, "default_size": CIRTORCH_EVAL_SIZE,
                  "mean": [float(x) for x in meta["mean"]], "std": [float(x) for x in meta["std"]]},
        "weights": "cirtorch", "cirtorch": info, "deepret_version": __version__,
        "provenance": f"cirtorch checkpoint {Path(source).name} ({arch}, {pooling}, {whitened})"
                      + (f", {origin}" if origin else ""),
    }, "state_dict": out}


def _refuse_unsupported(meta: dict, source: str | Path) -> None:
    arch, pooling = meta["architecture"], meta["pooling"]
    if meta.get("regional"):
        raise DeepretError(f"cirtorch checkpoint {source} uses regional pooling (R-{pooling}), which deepret does "
                           "not support: use a global-pooling network (e.g. gl18-tl-resnet101-gem-w)")
    if meta.get("local_whitening"):
        raise DeepretError(f"cirtorch checkpoint {source} whitens local features before pooling (local_whitening), "
                           "which deepret does not support: use a network without it")
    if pooling not in HEAD_OF_POOLING:
        raise DeepretError(f"cirtorch checkpoint {source} pools with {pooling!r}, which deepret does not support: "
                           f"supported are {', '.join(HEAD_OF_POOLING)}")
    if arch not in OUTPUT_DIMS:
        raise DeepretError(f"cirtorch checkpoint {source} has architecture {arch!r}, which deepret does not build: "
                           f"supported are {', '.join(OUTPUT_DIMS)}")


def _tensor(state: dict, key: str, source: str | Path) -> torch.Tensor:
    if key not in state:
        raise DeepretError(f"cirtorch checkpoint {source} has no {key} although its meta asks for it: it is damaged")
    return state[key]


def _lw(meta: dict, source: str | Path) -> tuple[str, str, LearnedWhitening] | None:
    """(whitening set, 'ss' or 'ms', the whitening) of meta['Lw']: the preferred set, its single-scale one."""
    sets = meta.get("Lw") or {}
    if not sets:
        return None
    name = PREFERRED_LW if PREFERRED_LW in sets else sorted(sets, key=str)[0]
    kinds = sets[name]
    kind = "ss" if "ss" in kinds else "ms"
    try:
        entry = kinds[kind]
        return str(name), kind, LearnedWhitening.fitted(_numpy(entry["m"]), _numpy(entry["P"]))
    except (KeyError, TypeError) as exc:
        raise DeepretError(f"cirtorch checkpoint {source}: its Lw {name!r} is not {{'ss'|'ms': {{'m', 'P'}}}}") from exc
    except DeepretError as exc:
        raise DeepretError(f"cirtorch checkpoint {source}: its Lw {name!r} ({kind}) does not fit: {exc}") from exc


def _numpy(x: Any):
    return x.detach().cpu().double().numpy() if torch.is_tensor(x) else x


def _whitening(stages: list, out: dict, dim: int, source: str | Path) -> dict | None:
    """meta['whitening'] of the stages; their weights put into `out` under deepret's keys."""
    if not stages:
        return None
    expected = dim
    for i, (stage, weight, bias) in enumerate(stages):
        if stage["dim_in"] != expected:
            raise DeepretError(f"cirtorch checkpoint {source}: the {stage['method']} takes {stage['dim_in']}-d "
                               f"descriptors where the network gives {expected}-d ones")
        expected = stage["dim_out"]
        prefix = "whiten." if len(stages) == 1 else f"whiten.layers.{i}."
        out[prefix + "weight"], out[prefix + "bias"] = torch.as_tensor(weight).float(), torch.as_tensor(bias).float()
    if len(stages) == 1:
        return stages[0][0]
    return {"dim_in": dim, "dim_out": expected, "method": " + ".join(s[0]["method"] for s in stages),
            "stages": [s[0] for s in stages]}
