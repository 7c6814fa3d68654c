"""Every writer of deepret goes through deepret.fileio: outputs get the umask's mode, no temp file stays."""
from __future__ import annotations

import os
import stat

import numpy as np
import torch
from matplotlib.figure import Figure

from deepret.datasets.archive import write_marker
from deepret.datasets.convert import write_gnd
from deepret.features import Features
from deepret.models import create_model, save
from deepret.viz.png import save_png


def test_outputs_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        torch.manual_seed(0)
        written = [
            save(create_model("resnet18-gem", weights="random"), tmp_path / "ckpt" / "net.pt"),
            Features(np.zeros((2, 4), np.float32), np.zeros((1, 4), np.float32), ["a", "b"], ["a"], {}).save(
                tmp_path / "f.npz"),
            save_png(Figure(figsize=(1, 1)), tmp_path / "fig.png"),
        ]
        write_gnd({"imlist": [], "qimlist": [], "gnd": []}, tmp_path / "gnd.pkl")
        write_marker(tmp_path, "x.tgz", ["a.jpg"])
        written += [tmp_path / "gnd.pkl", tmp_path / ".x.tgz.done"]
        for path in written:
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
        assert not list(tmp_path.rglob("*.tmp"))
    finally:
        os.umask(old)
