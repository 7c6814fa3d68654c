"""bench/gpu.sh runs end to end on the CPU (`--device cpu --quick`): every part and its table."""
import os
import subprocess
import sys
from pathlib import Path

from conftest import require_data

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_writes_its_table_on_the_cpu(tmp_path):
    require_data("oxford5k-mini")
    require_data("landmarks-mini")
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT / "src")}
    out = tmp_path / "gpu"
    subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--device", "cpu", "--quick", "--out", str(out),
                    "--precisions", "fp32,bf16", "--size", "32", "--images", "2"],
                   check=True, env=env, capture_output=True, text=True)
    table = (out / "precision.md").read_text().splitlines()
    rows = [line for line in table if line.startswith(("| fp32 |", "| bf16 |"))]
    assert [r.split("|")[1].strip() for r in rows] == ["fp32", "bf16"]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 10 and all(cells), row
        assert 0 <= float(cells[3]) <= 100  # mAP
    assert (out / "precision.json").is_file()
