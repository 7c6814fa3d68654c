"""A step's network: built, trained or whitened, with checkpoints kept in <out>/checkpoints and reused.

Checkpoint folders are named by a hash of everything that decides them, so a re-run with the same
settings reuses them (no training), a changed budget trains anew, and steps that end up with the
same recipe (e.g. one stand-in for ResNet18 and ResNet50) share one checkpoint.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deepret.datasets import LabelledImages, rankable
from deepret.fileio import atomic_write_text
from deepret.models import RetrievalNet, create_model, load, save
from deepret.models.network import read_checkpoint
from deepret.study.config import StudyConfig
from deepret.study.steps import Choice, Step
from deepret.train import TrainConfig, train_classify, train_config, train_rank
from deepret.train.whitening import learn_whitening


@dataclass
class Built:
    """A step's network and what was done to get it."""

    net: RetrievalNet
    checkpoint: Path | None = None
    run_dir: Path | None = None
    reused: bool = False
    proj: int | None = None
    notes: tuple[str, ...] = ()


def recipe_hash(recipe: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:10]


def build_step(step: Step, choice: Choice, cfg: StudyConfig, data: LabelledImages) -> Built:
    """The network of `step` starting from `choice` (trained/whitened as the step says)."""
    ckpts = cfg.out / "checkpoints"
    if step.train == "classify":
        return _classify(choice, cfg, data, ckpts)
    if step.train == "rank":
        return _rank(step, choice, cfg, data, ckpts)
    if step.whiten:
        return _whiten(step.whiten, choice, cfg, data, ckpts)
    return Built(create_model(choice.model, weights="imagenet"))


def _train_config(cfg: StudyConfig, mode: str, out: Path, budget, augment: str, resume: bool) -> TrainConfig:
    """The study's budget on top of deepret.train's defaults for `mode`."""
    return train_config(mode, out, epochs=budget.epochs, batch_size=budget.batch_size, size=budget.size,
                        lr=budget.lr, augment=augment, seed=cfg.seed, device=cfg.device, workers=cfg.workers or 0,
                        resume=resume, progress=cfg.progress)


def _ensure_trained(folder: Path, recipe: dict, epochs: int, train: Callable[[bool], Path]) -> tuple[Path, bool]:
    """`folder/last.pt` after `epochs` epochs: reused if there, resumed if short, else trained."""
    last = folder / "last.pt"
    resume = False
    if last.is_file():
        done = read_checkpoint(last)["train"]["epoch"] + 1
        if done >= epochs:
            return last, True
        resume = True
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "recipe.json", json.dumps(recipe, indent=2, default=str))
    return train(resume), False


def _classify(choice: Choice, cfg: StudyConfig, data: LabelledImages, ckpts: Path) -> Built:
    recipe = {"mode": "classify", "model": choice.model, "budget": asdict(cfg.classify), "seed": cfg.seed,
              "train": str(cfg.train)}
    folder = ckpts / f"classify-{choice.model}-{recipe_hash(recipe)}"
    last, reused = _ensure_trained(folder, recipe, cfg.classify.epochs, lambda resume: train_classify(
        data, choice.model, _train_config(cfg, "classify", folder, cfg.classify, "none", resume), weights="imagenet",
        freeze=cfg.classify.freeze))
    return Built(load(last), last, folder, reused)


def _rank(step: Step, choice: Choice, cfg: StudyConfig, data: LabelledImages, ckpts: Path) -> Built:
    usable, _ = rankable(data)
    proj, notes = projection_dim(cfg, choice.dim, len(usable))
    recipe = {"mode": "rank", "model": choice.model, "budget": asdict(cfg.rank), "augment": step.augment,
              "proj": proj, "proj_init": cfg.proj_init, "proj_shrinkage": cfg.whiten_shrinkage,
              "negatives": cfg.negatives, "pool_size": cfg.pool_size, "seed": cfg.seed, "train": str(cfg.train)}
    folder = ckpts / f"rank-{choice.model}-{recipe_hash(recipe)}"
    b = cfg.rank
    last, reused = _ensure_trained(folder, recipe, b.epochs, lambda resume: train_rank(
        data, choice.model, _train_config(cfg, "rank", folder, b, step.augment, resume), weights="imagenet",
        loss="triplet", margin=b.margin, negatives=cfg.negatives, pool_size=cfg.pool_size, queries=b.queries, proj=proj,
        proj_init=cfg.proj_init, proj_shrinkage=cfg.whiten_shrinkage))
    return Built(load(last), last, folder, reused, proj, notes)


def projection_dim(cfg: StudyConfig, dim: int, n_images: int) -> tuple[int, tuple[str, ...]]:
    """The FC projection's size for a `dim`-d network trained on `n_images`, and a note when it is
    capped: PCA-whitening spans at most n_images - 1 dimensions, Lw at most the network's."""
    cap = dim if cfg.proj_init == "lw" else min(dim, n_images - 1)
    proj = min(cfg.proj, cap)
    if proj == cfg.proj:
        return proj, ()
    why = (f"the network gives {dim}" if cap == dim else
           f"PCA-whitening initialises it, and {n_images} training images give at most {n_images - 1} dimensions")
    return proj, (f"FC projection {proj}-d instead of {cfg.proj}: {why}",)


def _whiten(method: str, choice: Choice, cfg: StudyConfig, data: LabelledImages, ckpts: Path) -> Built:
    """'pca': the original's PCA-whitening, reduced to what the training images span; 'lw': learned
    whitening on same-class pairs at full dimension, regularised by shrinkage (suits few images)."""
    if method == "pca":
        dim = min(choice.dim, len(data) - 1)
        notes = (f"the original study's PCA-whitening (dimension-reducing): {len(data)} training images give at "
                 f"most {len(data) - 1} dimensions, so {choice.dim}-d becomes {dim}-d (shrinkage "
                 f"{cfg.whiten_shrinkage:g} x the mean eigenvalue); step 1e-lw shows the regularised variant",)
    else:
        dim = choice.dim
        notes = (f"learned whitening (Lw, Radenović et al.) on the same-class pairs of {len(data)} training images, "
                 f"kept at {dim}-d and regularised by shrinkage {cfg.whiten_shrinkage:g} x the mean eigenvalue: "
                 "the variant that suits few training images (not in the original study)",)
    recipe = {"mode": method, "model": choice.model, "dim": dim, "shrinkage": cfg.whiten_shrinkage,
              "size": cfg.whiten_size, "train": str(cfg.train)}
    path = ckpts / f"whiten-{method}-{choice.model}-{recipe_hash(recipe)}.pt"
    if path.is_file():
        return Built(load(path), path, None, True, None, notes)
    net = create_model(choice.model, weights="imagenet")
    learn_whitening(net, data, method, dim, cfg.whiten_size, cfg.whiten_shrinkage, cfg.device, cfg.workers,
                    progress=cfg.progress)
    save(net, path)
    return Built(load(path), path, None, False, None, notes)
