"""What every training run shares: config (from deepret.train.config, re-exported here), devices and
torchrun, optimiser and schedule, the JSON-lines log, the loss-curve PNG, validation, per-epoch
checkpoints and exact resume."""
from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from deepret.errors import DeepretError
from deepret.models import RetrievalNet, save
from deepret.models.network import read_checkpoint
from deepret.precision import autocast, prepare_input, prepare_model, resolve_precision
from deepret.runtime import distributed
from deepret.train.config import MODE_DEFAULTS, ClassifyOptions, RankOptions, TrainConfig, train_config  # noqa: F401 (re-exported)


def freeze_batchnorm(module: nn.Module) -> None:
    """Keep BatchNorm statistics fixed (tiny batches of large images would ruin them)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def make_optimizer(cfg: TrainConfig, base: Iterable[nn.Parameter], new: Iterable[nn.Parameter]):
    """Optimiser with the new layers at lr x lr_mult, and its exponential schedule."""
    groups = [{"params": [p for p in base if p.requires_grad], "lr": cfg.lr},
              {"params": [p for p in new if p.requires_grad], "lr": cfg.lr * cfg.lr_mult}]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(groups, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, momentum=0.9, weight_decay=cfg.weight_decay)
    else:
        raise DeepretError(f"--optimizer {cfg.optimizer!r}: use adam or sgd")
    return opt, torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay)


class Run:
    """Log, checkpoints and resume of one training run in `cfg.out` (only rank 0 writes)."""

    def __init__(self, cfg: TrainConfig, mode: str) -> None:
        self.cfg, self.mode = cfg, mode
        self.rank, self.world, _ = distributed()
        self.is_main = self.rank == 0
        self.out = Path(cfg.out)
        self.log_path, self.last = self.out / "log.jsonl", self.out / "last.pt"
        self.rng = np.random.default_rng(cfg.seed)
        self.start_epoch, self.step = 0, 0
        self.skipped: set[str] = set()
        self.device, self.precision = torch.device("cpu"), "fp32"
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed + self.rank)

    def log(self, **record: Any) -> None:
        if not self.is_main:
            return
        with open(self.log_path, "a") as f:
            f.write(json.dumps({"mode": self.mode, "time": round(time.time(), 3), **record}) + "\n")

    def use_precision(self, model: nn.Module, backbone: str | None, device: torch.device) -> nn.Module:
        """Resolve cfg.precision for `backbone` on `device` and prepare `model` for it (channels-last
        for bf16/fp16); fp16 on CUDA scales the loss (GradScaler) so that small gradients survive."""
        self.device = device
        self.precision = resolve_precision(self.cfg.precision, backbone, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16" and device.type == "cuda")
        return prepare_model(model, device, self.precision)

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`model(x)` on the run's device in the run's precision (outputs of autocast may be bf16/fp16)."""
        with autocast(self.device, self.precision):
            return model(prepare_input(x.to(self.device), self.precision))

    def optimise(self, opt, loss: torch.Tensor, bar, epoch: int, lr: float, **record: Any) -> float:
        """One optimiser step on `loss`, counted, shown on the progress bar and logged."""
        opt.zero_grad()
        self.scaler.scale(loss).backward()
        self.scaler.step(opt)
        self.scaler.update()
        self.step += 1
        value = loss.item()
        bar.set_postfix(loss=f"{value:.4f}")
        self.log(epoch=epoch + 1, step=self.step, loss=value, lr=lr, **record)
        return value

    def all_usable(self, usable: bool) -> bool:
        """Whether every rank has a usable batch at this step. Under DDP the ranks skip a step
        together: a rank skipping alone would leave the others waiting in the gradient all-reduce."""
        if self.world == 1:
            return usable
        flag = torch.tensor([int(usable)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def report_skipped(self, errors: list[str]) -> None:
        """Corrupt images: reported once each, training goes on."""
        for e in errors:
            if e not in self.skipped:
                self.skipped.add(e)
                self.log(skipped=e)
                print(f"deepret: skipped {e}")

    def checkpoint(self, net: RetrievalNet, epoch: int, opt, sched, extra_state: dict) -> None:
        """After epoch `epoch` (0-based): epoch_NNN.pt and last.pt, each written atomically."""
        if not self.is_main:
            return
        state = {"mode": self.mode, "epoch": epoch, "step": self.step, "config": self.cfg.to_json(),
                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": self._rng_state(),
                 "scaler": self.scaler.state_dict(),
                 **extra_state}
        save(net, self.out / f"epoch_{epoch + 1:03d}.pt", train=state)
        save(net, self.last, train=state)
        self.plot()

    def previous(self) -> dict | None:
        """The checkpoint to resume from (with --resume), else None; refuses to overwrite a run."""
        if not self.cfg.resume:
            if self.last.exists():
                raise DeepretError(f"{self.out} already holds a run (last.pt): pass --resume to continue it "
                                   "or choose another --out")
            return None
        if not self.last.is_file():
            raise DeepretError(f"--resume: {self.last} not found; start without --resume")
        ckpt = read_checkpoint(self.last)
        if ckpt["train"]["mode"] != self.mode:
            raise DeepretError(f"--resume: {self.last} is a `train {ckpt['train']['mode']}` run, "
                               f"not `train {self.mode}`")
        return ckpt

    def restore(self, ckpt: dict | None, net: RetrievalNet, opt, sched) -> dict:
        """Put a `previous()` checkpoint back into net/opt/sched and the RNGs; returns its train state."""
        if ckpt is None:
            return {}
        state = ckpt["train"]
        net.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self._set_rng_state(state["rng"])
        self.start_epoch, self.step = state["epoch"] + 1, state["step"]
        self.log(resumed_from=str(self.last), next_epoch=self.start_epoch + 1)
        return state

    def _rng_state(self) -> dict:
        return {"python": random.getstate(), "numpy": self.rng.bit_generator.state,
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def _set_rng_state(self, s: dict) -> None:
        random.setstate(s["python"])
        self.rng.bit_generator.state = s["numpy"]
        torch.set_rng_state(s["torch"])
        if s.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda"])

    def validate(self, net: RetrievalNet, epoch: int) -> dict | None:
        """mAP on the validation benchmark (rank 0, every val_every epochs and after the last)."""
        cfg = self.cfg
        last = epoch + 1 == cfg.epochs
        if not (cfg.val and self.is_main and ((epoch + 1) % cfg.val_every == 0 or last)):
            return None
        from deepret.datasets import load_benchmark
        from deepret.extract import ExtractSettings
        from deepret.pipeline import RunOptions, benchmark_features, evaluate_features

        bench = load_benchmark(cfg.val, cfg.val_root or ".")
        opts = RunOptions(ExtractSettings(size=cfg.val_size, precision=self.precision, engine="torch"), use_cache=False,  # no cache files
                          progress=False,
                          device=str(next(net.parameters()).device), workers=cfg.workers)
        was_training = net.training
        features, _, _ = benchmark_features(net.eval(), bench, opts)
        net.train(was_training)
        results = {p: round(r.map, 2) for p, r in evaluate_features(features, bench).items()}
        self.log(epoch=epoch + 1, val=cfg.val, mAP=results)
        return results

    def plot(self) -> None:
        """loss.png: loss per step, the epoch means, and validation mAP if any."""
        from deepret.viz.curves import loss_curve

        loss_curve(self.log_path, self.out / "loss.png")
