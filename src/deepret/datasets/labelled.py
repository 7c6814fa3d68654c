"""Class-labelled training images: a folder per class, a GLDv2 CSV, or a `path label` list file."""

from __future__ import annotations

import csv
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from deepret.errors import DeepretError

LIST_SUFFIXES = (".txt", ".lst")
SOURCES_HINT = "give a folder of class sub-folders, a GLDv2 .csv or a .txt/.lst file of `path label` lines"


@dataclass
class LabelledImages:
    """Images with integer labels: `labels[i]` indexes `classes`; `source` names where they came from."""

    paths: list[Path]
    labels: list[int]
    classes: list[str]
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Iterable[int]) -> LabelledImages:
        """The images at `indices`; the class list is kept whole, so labels stay comparable."""
        idx = list(indices)
        return LabelledImages([self.paths[i] for i in idx], [self.labels[i] for i in idx],
                              list(self.classes), self.source)

    def compact(self) -> LabelledImages:
        """Drop classes without images and renumber the labels 0..C-1, keeping the class order."""
        used = sorted(set(self.labels))
        new = {old: i for i, old in enumerate(used)}
        return LabelledImages(list(self.paths), [new[label] for label in self.labels],
                              [self.classes[i] for i in used], self.source)

    def by_class(self) -> dict[int, list[int]]:
        """Label -> indices of its images, for the labels that have images, in label order."""
        groups: dict[int, list[int]] = {label: [] for label in sorted(set(self.labels))}
        for i, label in enumerate(self.labels):
            groups[label].append(i)
        return groups

    def counts(self) -> dict[str, int]:
        """Class name -> number of images, for the classes that have images, in class order."""
        return {self.classes[label]: len(ix) for label, ix in self.by_class().items()}

    def require_classes(self, n: int = 2) -> None:
        """Raise a DeepretError unless at least `n` classes have images (classification needs 2+)."""
        present = [self.classes[label] for label in self.by_class()]
        if len(present) < n:
            names = ", ".join(present) or "none"
            raise DeepretError(f"{self.source or 'dataset'} has {len(present)} class(es) ({names}): training"
                               f" needs at least {n}; add one sub-folder (or label) per landmark")


def load_labelled(source: str | Path, root: str | Path | None = None) -> LabelledImages:
    """Load labelled images from a folder, a CSV or a list file (the layout is chosen by `source`).

    * folder: one sub-folder per class holding photos (deepret.imageio.PHOTO_SUFFIXES, any case); deeper folders are ignored.
    * .csv (Google Landmarks v2): `id,landmark_id[,...]` (train.csv) or `landmark_id,images` with
      space-separated ids (train_clean.csv); images at `<root>/<a>/<b>/<c>/<id>.jpg` (a, b, c = the
      id's first three characters), `root` defaulting to the CSV's own folder.
    * .txt/.lst: `path label` lines (label = last word, any string; blank and `#` lines skipped),
      relative paths resolved against `root`, defaulting to the list file's folder.
    Classes are sorted (numeric names numerically). Listed files must exist; corrupt images are not
    checked here (the trainer skips and reports them).
    """
    src = Path(source)
    if not src.exists():
        raise DeepretError(f"dataset source {src} not found: {SOURCES_HINT}")
    base = Path(root) if root is not None else src.parent
    if src.is_dir():
        pairs = _from_folder(src)
    elif src.suffix.lower() in (".csv", *LIST_SUFFIXES):
        pairs = (_from_csv if src.suffix.lower() == ".csv" else _from_list)(src, base)
        _check_exist(pairs, src, root)
    else:
        raise DeepretError(f"unsupported dataset source {src}: {SOURCES_HINT}")
    classes = sorted({name for _, name in pairs}, key=_class_key)
    index = {name: i for i, name in enumerate(classes)}
    return LabelledImages([p for p, _ in pairs], [index[name] for _, name in pairs], classes, str(src))


def split(data: LabelledImages, val_fraction: float, seed: int = 0,
          by: str = "image") -> tuple[LabelledImages, LabelledImages]:
    """Reproducible (train, val) split; both keep the full class list.

    by="image": stratified per class, about `val_fraction` of all images (at least one when > 0) go to
    val, and every class with 2+ images keeps at least one in train (1-image classes stay in train).
    by="class": about `val_fraction` of the classes (at least one, never all) go to val whole.
    """
    if not 0 <= val_fraction < 1:
        raise DeepretError(f"validation fraction {val_fraction} must be in [0, 1), e.g. 0.1")
    rng = random.Random(seed)
    groups = data.by_class()
    if by == "class":
        labels = list(groups)
        rng.shuffle(labels)
        k = min(len(labels) - 1, max(int(val_fraction > 0), round(len(labels) * val_fraction)))
        val = [i for label in labels[:max(k, 0)] for i in groups[label]]
    elif by == "image":
        val = _stratified(groups, val_fraction, rng)
    else:
        raise DeepretError(f"split by {by!r} is unknown: use 'image' or 'class'")
    in_val = set(val)
    return data.subset(i for i in range(len(data)) if i not in in_val), data.subset(sorted(in_val))


def rankable(data: LabelledImages) -> tuple[LabelledImages, list[str]]:
    """Drop classes with fewer than 2 images (no query-positive pair): (kept data, compacted; dropped names)."""
    groups = data.by_class()
    dropped = [data.classes[label] for label, ix in groups.items() if len(ix) < 2]
    keep = sorted(i for ix in groups.values() if len(ix) >= 2 for i in ix)
    return data.subset(keep).compact(), dropped


def _stratified(groups: dict[int, list[int]], fraction: float, rng: random.Random) -> list[int]:
    """Validation indices: per-class floor quotas, topped up by largest remainder to round(N * fraction)."""
    total = sum(len(ix) for ix in groups.values())
    target = max(1, round(total * fraction)) if fraction > 0 else 0
    shuffled = {label: rng.sample(ix, len(ix)) for label, ix in groups.items()}
    quota = {label: min(len(ix) - 1, int(len(ix) * fraction + 1e-9)) for label, ix in groups.items()}
    room = [label for label, ix in groups.items() if quota[label] < len(ix) - 1]
    room.sort(key=lambda label: (quota[label] - len(groups[label]) * fraction, rng.random()))
    for label in room[:max(0, target - sum(quota.values()))]:
        quota[label] += 1
    return [i for label, ix in shuffled.items() for i in ix[:quota[label]]]


def _class_key(name: str) -> tuple[int, int, str]:
    return (0, int(name), name) if name.isdigit() else (1, 0, name)  # numeric names (GLDv2 ids) first


def _from_folder(folder: Path) -> list[tuple[Path, str]]:
    from deepret.imageio import PHOTO_SUFFIXES  # here: `deepret download` (this package) loads no torch

    pairs = [(f, sub.name)
             for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
             for f in sorted(sub.iterdir()) if f.is_file() and f.suffix.lower() in PHOTO_SUFFIXES]
    if not pairs:
        raise DeepretError(f"empty folder: {folder} has no class sub-folders with photos (JPEG, PNG, HEIC, ...);"
                           " put each landmark's photos in <folder>/<landmark>/")
    return pairs


def _from_csv(path: Path, root: Path) -> list[tuple[Path, str]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = [row for row in csv.reader(fh) if any(cell.strip() for cell in row)]
    header = [c.strip() for c in rows[0]] if rows else []
    col = {name: i for i, name in enumerate(header)}
    if "id" in col and "landmark_id" in col:
        items = [(row, [row[col["id"]]]) for row in rows[1:] if len(row) == len(header)]
    elif "landmark_id" in col and "images" in col:
        items = [(row, row[col["images"]].split()) for row in rows[1:] if len(row) == len(header)]
    else:
        raise DeepretError(f"{path}: CSV columns {','.join(header) or '(none)'} are not a GLDv2 layout;"
                           " expected id,landmark_id (train.csv) or landmark_id,images (train_clean.csv)")
    if len(items) != len(rows) - 1:
        raise DeepretError(f"{path}: {len(rows) - 1 - len(items)} row(s) do not have the {len(header)}"
                           f" columns of the header {','.join(header)}; fix or remove them")
    pairs = [(i.strip(), row[col["landmark_id"]].strip()) for row, ids in items for i in ids]
    if not pairs:
        raise DeepretError(f"empty CSV: {path} lists no images")
    short = [i for i, _ in pairs if len(i) < 3]
    if short:
        raise DeepretError(f"{path}: image id {short[0]!r} is too short for the <a>/<b>/<c>/<id>.jpg layout")
    return [(root / i[0] / i[1] / i[2] / f"{i}.jpg", label) for i, label in pairs]


def _from_list(path: Path, root: Path) -> list[tuple[Path, str]]:
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise DeepretError(f"{path}:{n}: expected `path label`, got {line!r}")
        pairs.append((root / parts[0], parts[1]))
    if not pairs:
        raise DeepretError(f"empty list: {path} has no `path label` lines")
    return pairs


def _check_exist(pairs: list[tuple[Path, str]], source: Path, root: str | Path | None) -> None:
    missing = [p for p, _ in pairs if not p.is_file()]
    if missing:
        where = f"root {root}" if root is not None else f"root (default {source.parent}); pass root="
        raise DeepretError(f"missing image {missing[0]}: {len(missing)} of {len(pairs)} images listed in"
                           f" {source} not found; check the {where}")
