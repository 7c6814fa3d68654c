"""`deepret train rank`: finetune a retrieval network with a triplet or contrastive loss on tuples
mined each epoch, with an optional FC projection initialised from PCA-whitening or learned whitening
(Lw) and learnable GeM p."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from deepret.augment import AugmentConfig, train_transform
from deepret.datasets import LabelledImages, rankable
from deepret.errors import DeepretError
from deepret.extract import ExtractSettings, extract
from deepret.models import GeM, RetrievalNet, get_model
from deepret.runtime import setup_device
from deepret.train.config import PROJ_INITS
from deepret.train.images import TrainImages
from deepret.train.losses import DEFAULT_MARGINS, LOSSES
from deepret.train.mining import Tuple, mine_tuples
from deepret.train.runner import RankOptions, Run, TrainConfig, freeze_batchnorm, make_optimizer
from deepret.train.whitening import matching_pairs
from deepret.whiten import fit_whitening


class TupleBatches(Dataset):
    """Batch b -> (b, images of its tuples at its size, stacked) or (b, error) if one is corrupt."""

    def __init__(self, data: LabelledImages, batches: list[list[Tuple]], sizes: list[int], mean, std, augment) -> None:
        self.data, self.batches, self.sizes = data, batches, sizes
        self.transforms = {s: train_transform(s, mean, std, augment) for s in set(sizes)}

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int):
        items = [i for t in self.batches[b] for i in t.images()]
        images = TrainImages([self.data.paths[i] for i in items], self.transforms[self.sizes[b]])
        out = [images[k][1] for k in range(len(items))]
        errors = [x for x in out if isinstance(x, str)]
        return b, errors if errors else torch.stack(out)


def make_p_learnable(net: RetrievalNet) -> None:
    """Turn a fixed GeM p into a parameter (kept in meta so checkpoints rebuild it)."""
    if not isinstance(net.pool, GeM):
        raise DeepretError(f"--learn-p needs a GeM head; {net.meta['name']} has {net.meta['head']}")
    if not isinstance(net.pool.p, nn.Parameter):
        p = net.pool.p.detach().clone()
        del net.pool.p
        net.pool.p = nn.Parameter(p)
        net.meta["gem"]["learn_p"] = True


def init_projection(net: RetrievalNet, data: LabelledImages, dim: int, cfg: TrainConfig, device,
                    precision: str = "fp32", method: str = "pca", shrinkage: float | None = None) -> None:
    """FC projection after pooling, initialised from a whitening of the training descriptors: 'pca'
    (PCA-whitening, at most len(data) - 1 dimensions) or 'lw' (learned whitening on the same-class
    pairs, regularised by `shrinkage` x the mean eigenvalue; None: 0 for pca, 1 for lw)."""
    if method not in PROJ_INITS:
        raise DeepretError(f"--proj-init {method!r}: use {' or '.join(PROJ_INITS)}")
    shrinkage = (1.0 if method == "lw" else 0.0) if shrinkage is None else shrinkage
    pooled = extract(net, data.paths, settings=ExtractSettings(size=cfg.size, precision=precision, engine="torch"),
                     device=device, workers=cfg.workers, desc=f"{method} of the training set",
                     progress=cfg.progress).vectors.astype(np.float64)
    pairs = matching_pairs(data) if method == "lw" else None
    matrix, bias = fit_whitening(method, pooled, pairs=pairs, dim=dim, shrinkage=shrinkage).as_linear()
    net.set_whitening(matrix, bias, method=f"{method}-init, trained end to end")
    net.meta["whitening"]["init_shrinkage"] = shrinkage


R = RankOptions()


def train_rank(data: LabelledImages, model: str, cfg: TrainConfig, weights: str = "imagenet",
               loss: str = R.loss, margin: float | None = R.margin, negatives: int = R.negatives,
               pool_size: int = R.pool_size, queries: int = R.queries, proj: int | None = R.proj,
               learn_p: bool = R.learn_p, multires: tuple[float, ...] = R.multires,
               proj_init: str = R.proj_init, proj_shrinkage: float | None = R.proj_shrinkage) -> Path:
    """Finetune `model` for ranking on `data`; returns the path of the last checkpoint. With `proj`,
    an FC projection to `proj` dimensions follows pooling, initialised by `proj_init` (init_projection)."""
    if proj_init not in PROJ_INITS:
        raise DeepretError(f"--proj-init {proj_init!r}: use {' or '.join(PROJ_INITS)}")
    if loss not in LOSSES:
        raise DeepretError(f"--loss {loss!r}: use {' or '.join(LOSSES)}")
    margin = DEFAULT_MARGINS[loss] if margin is None else margin
    device = setup_device(cfg.device)
    run = Run(cfg, "rank")
    data, dropped = rankable(data)
    if dropped:
        run.log(dropped_classes=dropped)
        print(f"deepret: left out of ranking training (fewer than 2 images): {', '.join(dropped)}")
    data.require_classes(2)
    net = get_model(model, weights)
    net = run.use_precision(net, net.meta["backbone"], device)
    if learn_p:
        make_p_learnable(net)
    previous = run.previous()
    if previous is not None and previous["meta"].get("whitening"):
        w = previous["meta"]["whitening"]
        net.set_whitening(torch.zeros(w["dim_out"], w["dim_in"]), torch.zeros(w["dim_out"]), w["method"])
    elif proj:
        init_projection(net, data, proj, cfg, device, run.precision, proj_init, proj_shrinkage)
    new = [*(net.whiten.parameters() if net.whiten is not None else []),
           *([net.pool.p] if isinstance(getattr(net.pool, "p", None), nn.Parameter) else [])]
    new_ids = {id(p) for p in new}
    opt, sched = make_optimizer(cfg, [p for p in net.parameters() if id(p) not in new_ids], new)
    run.restore(previous, net, opt, sched)
    run.log(start=True, classes=len(data.classes), train_images=len(data), world_size=run.world,
            config=cfg.to_json())
    mean, std = net.meta["input"]["mean"], net.meta["input"]["std"]
    augment = AugmentConfig.parse(cfg.augment)
    loss_fn = LOSSES[loss]
    model_ = DistributedDataParallel(net, find_unused_parameters=True) if run.world > 1 else net

    def describe(indices: list[int]) -> np.ndarray:
        return extract(net, [data.paths[i] for i in indices],
                       settings=ExtractSettings(size=cfg.size, precision=run.precision, engine="torch"),  # new weights each epoch
                       device=device, workers=cfg.workers, desc="mining", progress=False).vectors

    for epoch in range(run.start_epoch, cfg.epochs):
        tuples = mine_tuples(data, describe, run.rng, queries, negatives, pool_size)
        _log_tuples(run, epoch, tuples, data)
        usable = len(tuples) - len(tuples) % run.world  # every rank takes the same number of steps
        mine = tuples[:usable][run.rank::run.world]
        batches = [mine[i:i + cfg.batch_size] for i in range(0, len(mine), cfg.batch_size)]
        sizes = [int(round(cfg.size * s)) for s in run.rng.choice(multires, size=len(batches))]
        loader = DataLoader(TupleBatches(data, batches, sizes, mean, std, augment), batch_size=None,
                            shuffle=False, num_workers=cfg.workers)
        net.train()
        freeze_batchnorm(net)
        losses = []
        bar = tqdm(loader, desc=f"rank epoch {epoch + 1}/{cfg.epochs}", disable=not (cfg.progress and run.is_main))
        for b, x in bar:
            usable = not isinstance(x, list)  # a list holds the decoding errors of the batch
            if not usable:
                run.report_skipped(x)
            if not run.all_usable(usable):
                continue
            out = run.forward(model_, x).view(len(batches[b]), -1, net.dim)
            losses.append(run.optimise(opt, loss_fn(out, margin), bar, epoch, sched.get_last_lr()[0], size=sizes[b]))
        sched.step()
        if not losses:
            raise DeepretError(f"epoch {epoch + 1}: no training tuple could be decoded")
        run.log(epoch=epoch + 1, step=run.step, epoch_loss=sum(losses) / len(losses), gem_p=net.gem_p())
        run.validate(net, epoch)
        run.checkpoint(net, epoch, opt, sched, {"classes": data.classes, "loss": loss, "margin": margin})
    return run.last


def _log_tuples(run: Run, epoch: int, tuples: list[Tuple], data: LabelledImages) -> None:
    """tuples.jsonl: each epoch's mined tuples with image paths and distances (for `deepret triplets`)."""
    if not run.is_main:
        return
    with open(run.out / "tuples.jsonl", "a") as f:
        for t in tuples:
            record = {"epoch": epoch + 1, **asdict(t), "paths": [str(data.paths[i]) for i in t.images()],
                      "classes": [data.classes[data.labels[i]] for i in t.images()]}
            f.write(json.dumps(record) + "\n")
