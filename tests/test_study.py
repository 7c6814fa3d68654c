"""`deepret study`: config loading, the weights policy, and a reduced real run whose report is checked."""
from __future__ import annotations

import argparse
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import require_data

from deepret.cli import main
from deepret.errors import DeepretError
from deepret.study import StudyConfig, add_arguments, config_from_args, load_config, run_study
from deepret.study.build import projection_dim
from deepret.study.run import compare_with_bases
from deepret.study.steps import STEP_BY_ID, base_of, choose_network, training_words


def test_yaml_then_flags_override(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("dataset: paris6k\nsize: 256\nrank: {epochs: 3, queries: 7}\nsteps: [1a, 1d]\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--config", str(path), "--size", "128", "--epochs", "1"]))
    assert (cfg.dataset, cfg.size, cfg.steps) == ("paris6k", 128, ("1a", "1d"))
    assert (cfg.rank.epochs, cfg.rank.queries, cfg.classify.epochs) == (1, 7, 1)
    assert cfg.out == Path("runs/study") and cfg.query == 0
    assert cfg.precision == "auto"  # the evaluation extraction's, as for `deepret eval`
    assert config_from_args(parser.parse_args(["--config", str(path), "--precision", "BF16"])).precision == "bf16"
    path.write_text("precision: half\n")
    with pytest.raises(DeepretError, match="precision 'half' is unknown"):
        config_from_args(parser.parse_args(["--config", str(path)]))


def test_shipped_configs_load():
    repo = Path(__file__).resolve().parents[1]
    offline = load_config(repo / "study.yaml")
    assert offline == StudyConfig()  # study.yaml spells out the defaults
    assert offline.train == Path("../shared/data/paris-train.txt") and offline.proj_init == "lw"
    gpu = load_config(repo / "study-gpu.yaml")
    assert (gpu.dataset, gpu.device, gpu.size, gpu.steps) == ("oxford5k", "cuda", 1024, StudyConfig().steps)
    assert (gpu.network_for("alexnet"), gpu.network_for("resnet50"), gpu.backbone) == ("alexnet", "resnet50", None)
    assert gpu.rank.epochs > offline.rank.epochs and gpu.classify.batch_size > offline.classify.batch_size
    assert gpu.train == Path("data/landmarks")  # the GPU study keeps its own training set
    # the settings the offline sweep's reasoning fixes are spelled out in the file, not inherited silently
    text = (repo / "study-gpu.yaml").read_text()
    assert "margin: 1.5" in text and "proj_init: lw" in text and "freeze: 0" in text
    assert (gpu.rank.margin, gpu.proj_init, gpu.classify.freeze) == (1.5, "lw", 0)


def test_the_study_refuses_to_evaluate_on_the_photos_it_trains_on(tmp_path, capsys):
    paris = require_data("paris-train.txt")
    require_data("rparis6k-mini")
    out = tmp_path / "study"
    code = main(["study", "--dataset", "rparis6k-mini", "--root", str(paris.parent), "--train", str(paris),
                 "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("deepret: error:"), err
    assert "must not be evaluated on rparis6k-mini" in err[0] and "paris-train.txt" in err[0], err
    assert not out.exists()  # refused before anything was trained or written
    # the same list may train a study evaluated on another city's benchmark
    from deepret.datasets import load_benchmark, load_labelled
    from deepret.study.run import refuse_evaluating_on_training_photos

    oxford = load_benchmark("oxford5k-mini", paris.parent)
    refuse_evaluating_on_training_photos(oxford, load_labelled(paris), StudyConfig(train=paris))


def test_projection_init_setting():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args([])).proj_init == "lw"
    cfg = config_from_args(parser.parse_args(["--proj-init", "pca"]))
    assert cfg.proj_init == "pca"
    with pytest.raises(SystemExit):
        parser.parse_args(["--proj-init", "zca"])
    with pytest.raises(DeepretError, match="proj_init 'zca'"):
        StudyConfig(proj_init="zca")
    # PCA-whitening spans at most n - 1 dimensions; Lw keeps up to the network's
    assert projection_dim(StudyConfig(proj_init="pca"), 1280, 23)[0] == 22
    assert projection_dim(StudyConfig(proj_init="lw"), 1280, 23) == (512, ())
    assert projection_dim(StudyConfig(proj_init="lw", proj=2048), 1280, 23)[0] == 1280
    # 1f builds on the whitening its projection starts from, and says so in words
    assert base_of(STEP_BY_ID["1f"], StudyConfig(proj_init="lw")) == "1e-lw"
    assert base_of(STEP_BY_ID["1f"], StudyConfig(proj_init="pca")) == "1e"
    assert base_of(STEP_BY_ID["1g"], StudyConfig()) == "1f" and base_of(STEP_BY_ID["1a"], StudyConfig()) is None
    assert "initialised by learned whitening (Lw" in training_words(STEP_BY_ID["1f"], StudyConfig(), 512)
    assert "initialised by PCA-whitening" in training_words(STEP_BY_ID["1f"], StudyConfig(proj_init="pca"), 22)


def _row(step: str, base: str | None, m: float, sil: float, knn: float) -> dict:
    return {"step": step, "base": base, "map": {"old": m}, "query_ap": m, "dim": 1280, "backbone": "b",
            "network": "n", "separation": {"silhouette": sil, "knn_accuracy": knn, "k": 5}}


def test_each_step_is_compared_with_the_one_it_builds_on():
    rows = [_row("1a", None, 80.0, 0.10, 90.0), _row("1c", "1a", 78.5, 0.14, 92.0),
            _row("1d", "1c", 79.5, 0.18, 92.0), _row("1b", "1x", 70.0, 0.1, 50.0)]
    compare_with_bases(rows, "old", 50, StudyConfig())
    a, c, d, b = rows
    assert a["change"] is None and a["summary"].startswith("mAP 80.00, silhouette 0.100")
    assert d["summary"].startswith("vs 1c: mAP +1.00, silhouette +0.040, 5-NN accuracy +0.0")
    assert d["change"] == {"map": 1.0, "query_ap": 1.0, "silhouette": 0.04, "knn_accuracy": 0.0} and d["why"] is None
    # a loss is said, with its size against one query's share (100/50 = 2 points) and a reason
    assert c["change"]["map"] == -1.5 and c["why"].startswith("It loses 1.50 mAP against 1a, within what one query")
    assert "GeM" in c["why"] and "silhouette rose (+0.040)" in c["why"]
    assert b["change"] is None and "was not run" in b["summary"]


def test_bad_config_is_one_clear_error(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("epoch: 3\n")
    with pytest.raises(DeepretError, match="unknown key.*epoch"):
        load_config(path)
    with pytest.raises(DeepretError, match="unknown study step"):
        StudyConfig(steps=("1z",))
    with pytest.raises(DeepretError, match="engine 'tensorrt'"):
        load_config(None, engine="tensorrt")
    assert load_config(None, engine="torch").engine == "torch" and StudyConfig().engine == "auto"


def test_backbone_without_fc7_uses_its_pooled_features_and_says_so():
    cfg = StudyConfig(backbone="efficientnet_lite0")
    choice = choose_network(cfg, STEP_BY_ID["1a"], {})
    assert choice.model == "efficientnet_lite0-spoc" and not choice.standin
    assert "no fc7 layer" in choice.weights and "global-average-pooled" in choice.weights


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def _table_rows(html: str) -> list[list[str]]:
    body = html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body)]


def _numbers(results: dict) -> list:
    return [(r["step"], r["dim"], r["map"], r["query_ap"]) for r in results["steps"]]


def test_reduced_study_writes_a_complete_report_and_reruns_from_checkpoints(tmp_path):
    root = require_data("oxford5k-mini").parent
    cfg = load_config(None, root=root, train=root / "landmarks-mini", out=tmp_path / "study",
                      steps=("1a", "1c", "1f"), size=128, whiten_size=128, progress=False, classify_epochs=1,
                      rank_epochs=1, rank_queries=4, rank_size=96, rank_batch_size=2)
    report = run_study(cfg)
    html = report.read_text()
    rows = _table_rows(html)
    assert [r[0] for r in rows] == ['<a href="#step-1a">1a</a>', '<a href="#step-1c">1c</a>',
                                    '<a href="#step-1f">1f</a>']
    for row in rows:  # mAP (old protocol) and the query's AP, then base, change, silhouette, k-NN accuracy
        assert all(0.0 <= float(cell) <= 100.0 for cell in row[5:7]), row
        assert -1.0 <= float(row[9]) <= 1.0 and 0.0 <= float(row[10]) <= 100.0, row
    assert rows[1][7:9] == ["1a", f"{float(rows[1][5]) - float(rows[0][5]):+.2f}"]  # 1c against 1a
    parser = _Images()
    parser.feed(html)
    assert len(parser.srcs) == 2 + 2 + 4  # top-k + t-SNE each; 1f also the unlabeled t-SNE and the triplets
    for src in parser.srcs:
        assert not src.startswith(("/", "http")) and (report.parent / src).is_file(), src
    # AlexNet/ResNet weights cannot be had here: the stand-in is said in words, fc7 replacement too
    assert "standing in for AlexNet: AlexNet ImageNet weights not available offline" in html
    assert "standing in for ResNet18" in html and "no fc7 layer" in html

    results = json.loads((cfg.out / "results.json").read_text())
    a, c, f = results["steps"]
    assert f["dim"] == 512 and f["base"] == "1e-lw"  # the projection starts from Lw (not capped by 23 images)
    assert "initialised by learned whitening (Lw" in f["weights"] and "was not run" in f["summary"]
    assert c["summary"].startswith(f"vs 1a: mAP {c['map']['old'] - a['map']['old']:+.2f}, silhouette ")
    assert c["summary"] in html and (c["why"] is None) == (c["map"]["old"] >= a["map"]["old"])
    for r in (a, c, f):  # the separation measures in descriptor space, on the 54 labelled database images
        s = r["separation"]
        assert (s["images"], s["labelled"], s["k"]) == (54, 54, 5) and -1 <= s["silhouette"] <= 1, s
        assert 0 <= s["knn_accuracy"] <= 100 and s["unlabelled_silhouette"] is None, s
    assert "every database image is a positive of some query (no unlabelled image)" in html  # 1f's view
    assert results["training_set"]["images"] == 23 and "23 labelled photos of 5 landmarks" in html
    checkpoints = sorted((cfg.out / "checkpoints").rglob("*.pt"))
    assert checkpoints
    mtimes = {p: p.stat().st_mtime_ns for p in checkpoints}

    run_study(cfg)
    again = json.loads((cfg.out / "results.json").read_text())
    assert _numbers(again) == _numbers(results)
    assert all(r["checkpoint_reused"] for r in again["steps"] if r["checkpoint"])
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == mtimes
    assert sorted((cfg.out / "checkpoints").rglob("*.pt")) == checkpoints


def test_standins_grow_with_the_original_networks_so_neighbours_differ(monkeypatch):
    import deepret.study.steps as steps_mod
    from deepret.errors import WeightsUnavailableError

    real = steps_mod.create_model

    def offline_torchvision(name, weights="imagenet"):
        if name.startswith(("alexnet", "resnet")):  # as on the offline machines, without touching the network
            raise WeightsUnavailableError(f"cannot download the ImageNet weights of {name}")
        return real(name, weights=weights)

    monkeypatch.setattr(steps_mod, "create_model", offline_torchvision)
    cfg, cache = StudyConfig(), {}
    used = {s: choose_network(cfg, STEP_BY_ID[s], cache) for s in ("1a", "1c", "1d", "1h", "1i")}
    assert used["1a"].model == "efficientnet_lite0-spoc"
    assert [used[s].backbone for s in ("1c", "1d", "1i")] == ["efficientnet_lite0", "efficientnet_lite1",
                                                              "efficientnet_lite2"]
    assert used["1c"].model != used["1d"].model and used["1h"].model != used["1i"].model
    assert "standing in for ResNet50" in used["1i"].weights

    def broken(name, weights="imagenet"):
        raise DeepretError("weights file x.pth is corrupt")  # not missing weights: no stand-in, the error shows

    monkeypatch.setattr(steps_mod, "create_model", broken)
    with pytest.raises(DeepretError, match="corrupt"):
        choose_network(cfg, STEP_BY_ID["1d"], {})


def test_reduced_study_whitening_steps_say_which_is_pca_and_which_is_lw(tmp_path):
    root = require_data("oxford5k-mini").parent
    cfg = load_config(None, root=root, train=root / "landmarks-mini", out=tmp_path / "study",
                      steps=("1e", "1e-lw"), size=64, whiten_size=64, progress=False, workers=0)
    report = run_study(cfg)
    html = report.read_text()
    results = json.loads((cfg.out / "results.json").read_text())
    pca, lw = results["steps"]
    n_train = 23  # landmarks-mini
    assert (pca["step"], pca["whitening"], lw["step"], lw["whitening"]) == ("1e", "pca", "1e-lw", "lw")
    assert pca["backbone"] == lw["backbone"]  # the same network (ResNet18's role), whitened two ways
    full = 1280 if lw["backbone"].startswith("efficientnet") else 512
    assert pca["dim"] == n_train - 1 and lw["dim"] == full  # PCA reduces to what 23 images span; Lw keeps all
    assert [r[4] for r in _table_rows(html)] == [str(n_train - 1), str(full)]  # the table's descriptor sizes
    for r in (pca, lw):
        assert all(0.0 <= v <= 100.0 for v in r["map"].values()), r["map"]
    # the report says in words which is which
    assert "step 1e is the original study's PCA-whitening, which reduces the dimension" in html
    assert "step 1e-lw is the regularised variant, learned whitening (Lw) with shrinkage at full dimension" in html
    assert any("the original study's PCA-whitening (dimension-reducing)" in n and f"becomes {n_train - 1}-d" in n
               for n in pca["notes"]), pca["notes"]
    assert any(n.startswith("learned whitening (Lw") and f"kept at {full}-d" in n and "shrinkage 1 x" in n
               for n in lw["notes"]), lw["notes"]
    section_pca = html.split('id="step-1e"', 1)[1].split("</section>", 1)[0]
    section_lw = html.split('id="step-1e-lw"', 1)[1].split("</section>", 1)[0]
    assert "PCA-whitening" in section_pca and f"Descriptor: {n_train - 1}-d" in section_pca
    assert "Lw" in section_lw and "shrinkage" in section_lw and f"Descriptor: {full}-d" in section_lw
