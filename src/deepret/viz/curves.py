"""The loss curve of a training run, drawn from its JSON-lines log."""
from __future__ import annotations

import json
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from deepret.viz.png import save_png


def loss_curve(log_path: str | Path, out_path: str | Path) -> Path:
    """PNG of the loss per step and per epoch, with validation mAP on a second axis when logged."""
    steps, losses, epoch_steps, epoch_losses, val_epochs, val_maps = [], [], [], [], [], []
    step_of_epoch: dict[int, int] = {}
    for line in Path(log_path).read_text().splitlines():
        r = json.loads(line)
        if "loss" in r and "step" in r:
            steps.append(r["step"]), losses.append(r["loss"])
        if "epoch_loss" in r:
            epoch_steps.append(r["step"]), epoch_losses.append(r["epoch_loss"])
            step_of_epoch[r["epoch"]] = r["step"]
        if "mAP" in r:
            val_epochs.append(r["epoch"]), val_maps.append(next(iter(r["mAP"].values())))
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(steps, losses, color="tab:blue", alpha=0.4, label="loss per step")
    ax.plot(epoch_steps, epoch_losses, "o-", color="tab:blue", label="mean loss of the epoch")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if val_maps:
        ax2 = ax.twinx()
        ax2.plot([step_of_epoch.get(e, e) for e in val_epochs], val_maps, "s--", color="tab:green", label="val mAP")
        ax2.set_ylabel("validation mAP (%)")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return save_png(fig, out_path)
