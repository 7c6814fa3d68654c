import json
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import require_data
from PIL import Image

import deepret.pipeline
from deepret.cli import main
from deepret.features import Features
from deepret.models import DEFAULT_MODEL

FAST = ["--size", "256", "--quiet"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def mini_copy(tmp_path):
    """A writable oxford5k-mini: its gnd file copied, its photos linked."""
    src = require_data("oxford5k-mini")
    dst = tmp_path / "root" / "oxford5k-mini"
    (dst / "jpg").mkdir(parents=True)
    shutil.copy(src / "gnd_oxford5k-mini.pkl", dst)
    for photo in (src / "jpg").iterdir():
        (dst / "jpg" / photo.name).symlink_to(photo)
    return dst


def test_eval_prints_table_writes_json_and_figure_then_reuses_features(capsys, data_root, tmp_path, monkeypatch):
    report, figure = tmp_path / "out" / "eval.json", tmp_path / "out" / "topk.png"
    (tmp_path / "out").mkdir()  # outputs go into a folder that exists (deepret.fileio.check_output)
    code, out, err = run(capsys, "eval", "--dataset", "oxford5k-mini", "--root", str(data_root), *FAST,
                         "--json", str(report), "--figure", str(figure), "--query", "3", "--topk", "5")
    assert code == 0, err
    assert "old" in out and "mAP" in out and "(cached)" not in err
    result = json.loads(report.read_text())
    old = result["protocols"]["old"]
    assert 0 < old["mAP"] <= 100 and len(old["AP"]) == 53 and set(old["mP@k"]) == {"1", "5", "10"}
    assert abs(np.nanmean([a for a in old["AP"] if a is not None]) - old["mAP"]) < 1e-6
    assert result["model"]["name"] == DEFAULT_MODEL  # no --model: the default
    with Image.open(figure) as im:
        assert im.width > 500 and im.height > 150

    def no_extraction(*args, **kwargs):
        raise AssertionError("extracted again although features are cached")

    monkeypatch.setattr(deepret.pipeline, "extract", no_extraction)
    code, out2, err2 = run(capsys, "eval", "--dataset", "oxford5k-mini", "--root", str(data_root), *FAST)
    assert code == 0 and "(cached)" in err2
    # the same table as the first run, which went on with the `wrote` lines of --json and --figure
    assert out2 and out == out2 + f"wrote {report}\nwrote {figure}\n"


def test_extract_out_and_search_figure(capsys, data_root, tmp_path):
    npz, grid = tmp_path / "f.npz", tmp_path / "grid.png"
    code, _, err = run(capsys, "extract", "--dataset", "oxford5k-mini", "--root", str(data_root), *FAST, "--out", str(npz))
    assert code == 0, err
    features = Features.load(npz)
    assert features.db.shape == (54, 1280) and features.queries.shape == (53, 1280)
    assert features.meta["settings"]["size"] == 256 and features.meta["settings"]["crop_queries"] is True
    code, _, err = run(capsys, "search", "--dataset", "oxford5k-mini", "--root", str(data_root), *FAST,
                       "--query", "0", "--topk", "3", "--out", str(grid))
    assert code == 0 and grid.is_file(), err


def test_models_lists_names_and_the_module_entry_point_works():
    out = subprocess.run([sys.executable, "-m", "deepret", "models"], capture_output=True, text=True, check=True).stdout
    for name in ("efficientnet_lite0-gem", "alexnet-fc7", "resnet50-gem"):
        assert name in out


def _one_line_error(capsys, *argv) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deepret: error:"), err
    return lines[0]


def test_bad_input_gives_one_line_errors(capsys, data_root, tmp_path, mini_copy):
    root = str(mini_copy.parent)
    assert "unknown backbone 'nope'" in _one_line_error(capsys, "eval", "--dataset", "oxford5k-mini", "--root", root,
                                                         "--model", "nope-gem")
    assert "0..52" in _one_line_error(capsys, "search", "--dataset", "oxford5k-mini", "--root", root,
                                       "--query", "53", "--out", str(tmp_path / "g.png"))
    assert not (tmp_path / "g.png").exists()
    assert "no-such.pt" in _one_line_error(capsys, "eval", "--dataset", "oxford5k-mini", "--root", root,
                                           "--model", str(tmp_path / "no-such.pt"))
    (mini_copy / "gnd_oxford5k-mini.pkl").write_bytes(b"garbage")
    assert "gnd_oxford5k-mini.pkl" in _one_line_error(capsys, "eval", "--dataset", "oxford5k-mini", "--root", root)


def test_root_without_images(capsys, tmp_path, mini_copy):
    shutil.rmtree(mini_copy / "jpg")
    (mini_copy / "jpg").mkdir()
    assert "jpg" in _one_line_error(capsys, "eval", "--dataset", "oxford5k-mini", "--root", str(mini_copy.parent))


def test_corrupt_image_leaves_no_feature_file(capsys, tmp_path, mini_copy, monkeypatch):
    with open(mini_copy / "gnd_oxford5k-mini.pkl", "rb") as f:
        victim = pickle.load(f)["imlist"][7]
    (mini_copy / "jpg" / f"{victim}.jpg").unlink()
    (mini_copy / "jpg" / f"{victim}.jpg").write_bytes(b"\xff\xd8 not a photo")
    cache = tmp_path / "cache"
    line = _one_line_error(capsys, "eval", "--dataset", "oxford5k-mini", "--root", str(mini_copy.parent), *FAST,
                           "--cache-dir", str(cache))
    assert f"{victim}.jpg" in line
    assert not list(cache.rglob("*.npz")) and not list(cache.rglob("*.tmp"))


def test_bad_scales_are_rejected_by_the_parser(capsys, data_root):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--dataset", "oxford5k-mini", "--root", str(data_root), "--scales", "1,x"])
    assert exc.value.code == 2


def test_tsne_and_triplets_commands(capsys, data_root, tmp_path):
    code, _, err = run(capsys, "tsne", "--dataset", "oxford5k-mini", "--root", str(data_root), *FAST,
                       "--unlabeled", "--out", str(tmp_path / "tsne.png"))
    assert code == 0 and (tmp_path / "tsne.png").is_file(), err
    assert "tuples.jsonl" in _one_line_error(capsys, "triplets", "--run", str(tmp_path / "no-run"),
                                              "--out", str(tmp_path / "t.png"))


@pytest.mark.parametrize("args,match", [(["--size", "0"], "--size: 0 must be > 0"),
                                        (["--size", "-512"], "--size: -512 must be > 0"),
                                        (["--scales", "1,-0.5"], "every scale must be a finite number > 0"),
                                        (["--topk", "-1"], "--topk: -1 must be > 0"),
                                        (["--query", "-2"], "--query: -2 must be >= 0"),
                                        (["--workers", "two"], "'two' is not a whole number")])
def test_bad_numbers_are_one_line_parser_errors(capsys, tmp_path, args, match):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--dataset", "oxford5k-mini", "--root", str(tmp_path), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("deepret: error:") and match in err[0], err


def test_debug_shows_the_traceback_with_its_cause(capsys, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    argv = ["eval", "--dataset", "oxford5k-mini", "--root", str(require_data("oxford5k-mini").parent),
            "--model", str(bad), "--size", "64", "--quiet"]
    line = _one_line_error(capsys, *argv)
    assert "bad.pt" in line
    code, _, err = run(capsys, *argv, "--debug")
    assert code == 2 and "Traceback" in err and "The above exception was the direct cause" in err
    assert err.strip().splitlines()[-1] == line


def test_models_shows_the_default_size_used_without_size(capsys):
    code, out, _ = run(capsys, "models")
    row = next(line for line in out.splitlines() if line.startswith("efficientnet_lite0-gem "))
    from deepret.models.backbones import BACKBONES

    assert code == 0 and f" {BACKBONES['efficientnet_lite0'].default_size} " in row


def test_huge_benchmark_image_is_a_one_line_error_and_max_pixels_raises_the_limit(capsys, tmp_path, mini_copy,
                                                                                  monkeypatch):
    from deepret.errors import DeepretError

    with open(mini_copy / "gnd_oxford5k-mini.pkl", "rb") as f:
        victim = mini_copy / "jpg" / f"{pickle.load(f)['imlist'][5]}.jpg"
    victim.unlink()
    Image.new("1", (12000, 10000)).save(victim, format="PNG")  # 120 Mpx of one colour: small on disk
    assert victim.stat().st_size < 200_000

    def no_forward_pass(*args, **kwargs):
        raise AssertionError("extraction started although an image is above the pixel limit")

    monkeypatch.setattr(deepret.pipeline, "extract", no_forward_pass)
    bench = ["--dataset", "oxford5k-mini", "--root", str(mini_copy.parent), *FAST]
    for command in (["eval"], ["extract"], ["search", "--query", "0", "--out", str(tmp_path / "s.png")],
                    ["tsne", "--out", str(tmp_path / "t.png")]):
        line = _one_line_error(capsys, *command, *bench)
        assert f"{victim} has 12000x10000 = 120 Mpx, above the limit of 100 Mpx: raise --max-pixels" in line, line

    seen = []

    def extraction_reached(net, paths, *args, max_pixels=None, **kwargs):
        seen.append(max_pixels)
        raise DeepretError("extraction reached")

    monkeypatch.setattr(deepret.pipeline, "extract", extraction_reached)
    for command in (["eval"], ["extract"], ["search", "--query", "0", "--out", str(tmp_path / "s.png")],
                    ["tsne", "--out", str(tmp_path / "t.png")]):
        line = _one_line_error(capsys, *command, *bench, "--max-pixels", "200000000")
        assert line == "deepret: error: extraction reached"
    assert seen == [200_000_000] * 4  # the header check passed and extraction got the raised limit too


def test_eval_rerank_figure_draws_the_reranked_ranking(capsys, data_root, tmp_path, monkeypatch):
    from deepret.datasets import load_benchmark
    from deepret.rerank import parse_rerank
    from deepret.search import rank, similarities

    bench = load_benchmark("oxford5k-mini", data_root)
    rng = np.random.default_rng(0)  # stand-in descriptors of the benchmark's shape: no extraction needed
    db, queries = (x / np.linalg.norm(x, axis=1, keepdims=True)
                   for x in (rng.normal(size=(54, 8)), rng.normal(size=(53, 8))))
    features = Features(db.astype(np.float32), queries.astype(np.float32), list(bench.imlist), list(bench.qimlist),
                        {"model": {"name": "stand-in", "provenance": "random"}, "settings": {"size": 64}})
    monkeypatch.setattr(deepret.pipeline, "benchmark_features", lambda net, bench, opts: (features, None, False))
    drawn = {}

    def topk_figure(query_path, bbx, result_paths, labels, out, title, scores=None, **kw):
        drawn.update(paths=list(result_paths), title=title, scores=list(scores))
        return out

    monkeypatch.setattr(deepret.pipeline, "topk_figure", topk_figure)
    spec, k = "alpha-qe:n=3", 5
    reranked = parse_rerank(spec).ranks(features.db, features.queries)[:k]
    plain = rank(similarities(features.db, features.queries))[:k]
    q = next(q for q in range(53) if list(reranked[:, q]) != list(plain[:, q]))  # a query whose top-k moves
    report = tmp_path / "eval.json"
    code, out, err = run(capsys, "eval", "--dataset", "oxford5k-mini", "--root", str(data_root), *FAST,
                         "--rerank", spec, "--figure", str(tmp_path / "f.png"), "--query", str(q), "--topk", str(k),
                         "--json", str(report))
    assert code == 0, err
    assert drawn["paths"] == [bench.image_path(int(i)) for i in reranked[:, q]]
    assert drawn["scores"] == sorted(drawn["scores"], reverse=True)
    ap = json.loads(report.read_text())["protocols"]["old"]["AP"][q]  # the re-ranked AP evaluated
    assert drawn["title"].endswith(f"AP {ap:.1f}% (old), re-ranked by {parse_rerank(spec).spec}"), drawn["title"]


HEAVY = ("torch", "torchvision", "timm")


@pytest.mark.fast  # a Python without torch: a fraction of a second
@pytest.mark.parametrize("argv", [[], ["--help"], ["eval", "--help"], ["index", "build", "--help"],
                                  ["train", "rank", "--help"], ["study", "--help"], ["serve", "--help"],
                                  ["eval", "--dataset", "x", "--root", ".", "--size", "0"],
                                  ["train", "classify", "--data", "x", "--out", "y", "--precision", "int8"]])
def test_the_parser_loads_no_torch(argv):
    code = (f"import sys\nimport deepret.cli\nassert not {{*{HEAVY!r}}} & set(sys.modules), 'on import'\n"
            f"try:\n    deepret.cli.build_parser().parse_args({argv!r})\nexcept SystemExit:\n    pass\n"
            f"loaded = sorted({{*{HEAVY!r}}} & set(sys.modules))\nassert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.fast
def test_parsed_defaults_come_without_torch():
    code = ("import sys\nfrom deepret.cli import build_parser\n"
            "a = build_parser().parse_args(['train', 'rank', '--data', 'd', '--out', 'o'])\n"
            "b = build_parser().parse_args(['eval', '--dataset', 'x', '--root', '.'])\n"
            "print(a.lr, a.batch_size, a.size, a.precision, a.loss, b.model, b.precision, b.max_pixels)\n"
            f"assert not {{*{HEAVY!r}}} & set(sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1e-06", "4", "362", "fp32", "triplet", DEFAULT_MODEL, "auto", "None"]


@pytest.mark.fast
def test_module_help_and_argument_errors_load_no_torch():
    probe = ("import runpy, sys\nsys.argv = ['deepret', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('deepret', run_name='__main__')\n"
             "except SystemExit as exc:\n    code = exc.code\n"
             f"loaded = sorted({{*{HEAVY!r}}} & set(sys.modules))\n"
             "print('loaded', loaded, 'exit', code, file=sys.stderr)\nsys.exit(1 if loaded else 0)\n")
    for argv, status in ((["--help"], 0), (["index", "search", "--help"], 0), (["eval", "--topk", "1"], 2),
                         (["download", "nope", "--root", "."], 2)):
        done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True)
        assert done.returncode == 0 and f"exit {status}" in done.stderr, (argv, done.stderr)
    done = subprocess.run([sys.executable, "-m", "deepret", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "index a folder of photos" in done.stdout


def test_every_benchmark_command_takes_max_pixels():
    from deepret.cli import build_parser

    parser = build_parser()
    for command in ("extract", "eval", "tsne", "compression", "robustness"):
        extra = ["--out", "o"] if command in ("tsne", "compression", "robustness") else []
        args = parser.parse_args([command, "--dataset", "x", "--root", ".", "--max-pixels", "5", *extra])
        assert args.max_pixels == 5 and args.quiet is False and args.device is None, command
    args = parser.parse_args(["index", "build", "p", "--index", "i", "--max-pixels", "7", "--quiet"])
    assert (args.max_pixels, args.quiet, args.scales, args.precision) == (7, True, (1.0,), "auto")


@pytest.mark.fast  # create_model is only looked up, not called
def test_the_version_is_pyprojects_and_the_lazy_names_resolve():
    import tomllib
    from pathlib import Path

    import deepret
    import deepret.models
    import deepret.study
    import deepret.train
    from deepret.version import __version__

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert deepret.__version__ == __version__ == pyproject["project"]["version"]
    from deepret.models import create_model, list_models
    from deepret.train import TrainConfig, train_rank
    from deepret.train.losses import DEFAULT_MARGINS
    from deepret.train.runner import RankOptions

    assert callable(create_model) and callable(train_rank) and callable(deepret.study.run_study)
    assert deepret.load.__module__ == "deepret" and deepret.models.network.load is deepret.models.load
    assert TrainConfig is deepret.train.runner.TrainConfig and RankOptions().loss in DEFAULT_MARGINS
    assert {r["name"] for r in list_models()} >= {"efficientnet_lite0-gem"}
    assert "create_model" in dir(deepret.models) and "train_rank" in deepret.train.__all__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        deepret.models.nope  # noqa: B018


def test_deepret_warnings_are_one_line_and_others_as_python_shows_them(capsys):
    from deepret.cli import _show_warning
    from deepret.errors import DeepretWarning

    _show_warning(DeepretWarning("OpenVINO cannot run x (aten::lgamma): using torch (fp32)"), DeepretWarning, "f.py", 3)
    assert capsys.readouterr().err == "deepret: warning: OpenVINO cannot run x (aten::lgamma): using torch (fp32)\n"
    _show_warning(UserWarning("other"), UserWarning, "f.py", 3)
    assert "f.py:3: UserWarning: other" in capsys.readouterr().err


def test_index_info_reads_the_catalogue_without_torch(tmp_path):
    from deepret.extract import ExtractSettings
    from deepret.index import build_index

    (tmp_path / "photos").mkdir()
    for photo in sorted(require_data("landmarks-mini").rglob("*.jpg"))[:2]:
        shutil.copy(photo, tmp_path / "photos" / photo.name)
    (tmp_path / "photos" / "clip.mov").write_bytes(b"not a photo")
    build_index(tmp_path / "photos", tmp_path / "ix", model="efficientnet_lite0-gem",
                settings=ExtractSettings(size=64), progress=False).close()
    probe = ("import json, runpy, sys\nsys.argv = ['deepret', 'index', 'info', '--index', sys.argv[1], '--json']\n"
             "try:\n    runpy.run_module('deepret', run_name='__main__')\nexcept SystemExit as exc:\n    assert not exc.code\n"
             f"loaded = sorted({{*{HEAVY!r}}} & set(sys.modules))\nassert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "ix")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["images"] == 2 and info["not_indexed"] == {".mov": 1} and info["model"] == "efficientnet_lite0-gem"
