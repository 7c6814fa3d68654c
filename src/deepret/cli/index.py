"""`deepret index build|update|info|search|verify|repair`: one handler per action.

File names are shown with deepret.fileio.printable, in text and in JSON ("path" fields): one line
each, valid UTF-8, a byte that is not UTF-8 written \\xHH (docs/search.md, "File names")."""
from __future__ import annotations

import json

from deepret.fileio import printable


def _shown(rows: list[dict]) -> list[dict]:
    """Rows with their "path" as printable shows it."""
    return [{**row, "path": printable(row["path"])} for row in rows]


def cmd_build(args) -> int:
    from deepret.cli.benchmarks import descriptor_settings
    from deepret.imageio import DEFAULT_MAX_PIXELS
    from deepret.index import build_index
    from deepret.index.photos import not_indexed_line
    from deepret.runtime import is_main_process

    index = build_index(args.photos, args.index, model=args.model, weights=args.weights,
                        settings=descriptor_settings(args),
                        factory=args.factory, backend=args.backend, uri=args.uri, train_on=args.train_on,
                        device=args.device, progress=not args.quiet, workers=args.workers,
                        max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)
    if is_main_process():
        info = index.info()
        shown = printable(args.index)
        print(f"{shown}: {info['images']} images indexed, {len(info['skipped'])} skipped "
              f"(see `deepret index info --index {shown}`)")
        if info["not_indexed"]:
            print(not_indexed_line(info["not_indexed"]))
    return 0


def cmd_update(args) -> int:
    from deepret.index import Index
    from deepret.index.photos import not_indexed_line

    with Index.open(args.index, device=args.device, precision=args.precision, engine=args.engine) as index:
        report = index.update(progress=not args.quiet)
        print(f"{printable(args.index)}: {report.added} added, {report.changed} changed, {report.removed} removed, "
              f"{len(report.skipped)} skipped, {len(index)} images")
        for s in report.skipped:
            print(f"  skipped {printable(s['path'])}: {s['reason']}")
        if counts := index.info()["not_indexed"]:
            print(not_indexed_line(counts))
    return 0


def cmd_info(args) -> int:
    from deepret.index.info import read_info
    from deepret.index.photos import not_indexed_line

    info = read_info(args.index)  # without the model: no torch
    info = {**info, "root": printable(info["root"]), "skipped": _shown(info["skipped"])}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key in ("root", "images", "model", "fingerprint", "settings", "dim", "factory", "backend",
                "bytes_per_vector"):
        print(f"{key}: {info[key]}")
    print(f"skipped: {len(info['skipped'])}")
    for s in info["skipped"]:
        print(f"  {s['path']}: {s['reason']}")  # printable above
    if info["not_indexed"] is None:
        print("files not indexed: not counted (the index is older than the count): run `deepret index update`")
    else:
        print(not_indexed_line(info["not_indexed"]) or "files not indexed: none")
    return 0


def cmd_search(args) -> int:
    from deepret.index import Index

    with Index.open(args.index, device=args.device, precision=args.precision, engine=args.engine) as index:
        result = index.search(args.image, box=args.box, k=args.topk, rerank=args.rerank)
        for rank, hit in enumerate(result.hits, 1):
            print(f"{rank}\t{hit.score:.4f}\t{printable(hit.path)}")
        if args.json:
            from deepret.fileio import atomic_write_text

            found = result.to_dict()
            atomic_write_text(args.json, json.dumps(
                {"query": printable(args.image), "box": args.box, "rerank": args.rerank,
                 **found, "hits": _shown(found["hits"])}, indent=2))
            print(f"wrote {printable(args.json)}")
        if args.figure:
            from deepret.viz import topk_figure

            topk_figure(args.image, args.box, [index.root / h.path for h in result.hits],
                        ["result"] * len(result.hits), args.figure, title=f"{args.image.name} in {index.root.name}",
                        scores=[h.score for h in result.hits])
            print(f"wrote {printable(args.figure)}")
    return 0


def cmd_verify(args) -> int:
    import sys

    from deepret.index.integrity import verify

    problems = verify(args.index)
    for line in problems:
        print(f"deepret: error: {line}", file=sys.stderr)
    if problems:
        return 2
    print(f"{args.index}: intact (catalogue, descriptors, vector file, parts and caches checked)")
    return 0


def cmd_repair(args) -> int:
    from deepret.index.integrity import repair

    report = repair(args.index, device=args.device)
    for line in report.done:
        print(f"  {line}")
    print(f"{args.index}: {'repaired' if report.done else 'nothing to repair'}; "
          f"`deepret index verify --index {args.index}` finds no problem")
    return 0
