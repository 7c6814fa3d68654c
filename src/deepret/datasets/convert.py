"""Convert the official Oxford/Paris ground-truth txt files into a revisitop gnd dict."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

from deepret.errors import DeepretError
from deepret.fileio import atomic_open

QUERY_PREFIX = "oxc1_"  # Oxford query files name images "oxc1_<image>"; Paris ones have no prefix
PICKLE_PROTOCOL = 3  # the protocol of the official revisitop gnd files


def convert_gt(gt_dir: str | Path, imlist: Sequence[str] | str | Path) -> dict:
    """Build {'qidx', 'gnd', 'imlist', 'qimlist'} (old protocol) from `<query>_{good,ok,junk,query}.txt`.

    `imlist` fixes the database order: a list of names, a text file with one name per line, or a
    `jpg/` folder (its *.jpg stems, sorted). Queries come in sorted query-file order; `ok` is
    good+ok and `junk` is junk, as sorted, deduplicated indices into imlist.
    """
    gt_dir = Path(gt_dir)
    names = _read_imlist(imlist)
    index = {n: i for i, n in enumerate(names)}
    query_files = sorted(gt_dir.glob("*_query.txt"))
    if not query_files:
        raise DeepretError(f"no *_query.txt files in {gt_dir}: pass the folder of the official gt txt files")
    qimlist, qidx, gnd = [], [], []
    for qfile in query_files:
        qname, bbx = _read_query(qfile)
        qidx.append(_lookup(index, qname, qfile))
        qimlist.append(names[qidx[-1]])  # the same str object: pickles byte-identical to the official file
        stem = qfile.name[: -len("_query.txt")]
        ok = _indices(gt_dir, stem, ("good", "ok"), index)
        junk = _indices(gt_dir, stem, ("junk",), index)
        gnd.append({"bbx": bbx, "ok": ok, "junk": junk})
    return {"qidx": qidx, "gnd": gnd, "imlist": names, "qimlist": qimlist}


def write_gnd(cfg: dict, path: str | Path) -> None:
    """Pickle cfg to path atomically (deepret.fileio).

    Uses pickle protocol 3 like the official files: convert_gt's output on the official gt files
    is written byte-identical to gnd_oxford5k.pkl / gnd_paris6k.pkl.
    """
    with atomic_open(path) as f:
        pickle.dump(cfg, f, protocol=PICKLE_PROTOCOL)


def _read_imlist(imlist: Sequence[str] | str | Path) -> list[str]:
    if not isinstance(imlist, (str, Path)):
        return list(imlist)
    p = Path(imlist)
    if p.is_dir():
        names = sorted(f.stem for f in p.glob("*.jpg"))
        if not names:
            raise DeepretError(f"image folder {p} holds no .jpg files: pass the dataset's jpg/ folder")
        return names
    if not p.is_file():
        raise DeepretError(f"image list {p} not found: pass a list of names, a text file or a jpg/ folder")
    return [name.removesuffix(".jpg") for name in _lines(p)]


def _lines(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DeepretError(f"cannot read {path} ({e}): check the file") from e


def _read_query(path: Path) -> tuple[str, list[float | int]]:
    fields = " ".join(_lines(path)).split()
    try:
        if len(fields) != 5:
            raise ValueError(f"expected 5 fields, found {len(fields)}")
        bbx = [_number(v) for v in fields[1:]]
    except ValueError as e:
        raise DeepretError(f"query file {path} is not '<image> x1 y1 x2 y2' ({e})") from e
    return fields[0].removeprefix(QUERY_PREFIX), bbx


def _number(text: str) -> float | int:
    """'136.5' -> 136.5, '78' and '130.000000' -> int, as the official pickles store them."""
    value = float(text)
    return int(value) if value.is_integer() else value


def _indices(gt_dir: Path, stem: str, kinds: tuple[str, ...], index: dict[str, int]) -> list[int]:
    found: set[int] = set()
    for kind in kinds:
        path = gt_dir / f"{stem}_{kind}.txt"
        if not path.is_file():
            raise DeepretError(f"ground-truth file {path} not found: the gt folder is incomplete")
        found.update(_lookup(index, name, path) for name in _lines(path))
    return sorted(found)


def _lookup(index: dict[str, int], name: str, path: Path) -> int:
    try:
        return index[name]
    except KeyError as exc:
        raise DeepretError(
            f"image {name!r} listed in {path} is not in the image list: pass the dataset's full image list"
        ) from exc
