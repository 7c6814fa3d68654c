"""`deepret train classify`: finetune a backbone as a classifier with a new last layer.

AlexNet/VGG keep their FC layers (fc7 features come out of the finetuned network); convolutional
heads pool (GeM) and classify the pooled vector. The saved checkpoint is a retrieval network.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from deepret.augment import AugmentConfig, train_transform
from deepret.datasets import LabelledImages, split
from deepret.errors import DeepretError
from deepret.models import RetrievalNet, get_model
from deepret.runtime import setup_device
from deepret.train.images import TrainImages, collate_skipping
from deepret.train.runner import ClassifyOptions, Run, TrainConfig, freeze_batchnorm, make_optimizer


class Classifier(nn.Module):
    """A retrieval network's trunk and pooling followed by a new linear classifier."""

    def __init__(self, net: RetrievalNet, n_classes: int, init: str = "xavier") -> None:
        super().__init__()
        self.net = net
        self.fc = nn.Linear(net.meta["dim"], n_classes)
        if init == "xavier":
            nn.init.xavier_uniform_(self.fc.weight)
        elif init == "kaiming":
            nn.init.kaiming_normal_(self.fc.weight, nonlinearity="relu")
        else:
            raise DeepretError(f"--init {init!r}: use xavier or kaiming")
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.net.pool_map(self.net.trunk(x)))


def trunk_blocks(net: RetrievalNet) -> list[nn.Module]:
    """The trunk's blocks in input order, as `--freeze N` counts them: its top-level children (for fc7
    trunks the conv layers count as one); a trunk wrapping one model (timm's EfficientNet) is opened
    up, with its `blocks` stages counted one by one (stem conv, stem norm, 7 stages, head conv, ...)."""
    blocks = list(net.trunk.children())
    while len(blocks) == 1 and list(blocks[0].children()):
        blocks = [b for name, child in blocks[0].named_children()
                  for b in (list(child.children()) if name == "blocks" else [child])]
    return [b for b in blocks if any(True for _ in b.parameters())]


def freeze_blocks(net: RetrievalNet, n: int) -> None:
    """Freeze the first `n` blocks of the trunk (trunk_blocks)."""
    blocks = trunk_blocks(net)
    if n > len(blocks):
        raise DeepretError(f"--freeze {n}: the trunk of {net.meta['name']} has only {len(blocks)} blocks")
    for block in blocks[:n]:
        for p in block.parameters():
            p.requires_grad_(False)


C = ClassifyOptions()


def train_classify(data: LabelledImages, model: str, cfg: TrainConfig, weights: str = "imagenet",
                   init: str = C.init, freeze: int = C.freeze, val_fraction: float = C.val_fraction) -> Path:
    """Finetune `model` on `data` as a classifier; returns the path of the last checkpoint."""
    data.require_classes(2)
    device = setup_device(cfg.device)
    run = Run(cfg, "classify")
    net = get_model(model, weights)
    if net.whiten is not None:
        net.whiten, net.meta["whitening"] = None, None  # a classifier sees pooled features
    train, val = split(data, val_fraction, cfg.seed) if val_fraction else (data, None)
    clf = run.use_precision(Classifier(net, len(data.classes), init), net.meta["backbone"], device)
    freeze_blocks(net, freeze)
    opt, sched = make_optimizer(cfg, net.parameters(), clf.fc.parameters())
    previous = run.previous()
    if previous is not None:
        clf.fc.load_state_dict(previous["train"]["head"])
    run.restore(previous, net, opt, sched)
    run.log(start=True, classes=len(data.classes), train_images=len(train), world_size=run.world,
            config=cfg.to_json())
    mean, std = net.meta["input"]["mean"], net.meta["input"]["std"]
    images = TrainImages(train.paths, train_transform(cfg.size, mean, std, AugmentConfig.parse(cfg.augment)))
    labels = torch.tensor(train.labels)
    sampler = DistributedSampler(images, seed=cfg.seed) if run.world > 1 else None
    model_ = DistributedDataParallel(clf, find_unused_parameters=True) if run.world > 1 else clf
    for epoch in range(run.start_epoch, cfg.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        loader = DataLoader(images, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                            num_workers=cfg.workers, collate_fn=collate_skipping)
        clf.train()
        freeze_batchnorm(clf)
        losses = []
        bar = tqdm(loader, desc=f"classify epoch {epoch + 1}/{cfg.epochs}", disable=not (cfg.progress and run.is_main))
        for idx, x, errors in bar:
            run.report_skipped(errors)
            if not run.all_usable(x is not None):
                continue
            loss = F.cross_entropy(run.forward(model_, x).float(), labels[idx].to(device))
            losses.append(run.optimise(opt, loss, bar, epoch, sched.get_last_lr()[0]))
        sched.step()
        if not losses:
            raise DeepretError(f"epoch {epoch + 1}: no image of {data.source or 'the training set'} could be decoded")
        record = {"epoch": epoch + 1, "step": run.step, "epoch_loss": sum(losses) / len(losses)}
        if val is not None and len(val):
            record["val_accuracy"] = accuracy(clf, val, cfg, device)
        run.log(**record)
        run.validate(net, epoch)
        run.checkpoint(net, epoch, opt, sched, {"head": clf.fc.state_dict(), "classes": data.classes})
    return run.last


@torch.no_grad()
def accuracy(clf: Classifier, val: LabelledImages, cfg: TrainConfig, device: torch.device) -> float:
    """Top-1 accuracy (%) on held-out images, at the training size without augmentation."""
    mean, std = clf.net.meta["input"]["mean"], clf.net.meta["input"]["std"]
    images = TrainImages(val.paths, train_transform(cfg.size, mean, std, None))
    labels = torch.tensor(val.labels)
    clf.eval()
    right = total = 0
    for idx, x, _ in DataLoader(images, batch_size=cfg.batch_size, collate_fn=collate_skipping):
        if x is not None:
            right += int((clf(x.to(device)).argmax(1).cpu() == labels[idx]).sum())
            total += len(idx)
    clf.train()
    return round(100.0 * right / max(total, 1), 2)
