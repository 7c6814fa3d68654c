"""The study's settings: a dataclass read from YAML (`study.yaml`) and overridden by command-line flags."""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from deepret.errors import DeepretError
from deepret.precision import parse_engine, parse_precision
from deepret.study.steps import ALL_STEPS
from deepret.train.config import PROJ_INITS

# Where ImageNet weights of the study's networks cannot be had, stand-ins of growing capacity, as
# the original study grows its networks: the smallest for AlexNet, the largest for ResNet50.
STANDINS = {"alexnet": "efficientnet_lite0", "resnet18": "efficientnet_lite1", "resnet50": "efficientnet_lite2"}


@dataclass
class Budget:
    """How much one training step may do: epochs, tuples per epoch (rank), image size, lr, batch size,
    frozen trunk blocks (classify), triplet margin (rank; None: deepret.train's default). The study's
    own small budgets (StudyConfig, chosen by bench/study_sweep.py on a validation split of the
    training list); everything else of training takes deepret.train's defaults (train_config)."""

    epochs: int
    queries: int
    size: int
    lr: float
    batch_size: int
    freeze: int = 0
    margin: float | None = None


@dataclass
class StudyConfig:
    """Everything that decides a study run; defaults are the small offline budgets."""

    dataset: str = "oxford5k-mini"
    root: Path = Path("../shared/data")
    train: Path = Path("../shared/data/paris-train.txt")   # 245 Paris6k photos of 5 landmarks
    out: Path = Path("runs/study")
    query: int = 0
    topk: int = 10
    size: int = 384                                   # evaluation: longest image side
    scales: tuple[float, ...] = (0.707, 1.0, 1.414)   # multi-resolution steps (1h, 1i)
    steps: tuple[str, ...] = ALL_STEPS
    alexnet: str = "alexnet"
    resnet18: str = "resnet18"
    resnet50: str = "resnet50"
    backbone: str | None = None                       # stands in for all three when set
    standins: dict[str, str] = field(default_factory=lambda: dict(STANDINS))  # role -> backbone without weights
    classify: Budget = field(default_factory=lambda: Budget(epochs=3, queries=0, size=224, lr=1e-4, batch_size=8))
    rank: Budget = field(default_factory=lambda: Budget(epochs=2, queries=20, size=192, lr=2e-5, batch_size=4,
                                                        margin=1.5))
    negatives: int = 3
    pool_size: int = 50
    proj: int = 512                                   # FC projection of 1f/1g/1i (capped by the train set)
    proj_init: str = "lw"                             # its start: 'lw' (as 1e-lw) or 'pca' (as 1e)
    whiten_shrinkage: float = 1.0                     # 1e, 1e-lw: eigenvalue regularisation (x their mean)
    whiten_size: int = 384
    seed: int = 0
    device: str | None = None
    workers: int | None = None
    cache_dir: Path | None = None                     # feature cache (default $DEEPRET_CACHE)
    precision: str = "auto"                           # evaluation extraction: auto, fp32, bf16, fp16
    engine: str = "auto"                              # evaluation extraction: auto, torch, openvino (training: torch)
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("root", "train", "out", "cache_dir"):
            if getattr(self, name) is not None:
                setattr(self, name, Path(getattr(self, name)))
        for name in ("classify", "rank"):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _budget(value, name))
        self.scales = tuple(float(s) for s in self.scales)
        self.precision = parse_precision(self.precision)
        self.engine = parse_engine(self.engine)
        if self.proj_init not in PROJ_INITS:
            raise DeepretError(f"study proj_init {self.proj_init!r}: use {' or '.join(PROJ_INITS)}")
        self.steps = tuple(str(s) for s in self.steps)
        unknown = [s for s in self.steps if s not in ALL_STEPS]
        if unknown:
            raise DeepretError(f"unknown study step(s) {', '.join(unknown)}: choose from {', '.join(ALL_STEPS)}")
        if isinstance(self.standins, str):  # one stand-in for every role
            self.standins = dict.fromkeys(STANDINS, self.standins)
        bad = sorted(set(self.standins) - set(STANDINS))
        if bad:
            raise DeepretError(f"study config standins: unknown role(s) {', '.join(bad)} (roles: {', '.join(STANDINS)})")
        self.standins = {**STANDINS, **self.standins}

    def network_for(self, role: str) -> str:
        """The backbone name for a role of the study ('alexnet', 'resnet18', 'resnet50')."""
        return self.backbone or getattr(self, role)

    def standin_for(self, role: str) -> str:
        """The backbone with offline ImageNet weights used for `role` where its own weights are missing."""
        return self.standins[role]

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def _budget(d: dict, name: str) -> Budget:
    known = {f.name for f in fields(Budget)}
    bad = sorted(set(d) - known)
    if bad:
        raise DeepretError(f"study config {name}: unknown key(s) {', '.join(bad)} (known: {', '.join(sorted(known))})")
    defaults = StudyConfig().classify if name == "classify" else StudyConfig().rank
    return replace(defaults, **d)


def load_config(path: str | Path | None = None, **overrides: Any) -> StudyConfig:
    """StudyConfig from a YAML file (if given), then `overrides` whose value is not None."""
    import yaml  # here: the CLI's parser reads this module's add_arguments

    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise DeepretError(f"study config {path} not found: give a YAML file like study.yaml")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise DeepretError(f"study config {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise DeepretError(f"study config {path} must be a mapping of settings")
    known = {f.name for f in fields(StudyConfig)}
    bad = sorted(set(data) - known)
    if bad:
        raise DeepretError(f"study config: unknown key(s) {', '.join(bad)} (known: {', '.join(sorted(known))})")
    budgets = {k: overrides.pop(k) for k in list(overrides) if k.startswith(("classify_", "rank_"))}
    data.update({k: v for k, v in overrides.items() if v is not None})
    cfg = StudyConfig(**data)
    for key, value in budgets.items():
        if value is not None:
            which, attr = key.split("_", 1)
            setattr(getattr(cfg, which), attr, value)
    return cfg


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `deepret study` flags (every one overrides the YAML file)."""
    from deepret.argtypes import nonnegative_int, positive_int

    p.add_argument("--config", type=Path, default=None, help="YAML settings (e.g. study.yaml); flags override it")
    p.add_argument("--dataset", default=None, help="benchmark (default oxford5k-mini)")
    p.add_argument("--root", type=Path, default=None, help="folder holding <dataset>/ (default ../shared/data)")
    p.add_argument("--train", type=Path, default=None, help="labelled landmark images for training and whitening")
    p.add_argument("--out", type=Path, default=None, help="output folder: report.html, results.json (default runs/study)")
    p.add_argument("--steps", default=None, help=f"comma-separated subset of {','.join(ALL_STEPS)}")
    p.add_argument("--query", type=nonnegative_int, default=None, help="query shown in the report (default 0)")
    p.add_argument("--topk", type=positive_int, default=None, help="results in the top-k figures (default 10)")
    p.add_argument("--size", type=positive_int, default=None, help="evaluation image size (default 384)")
    p.add_argument("--backbone", default=None, help="one backbone standing in for AlexNet, ResNet18 and ResNet50")
    p.add_argument("--standin", default=None, help="one backbone used for every role whose ImageNet weights are "
                   "missing (default: efficientnet_lite0/1/2 for AlexNet/ResNet18/ResNet50)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs of every training step")
    p.add_argument("--queries", type=positive_int, default=None, help="training tuples per epoch (ranking steps)")
    p.add_argument("--train-size", type=positive_int, default=None, help="training image size of every training step")
    p.add_argument("--proj-init", choices=PROJ_INITS, default=None,
                   help="start of the FC projection of 1f-1i: lw (as 1e-lw, default) or pca (as 1e)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--workers", type=nonnegative_int, default=None)
    p.add_argument("--precision", default=None, help="evaluation extraction: auto (default), fp32, bf16 or fp16")
    p.add_argument("--engine", default=None, help="evaluation extraction: auto (default: openvino on the CPU, torch "
                                                  "on CUDA), torch or openvino; training runs on torch")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    """StudyConfig from parsed `deepret study` arguments."""
    return load_config(
        args.config, dataset=args.dataset, root=args.root, train=args.train, out=args.out,
        steps=tuple(args.steps.split(",")) if args.steps else None, query=args.query, topk=args.topk,
        size=args.size, backbone=args.backbone, proj_init=args.proj_init, standins=args.standin, seed=args.seed, device=args.device,
        workers=args.workers, precision=args.precision, engine=args.engine, progress=False if args.quiet else None,
        classify_epochs=args.epochs, rank_epochs=args.epochs, rank_queries=args.queries,
        classify_size=args.train_size, rank_size=args.train_size)
