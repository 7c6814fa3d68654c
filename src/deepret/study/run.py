"""`run_study(cfg)`: every selected step built, extracted, evaluated and drawn; report.html and results.json."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from deepret.datasets import load_benchmark, load_labelled
from deepret.errors import DeepretError
from deepret.evaluate import default_protocol
from deepret.extract import ExtractSettings
from deepret.fileio import atomic_write_bytes
from deepret.pipeline import RunOptions, benchmark_features, draw_topk, evaluate_features
from deepret.separation import separation
from deepret.study.build import build_step
from deepret.study.config import StudyConfig
from deepret.study.report import write_report
from deepret.study.steps import PRETTY, STEPS, Choice, Step, base_of, choose_network, loss_reason, training_words


def _say(text: str) -> None:
    print(f"[study] {text}", file=sys.stderr, flush=True)


def run_study(cfg: StudyConfig) -> Path:
    """Run the study's selected steps; returns the path of report.html (results.json beside it)."""
    start = time.time()
    bench = load_benchmark(cfg.dataset, cfg.root)
    bench.check_query(cfg.query)
    data = load_labelled(cfg.train)
    refuse_evaluating_on_training_photos(bench, data, cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "figures").mkdir(exist_ok=True)
    steps = [s for s in STEPS if s.id in cfg.steps]
    choices: dict[tuple[str, str], Choice] = {}
    seen: dict[tuple, str] = {}
    rows = []
    for n, step in enumerate(steps, 1):
        t0 = time.time()
        _say(f"{n}/{len(steps)} step {step.id}: {step.title}")
        row = _run_step(step, cfg, bench, data, choices, seen)
        row["seconds"] = round(time.time() - t0, 1)
        maps = ", ".join(f"{p} {v:.2f}" for p, v in row["map"].items())
        _say(f"{step.id}: {row['backbone']}, {row['dim']}-d, mAP {maps} ({row['seconds']} s)")
        rows.append(row)
    primary = default_protocol(bench.gnd[cfg.query]) if rows else None
    compare_with_bases(rows, primary, len(bench.qimlist), cfg)
    for row in rows:
        _say(f"{row['step']}: {row['summary']}")
    standins = {PRETTY[r["role"]]: r["backbone"] for r in rows if r["standin"]}
    results = {"dataset": bench.name, "query": cfg.query, "query_name": bench.qimlist[cfg.query],
               "standins": standins, "primary_protocol": primary, "training_set": training_set(data, cfg),
               "protocols": list(rows[0]["map"]) if rows else [], "config": cfg.to_json(),
               "command": command_line(cfg), "wall_s": round(time.time() - start, 1), "steps": rows}
    atomic_write_bytes(cfg.out / "results.json", json.dumps(results, indent=2).encode())
    report = write_report(results, cfg.out / "report.html")
    _say(f"wrote {report} and {cfg.out / 'results.json'} in {results['wall_s']} s")
    return report


def _run_step(step: Step, cfg: StudyConfig, bench, data, choices: dict, seen: dict) -> dict[str, Any]:
    choice = choose_network(cfg, step, choices)
    if choice.standin:
        _say(f"{step.id}: {choice.weights}")
    built = build_step(step, choice, cfg, data)
    if built.checkpoint is not None:
        _say(f"{step.id}: {'reused' if built.reused else 'wrote'} {built.checkpoint}")
    scales = cfg.scales if step.multiscale else (1.0,)
    settings = ExtractSettings(size=cfg.size, scales=scales, precision=cfg.precision, engine=cfg.engine)
    opts = RunOptions(settings, cache_dir=cfg.cache_dir, device=cfg.device, workers=cfg.workers, progress=cfg.progress)
    features, _, cached = benchmark_features(built.net, bench, opts)
    results = evaluate_features(features, bench)
    figures = _figures(step, cfg, bench, features, results, built)
    notes = list(built.notes)
    key = (str(built.checkpoint or choice.model), scales)
    if key in seen:
        notes.append(f"same network and settings as {seen[key]} (the same backbone stands in for both), "
                     "hence the same numbers")
    seen.setdefault(key, step.id)
    protocol = default_protocol(bench.gnd[cfg.query])  # as in the top-k figure
    ap = float(results[protocol].aps[cfg.query])
    training = training_words(step, cfg, built.proj)
    from deepret.viz.tsne import image_landmarks

    measures = separation(features.db, image_landmarks(bench))
    return {
        "step": step.id, "base": base_of(step, cfg), "separation": measures,
        "role": step.role, "title": step.title, "question": step.question, "model": choice.intended,
        "network": built.net.meta["name"], "backbone": choice.backbone, "standin": choice.standin,
        "weights": choice.weights + (f"; then {training}" if training else ""),
        "whitening": (built.net.meta.get("whitening") or {}).get("method"),
        "scales": list(scales), "dim": int(features.db.shape[1]),
        "map": {p: round(float(r.map), 2) for p, r in results.items()},
        "query_ap": None if math.isnan(ap) else round(ap, 2), "query_ap_protocol": protocol,
        "checkpoint": str(built.checkpoint) if built.checkpoint else None, "checkpoint_reused": built.reused,
        "features_cached": cached, "figures": figures, "notes": notes,
    }


def refuse_evaluating_on_training_photos(bench, data, cfg: StudyConfig) -> None:
    """A one-line DeepretError when training photos are images of the benchmark (by file name): a
    network trained on them would be scored on what it was trained on (the Paris list is rparis6k-mini)."""
    names = set(bench.imlist) | set(bench.qimlist)
    shared = sorted({p.stem for p in data.paths} & names)
    if shared:
        raise DeepretError(
            f"the training set {cfg.train} holds {len(shared)} of {bench.name}'s images (e.g. {shared[0]}): a network "
            f"trained on it must not be evaluated on {bench.name}; evaluate on another benchmark "
            "(e.g. --dataset oxford5k-mini) or train on other photos (--train)")


def training_set(data, cfg: StudyConfig) -> dict[str, Any]:
    """What the study trained and whitened on, in numbers and words (for the report)."""
    counts = data.counts()
    words = (f"{len(data)} labelled photos of {len(counts)} landmarks from {cfg.train} ("
             + ", ".join(f"{name} {n}" for name, n in counts.items()) + ")")
    return {"source": str(cfg.train), "images": len(data), "landmarks": counts, "words": words}


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 4)


def compare_with_bases(rows: list[dict[str, Any]], primary: str | None, n_queries: int, cfg: StudyConfig) -> None:
    """Each row's change against the step it builds on (when that step ran too): `change`, a one-line
    `summary` ("vs 1c: mAP +1.00, silhouette +0.040, 5-NN accuracy +3.7") and, where the step loses
    mAP, `why` in words. A change below 100/queries points is what one query's AP can do alone."""
    by_id = {r["step"]: r for r in rows}
    noise = 100.0 / max(n_queries, 1)
    for r in rows:
        base = by_id.get(r["base"]) if r["base"] else None
        s = r["separation"]
        sep = f"silhouette {_num(s['silhouette'], 3)}, {s['k']}-NN accuracy {_num(s['knn_accuracy'], 1)}%"
        if base is None:
            r["change"], r["why"] = None, None
            r["summary"] = (f"mAP {r['map'][primary]:.2f}, {sep}"
                            + (f" ({r['base']}, the step it builds on, was not run)" if r["base"] else ""))
            continue
        b = base["separation"]
        change = {"map": _delta(r["map"][primary], base["map"][primary]),
                  "query_ap": _delta(r["query_ap"], base["query_ap"]),
                  "silhouette": _delta(s["silhouette"], b["silhouette"]),
                  "knn_accuracy": _delta(s["knn_accuracy"], b["knn_accuracy"])}
        r["change"] = change
        r["summary"] = (f"vs {base['step']}: mAP {_signed(change['map'], 2)}, silhouette "
                        f"{_signed(change['silhouette'], 3)}, {s['k']}-NN accuracy {_signed(change['knn_accuracy'], 1)}"
                        f" (now mAP {r['map'][primary]:.2f}, {sep})")
        r["why"] = None
        if change["map"] < 0:
            size = (f"within what one query's AP can do alone ({noise:.1f} points of {n_queries} queries)"
                    if -change["map"] < noise else f"more than one query's AP can do alone ({noise:.1f} points)")
            r["why"] = f"It loses {-change['map']:.2f} mAP against {base['step']}, {size}. " + loss_reason(r, base, cfg)


def _num(v: float | None, digits: int) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _signed(v: float | None, digits: int) -> str:
    return "n/a" if v is None else f"{v:+.{digits}f}"


def _figures(step: Step, cfg: StudyConfig, bench, features, results, built) -> dict[str, str]:
    """Top-k, t-SNE (and unlabeled t-SNE, triplets) of a step, as paths relative to cfg.out."""
    from deepret.viz.triplets import triplets_figure
    from deepret.viz.tsne import tsne_plot

    fig = cfg.out / "figures"
    out = {"topk": fig / f"{step.id}-topk.png", "tsne": fig / f"{step.id}-tsne.png"}
    draw_topk(features, bench, cfg.query, cfg.topk, out["topk"], results)
    tsne_plot(features, bench, out["tsne"], seed=cfg.seed, title=f"{step.id}: database by landmark")
    if step.unlabeled_tsne:
        out["tsne_unlabeled"] = fig / f"{step.id}-tsne-unlabeled.png"
        tsne_plot(features, bench, out["tsne_unlabeled"], seed=cfg.seed, unlabeled=True,
                  title=f"{step.id}: database with the unlabeled images")
    tuples = built.run_dir / "tuples.jsonl" if built.run_dir else None
    if step.triplets and tuples is not None and tuples.is_file():
        out["triplets"] = fig / f"{step.id}-triplets.png"
        triplets_figure(tuples, out["triplets"])
    return {k: v.relative_to(cfg.out).as_posix() for k, v in out.items()}


def command_line(cfg: StudyConfig) -> str:
    """The `deepret study` command that repeats this run."""
    parts = ["deepret study", f"--dataset {cfg.dataset}", f"--root {cfg.root}", f"--train {cfg.train}",
             f"--out {cfg.out}", f"--steps {','.join(cfg.steps)}", f"--query {cfg.query}", f"--topk {cfg.topk}",
             f"--size {cfg.size}", f"--seed {cfg.seed}"]
    if cfg.backbone:
        parts.append(f"--backbone {cfg.backbone}")
    if cfg.classify.epochs == cfg.rank.epochs:
        parts.append(f"--epochs {cfg.rank.epochs}")
    return " ".join(parts)
