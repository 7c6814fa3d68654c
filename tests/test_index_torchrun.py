"""`torchrun -m deepret index build`: ranks share the files, rank 0 publishes; same index as one process."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import require_data

from deepret.extract import ExtractSettings
from deepret.index import Index, build_index


def test_torchrun_two_cpu_ranks_build_the_same_index(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted(require_data("landmarks-mini").rglob("*.jpg"))[:7]:
        shutil.copy(p, photos / p.name)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 broken")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "deepret", "index", "build",
           str(photos), "--index", str(tmp_path / "ddp"), "--size", "128", "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("7 images indexed, 1 skipped") == 1  # rank 0 reports once
    assert not list((tmp_path / "ddp" / "parts").glob("*"))  # both ranks' part files were merged
    one = build_index(photos, tmp_path / "one", settings=ExtractSettings(size=128), progress=False)
    with Index.open(tmp_path / "ddp") as ddp:
        (ids_d, x_d), (ids_1, x_1) = ddp.vectors(), one.vectors()
        by_path_d = {ddp.path_of(int(i)).name: (int(i), v) for i, v in zip(ids_d, x_d)}
        by_path_1 = {one.path_of(int(i)).name: (int(i), v) for i, v in zip(ids_1, x_1)}
        assert by_path_d.keys() == by_path_1.keys() and len(by_path_d) == 7
        for name, (i, v) in by_path_1.items():
            assert by_path_d[name][0] == i
            np.testing.assert_allclose(by_path_d[name][1], v, atol=1e-5)
        assert ddp.info()["skipped"] == one.info()["skipped"] and len(ddp.info()["skipped"]) == 1
        q = x_1[0]
        assert [h.id for h in ddp.search_vector(q, k=7).hits] == [h.id for h in one.search_vector(q, k=7).hits]
    one.close()
