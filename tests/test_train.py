"""Training on the real landmarks-mini photos (23 images, 5 landmarks), small sizes, on the CPU."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_data

import deepret
from deepret.cli import main
from deepret.datasets import load_labelled
from deepret.errors import DeepretError
from deepret.train import TrainConfig, train_classify, train_rank
from deepret.train.classify import Classifier
from deepret.train.losses import contrastive_loss, triplet_loss
from deepret.train.mining import mine_tuples

MODEL = "efficientnet_lite0-gem"


@pytest.fixture
def landmarks():
    return load_labelled(require_data("landmarks-mini"))


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]


def test_losses_by_hand():
    q, p, n = torch.tensor([1.0, 0.0]), torch.tensor([0.6, 0.8]), torch.tensor([0.0, 1.0])
    t = torch.stack([q, p, n])[None]
    # |q-p|^2 = 0.16 + 0.64 = 0.8, |q-n|^2 = 2: triplet max(0, 0.8 - 2 + 1.5) = 0.3
    assert triplet_loss(t, margin=1.5).item() == pytest.approx(0.3)
    # contrastive: 0.5 * 0.8 + 0.5 * max(0, 1.5 - sqrt 2)^2
    assert contrastive_loss(t, margin=1.5).item() == pytest.approx(0.4 + 0.5 * (1.5 - 2 ** 0.5) ** 2)


def test_mining_picks_the_hardest_negatives_one_per_class(landmarks):
    rng = np.random.default_rng(0)
    desc = rng.normal(size=(len(landmarks), 8))
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    tuples = mine_tuples(landmarks, lambda ix: desc[ix], rng, n_queries=10, n_negatives=3, pool_size=23)
    labels = np.asarray(landmarks.labels)
    for t in tuples:
        assert labels[t.positive] == labels[t.query] and t.positive != t.query
        neg_labels = labels[t.negatives]
        assert len(t.negatives) == 3 and len(set(neg_labels)) == 3 and labels[t.query] not in neg_labels
        sims = desc @ desc[t.query]
        # each chosen negative is the most similar image of its class
        for n in t.negatives:
            same = np.flatnonzero(labels == labels[n])
            assert sims[n] == pytest.approx(sims[same].max())


def test_classifier_loss_falls_on_a_fixed_batch(landmarks):
    torch.manual_seed(0)
    from deepret.augment import train_transform
    from deepret.imageio import open_rgb
    from deepret.models import create_model

    net = create_model(MODEL)
    clf = Classifier(net, len(landmarks.classes))
    tf = train_transform(96, net.meta["input"]["mean"], net.meta["input"]["std"], None)
    x = torch.stack([tf(open_rgb(p)) for p in landmarks.paths[::3]])
    y = torch.tensor(landmarks.labels[::3])
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    clf.train()
    first = None
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(clf(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_rank_loss_falls_on_a_fixed_tuple_batch(landmarks):
    torch.manual_seed(0)
    from deepret.augment import train_transform
    from deepret.imageio import open_rgb
    from deepret.models import create_model

    net = create_model(MODEL)
    tf = train_transform(96, net.meta["input"]["mean"], net.meta["input"]["std"], None)
    by_class = landmarks.by_class()
    # (query, positive, negative) x 2: sacre_coeur pair vs piazza_san_marco, san marco pair vs london bridge
    names = {c: i for i, c in enumerate(landmarks.classes)}
    sc, sm, lb = by_class[names["sacre_coeur"]], by_class[names["piazza_san_marco"]], by_class[names["london_bridge"]]
    order = [sc[0], sc[1], sm[0], sm[1], sm[2], lb[0]]
    x = torch.stack([tf(open_rgb(landmarks.paths[i])) for i in order])
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    net.train()
    values = []
    for _ in range(6):
        loss = triplet_loss(net(x).view(2, 3, -1), margin=0.5)
        values.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert values[-1] < 0.5 * values[0], values


def _cfg(out, **kw):
    return TrainConfig(out=out, size=64, batch_size=4, progress=False, **kw)


def test_classify_resume_gives_the_same_losses(landmarks, tmp_path):
    full = train_classify(landmarks, MODEL, _cfg(tmp_path / "full", epochs=2, augment="all"))
    train_classify(landmarks, MODEL, _cfg(tmp_path / "cut", epochs=1, augment="all"))
    resumed = train_classify(landmarks, MODEL, _cfg(tmp_path / "cut", epochs=2, augment="all", resume=True))
    assert losses(tmp_path / "cut") == pytest.approx(losses(tmp_path / "full"), abs=1e-6)
    a, b = torch.load(full, weights_only=False), torch.load(resumed, weights_only=False)
    assert all(torch.allclose(a["state_dict"][k], b["state_dict"][k], atol=1e-6) for k in a["state_dict"])
    assert {p.name for p in (tmp_path / "cut").iterdir()} >= {"epoch_001.pt", "epoch_002.pt", "last.pt",
                                                              "log.jsonl", "loss.png"}


def test_bf16_training_resumes_exactly(landmarks, tmp_path):
    fp32 = losses(train_classify(landmarks, MODEL, _cfg(tmp_path / "fp32", epochs=2)).parent)
    bf16 = _cfg(tmp_path / "full", epochs=2, precision="bf16")
    train_classify(landmarks, MODEL, bf16)
    train_classify(landmarks, MODEL, _cfg(tmp_path / "cut", epochs=1, precision="bf16"))
    train_classify(landmarks, MODEL, _cfg(tmp_path / "cut", epochs=2, precision="bf16", resume=True))
    assert losses(tmp_path / "cut") == pytest.approx(losses(tmp_path / "full"), abs=1e-6)
    got = losses(tmp_path / "full")
    assert len(got) == len(fp32) and np.isfinite(got).all() and got != fp32  # autocast ran, and stayed finite


def test_rank_resume_with_projection_and_learned_p(landmarks, tmp_path):
    kw = dict(queries=6, negatives=2, pool_size=10, proj=8, learn_p=True, multires=(1.0, 0.75))
    full = train_rank(landmarks, MODEL, _cfg(tmp_path / "full", epochs=2, lr=1e-5), **kw)
    train_rank(landmarks, MODEL, _cfg(tmp_path / "cut", epochs=1, lr=1e-5), **kw)
    train_rank(landmarks, MODEL, _cfg(tmp_path / "cut", epochs=2, lr=1e-5, resume=True), **kw)
    assert losses(tmp_path / "cut") == pytest.approx(losses(tmp_path / "full"), abs=1e-6)
    net = deepret.load(full)
    assert net.dim == 8 and net.meta["gem"]["learn_p"] and net.meta["whitening"]["dim_in"] == 1280
    assert isinstance(net.pool.p, torch.nn.Parameter)
    tuples = [json.loads(line) for line in (tmp_path / "full" / "tuples.jsonl").read_text().splitlines()]
    assert len(tuples) == 12 and all(len(t["paths"]) == 4 for t in tuples)


def test_corrupt_image_is_skipped_and_reported(landmarks, tmp_path, capsys):
    bad = tmp_path / "data" / "broken_landmark"
    shutil.copytree(require_data("landmarks-mini"), tmp_path / "data", ignore=shutil.ignore_patterns("*.md"))
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"\xff\xd8 not a photo")
    shutil.copy(landmarks.paths[0], bad / "b.jpg")
    data = load_labelled(tmp_path / "data")
    train_classify(data, MODEL, _cfg(tmp_path / "run", epochs=1))
    log = (tmp_path / "run" / "log.jsonl").read_text()
    assert "a.jpg" in log and "a.jpg" in capsys.readouterr().out
    assert (tmp_path / "run" / "last.pt").is_file()


def test_cli_train_then_eval_and_whiten(capsys, tmp_path, data_root):
    lm = str(require_data("landmarks-mini"))
    code = main(["train", "rank", "--data", lm, "--out", str(tmp_path / "run"), "--epochs", "1", "--size", "64",
                 "--queries", "4", "--negatives", "2", "--pool-size", "8", "--quiet"])
    assert code == 0
    ckpt = tmp_path / "run" / "last.pt"
    code = main(["eval", "--model", str(ckpt), "--dataset", "oxford5k-mini", "--root", str(data_root),
                 "--size", "128", "--quiet", "--json", str(tmp_path / "e.json")])
    assert code == 0
    assert 0 < json.loads((tmp_path / "e.json").read_text())["protocols"]["old"]["mAP"] <= 100
    code = main(["whiten", "--model", str(ckpt), "--train", lm, "--method", "pca", "--dim", "16", "--size", "128",
                 "--out", str(tmp_path / "w.pt")])
    assert code == 0
    net = deepret.load(tmp_path / "w.pt")
    assert net.dim == 16 and net.meta["whitening"]["method"] == "pca"
    capsys.readouterr()


def test_whitening_of_real_descriptors(landmarks):
    from deepret.extract import ExtractSettings, extract
    from deepret.models import create_model
    from deepret.train.whitening import learn_whitening

    net = create_model(MODEL)
    learn_whitening(net, landmarks, "pca", dim=12, size=96, progress=False)
    pooled = net.meta["whitening"]
    assert pooled["dim_out"] == 12
    net_copy_pooled = create_model(MODEL)
    X = extract(net_copy_pooled, landmarks.paths, settings=ExtractSettings(size=96), progress=False).vectors
    Y = (X - X.mean(0)) @ net.whiten.weight.detach().numpy().T
    np.testing.assert_allclose(np.cov(Y.T), np.eye(12), atol=1e-3)


def test_whiten_command_learns_in_the_precision_it_is_given(landmarks, tmp_path, capsys):
    from deepret.extract import ExtractSettings, extract
    from deepret.models import create_model

    assert main(["whiten", "--model", MODEL, "--train", str(require_data("landmarks-mini")), "--method", "pca", "--dim", "12",
                 "--size", "96", "--precision", "bf16", "--out", str(tmp_path / "w.pt")]) == 0
    W = deepret.load(tmp_path / "w.pt").whiten.weight.detach().numpy()
    off = {}
    for precision in ("bf16", "fp32"):
        X = extract(create_model(MODEL), landmarks.paths, settings=ExtractSettings(size=96, precision=precision),
                    progress=False).vectors
        off[precision] = np.abs(np.cov(((X - X.mean(0)) @ W.T).T) - np.eye(12)).max()
    assert off["bf16"] < 1e-4 < 1e-3 < off["fp32"], off  # fitted on bf16 descriptors, not on fp32 ones
    capsys.readouterr()


@pytest.mark.parametrize("make,match", [
    (lambda d: (d / "only").mkdir() or [(d / "only" / f"{i}.jpg").write_bytes(b"x") for i in range(2)], "1 class"),
    (lambda d: d.mkdir(exist_ok=True), "empty folder"),
    (lambda d: (d / "train.csv").write_text("image,label\na,1\n"), "train.csv"),
])
def test_bad_training_data_gives_one_line_errors(tmp_path, make, match, capsys):
    root = tmp_path / "d"
    root.mkdir()
    make(root)
    source = root / "train.csv" if (root / "train.csv").exists() else root
    code = main(["train", "classify", "--data", str(source), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and match in err[0], err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_existing_run_is_not_overwritten_without_resume(landmarks, tmp_path):
    train_classify(landmarks, MODEL, _cfg(tmp_path / "run", epochs=1))
    with pytest.raises(DeepretError, match="--resume"):
        train_classify(landmarks, MODEL, _cfg(tmp_path / "run", epochs=1))


def test_torchrun_two_processes_on_the_cpu(tmp_path):
    """The same command under torchrun: DistributedDataParallel over gloo, rank 0 logs and saves."""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "deepret", "train",
           "classify", "--data", str(require_data("landmarks-mini")), "--out", str(out), "--epochs", "1",
           "--size", "64", "--batch-size", "4", "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert records[0]["world_size"] == 2
    # 23 images, 12 per rank (DistributedSampler pads), 4 per batch: 3 steps, each logged once
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert result.stdout.count("wrote ") == 1
    assert deepret.load(out / "last.pt").dim == 1280


def test_torchrun_ranks_skip_a_corrupt_batch_together(tmp_path):
    """A batch that one rank cannot decode is skipped by both: neither waits for the other."""
    import subprocess
    import sys

    data = tmp_path / "data"
    shutil.copytree(require_data("landmarks-mini"), data, ignore=shutil.ignore_patterns("*.md"))
    (data / "london_bridge" / "zz_broken.jpg").write_bytes(b"\xff\xd8 not a photo")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "deepret", "train",
           "classify", "--data", str(data), "--out", str(out), "--epochs", "1", "--size", "32",
           "--batch-size", "1", "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "zz_broken.jpg" in result.stdout
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # 24 images, 12 per rank, 1 per batch: the step holding the broken image is skipped on both ranks
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 12))


@pytest.mark.parametrize("method", ["pca", "lw"])
def test_projection_starts_from_the_whitening_it_is_given(landmarks, method):
    from deepret.extract import ExtractSettings, extract
    from deepret.models import create_model
    from deepret.train.rank import init_projection
    from deepret.train.whitening import matching_pairs
    from deepret.whiten import fit_whitening

    net = create_model(MODEL)
    cfg = _cfg(Path("unused"))
    dim = 8 if method == "pca" else 64  # well-conditioned directions (PCA-w of 23 images: at most 22)
    init_projection(net, landmarks, dim, cfg, "cpu", method=method)
    assert net.dim == dim and net.meta["whitening"]["method"] == f"{method}-init, trained end to end"
    assert net.meta["whitening"]["init_shrinkage"] == (1.0 if method == "lw" else 0.0)  # the defaults
    plain = create_model(MODEL)
    pooled = extract(plain, landmarks.paths, settings=ExtractSettings(size=64, precision="fp32", engine="torch"), progress=False).vectors
    expected = fit_whitening(method, pooled.astype(np.float64), pairs=matching_pairs(landmarks) if method == "lw" else None,
                             dim=dim, shrinkage=1.0 if method == "lw" else 0.0)
    got = extract(net, landmarks.paths[:4], settings=ExtractSettings(size=64, precision="fp32", engine="torch"), progress=False).vectors
    assert np.allclose(got, expected.transform(pooled[:4]), atol=2e-3)


def test_bad_projection_init_is_refused(landmarks, tmp_path, capsys):
    with pytest.raises(DeepretError, match="--proj-init 'zca': use pca or lw"):
        train_rank(landmarks, MODEL, _cfg(tmp_path / "run", epochs=1), proj=8, proj_init="zca")
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit) as exc:
        main(["train", "rank", "--data", str(require_data("landmarks-mini")), "--out", str(tmp_path / "r"),
              "--proj", "8", "--proj-init", "zca"])
    assert exc.value.code == 2 and "invalid choice: 'zca'" in capsys.readouterr().err


def test_freeze_counts_the_stages_of_a_wrapped_efficientnet():
    from deepret.models import create_model
    from deepret.train.classify import freeze_blocks, trunk_blocks

    net = create_model("efficientnet_lite0-spoc", weights="random")
    blocks = trunk_blocks(net)
    assert len(blocks) >= 11  # stem conv, stem norm, 7 stages, head conv, head norm (+ unused classifier)
    freeze_blocks(net, 9)  # all but the head conv and its norm
    trainable = {n.split(".")[1] for n, p in net.trunk.named_parameters() if p.requires_grad}
    assert {"conv_head", "bn2"} <= trainable and not trainable & {"conv_stem", "bn1", "blocks"}
    with pytest.raises(DeepretError, match="has only"):
        freeze_blocks(net, len(blocks) + 1)
