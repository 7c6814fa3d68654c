"""report.html: the study's table and one section per step, plain HTML with inline CSS, figures by relative path."""
from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

import yaml

from deepret.fileio import atomic_write_bytes

CSS = """
body { font-family: sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #bbb; padding: 4px 8px; vertical-align: top; }
th { background: #eee; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.standin { background: #fff6e0; }
section { border-top: 2px solid #ddd; margin-top: 2em; }
.question { font-style: italic; font-size: 1.1em; }
.notes { color: #7a4b00; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 560px; border: 1px solid #ccc; }
figcaption { font-size: 13px; color: #555; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
"""

CAPTIONS = {"tsne": "t-SNE of the database, coloured by landmark",
            "tsne_unlabeled": "t-SNE with the unlabeled images too",
            "topk": "the chosen query and its top results (green: positive, red: negative, grey: junk)",
            "triplets": "training triplets mined in the last epoch (anchor, positive, hard negatives)"}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _fmt3(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _separation(r: dict[str, Any], unlabeled_view: bool) -> str:
    """The step's separation measures in words (descriptor space, database images)."""
    s = r["separation"]
    text = (f"Landmark separation of the {s['labelled']} labelled database images in descriptor space: silhouette "
            f"(cosine) {_fmt3(s['silhouette'])}, leave-one-out {s['k']}-NN landmark accuracy {_fmt(s['knn_accuracy'])}%.")
    if unlabeled_view:
        unlabelled = s["images"] - s["labelled"]
        text += (f" Labelled against unlabelled images: silhouette {_fmt3(s['unlabelled_silhouette'])}, "
                 f"{s['k']}-NN accuracy {_fmt(s['unlabelled_knn_accuracy'])}%." if unlabelled else
                 " Labelled against unlabelled images: not measurable, every database image is a positive of "
                 "some query (no unlabelled image).")
    return text


def _signed(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:+.{digits}f}"


def _table(results: dict[str, Any]) -> str:
    protocols = results["protocols"]
    primary = results.get("primary_protocol") or (protocols[0] if protocols else "")
    head = ["step", "model", "backbone", "weights actually used", "descriptor size",
            *(f"mAP ({p})" for p in protocols), f"AP of query {results['query']}",
            "builds on", f"change of mAP ({primary})", "silhouette (cosine)", "k-NN accuracy %"]
    rows = []
    for r in results["steps"]:
        cells = [f'<td><a href="#step-{r["step"]}">{r["step"]}</a></td>', f"<td>{escape(r['model'])}</td>",
                 f"<td>{escape(r['backbone'])}</td>",
                 f'<td class="{"standin" if r["standin"] else ""}">{escape(r["weights"])}</td>',
                 f'<td class="num">{r["dim"]}</td>',
                 *(f'<td class="num">{_fmt(r["map"].get(p))}</td>' for p in protocols),
                 f'<td class="num">{_fmt(r["query_ap"])}</td>',
                 f"<td>{escape(r.get('base') or '')}</td>",
                 f'<td class="num">{_signed((r.get("change") or {}).get("map"))}</td>',
                 f'<td class="num">{_fmt3((r.get("separation") or {}).get("silhouette"))}</td>',
                 f'<td class="num">{_fmt((r.get("separation") or {}).get("knn_accuracy"))}</td>']
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "\n".join(rows) + "</tbody></table>")


def _section(r: dict[str, Any]) -> str:
    maps = ", ".join(f"{p} {v:.2f}" for p, v in r["map"].items())
    parts = [f'<section id="step-{r["step"]}"><h2>{r["step"]}: {escape(r["title"])}</h2>',
             f'<p class="question">{escape(r["question"])}</p>',
             f"<p>Network: <code>{escape(r['network'])}</code> — {escape(r['weights'])}. "
             f"Descriptor: {r['dim']}-d"
             + (f", scales {', '.join(f'{s:g}' for s in r['scales'])}" if len(r["scales"]) > 1 else "")
             + f". mAP: {escape(maps)}; AP of the chosen query ({escape(str(r['query_ap_protocol']))}): "
             f"{_fmt(r['query_ap'])}.</p>"]
    if r.get("summary"):
        parts.append(f'<p class="summary"><b>{escape(r["summary"])}</b></p>')
    if r.get("separation"):
        parts.append(f"<p>{escape(_separation(r, 'tsne_unlabeled' in r['figures']))}</p>")
    if r.get("why"):
        parts.append(f'<p class="notes">{escape(r["why"])}</p>')
    if r["notes"]:
        parts.append('<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in r["notes"]) + "</ul>")
    for key in ("topk", "tsne", "tsne_unlabeled", "triplets"):
        if key in r["figures"]:
            src = escape(r["figures"][key], quote=True)
            parts.append(f'<figure><img src="{src}" alt="{escape(key)} of step {r["step"]}">'
                         f"<figcaption>{escape(CAPTIONS[key])}</figcaption></figure>")
    return "\n".join(parts) + "</section>"


def _standins(results: dict[str, Any]) -> str:
    """Which network stands in for which, in words (empty when every network had its own weights)."""
    pairs = results.get("standins") or {}
    if not pairs:
        return ""
    words = ", ".join(f"<code>{escape(b)}</code> for {escape(role)}" for role, b in pairs.items())
    return (f"<p>Stand-ins, growing in capacity as the original study's networks grow: {words} "
            "(ImageNet weights of the original networks are not available on this machine).</p>")


def _whitening_words(results: dict[str, Any]) -> str:
    ids = {r["step"] for r in results["steps"]}
    if not ids & {"1e", "1e-lw"}:
        return ""
    return ("<p>Whitening: step 1e is the original study's PCA-whitening, which reduces the dimension to what "
            "the training images span; step 1e-lw is the regularised variant, learned whitening (Lw) with "
            "shrinkage at full dimension, which suits few training images.</p>")


def _training_words(results: dict[str, Any]) -> str:
    t = results.get("training_set")
    if not t:
        return ""
    ids = [r["step"] for r in results["steps"] if r["step"] in ("1b", "1e", "1e-lw", "1f", "1g", "1h", "1i")]
    if not ids:
        return ""
    cost = [f"{r['step']} {r['seconds']:.0f} s" for r in results["steps"]
            if r["step"] in ("1b", "1f", "1g", "1i") and r.get("checkpoint") and not r.get("checkpoint_reused")]
    return (f"<p>Training and whitening ({', '.join(ids)}) used {escape(t['words'])}. None of them is in the "
            "benchmark (the study refuses a training set that shares images with it)."
            + (f" Training steps trained in this run, with their evaluation: {escape(', '.join(cost))}." if cost else "")
            + "</p>")


def render(results: dict[str, Any]) -> str:
    """The whole report page."""
    title = f"deepret study on {results['dataset']}"
    config = yaml.safe_dump(results["config"], sort_keys=False)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title><style>{CSS}</style></head>
<body><h1>{escape(title)}</h1>
<p>Query {results['query']} ({escape(results['query_name'])}) is the one shown in each step's top-k figure.
Where the study's network has no ImageNet weights on this machine, the column "weights actually used" says
which network stands in for it and why (highlighted). mAP and AP are in %. This run took {results['wall_s']} s (checkpoints and features
from earlier runs with the same settings are reused).</p>
{_standins(results)}{_training_words(results)}{_whitening_words(results)}
{_table(results)}
{''.join(_section(r) for r in results['steps'])}
<section id="config"><h2>Command and configuration</h2>
<pre>{escape(results['command'])}</pre><pre>{escape(config)}</pre></section>
</body></html>
"""


def write_report(results: dict[str, Any], path: str | Path) -> Path:
    """Write report.html (atomically); figure paths in `results` are relative to its folder."""
    path = Path(path)
    atomic_write_bytes(path, render(results).encode())
    return path
