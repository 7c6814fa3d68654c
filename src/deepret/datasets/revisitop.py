"""Revisitop-format benchmarks: `<root>/<name>/gnd_<name>.pkl` plus images in `<root>/<name>/jpg/`."""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from deepret.errors import DeepretError
from deepret.protocols import OLD_KEYS, REVISITED_KEYS, default_protocol, protocol_gnd, protocols_of

from .sources import BUILTIN_DATASETS

# The official gnd pickles have no 'query' names and many query images are named after no landmark
# ("oxford_002985", "paris_general_..."): their first 55 queries are 5 per landmark, in this order.
OFFICIAL_LANDMARKS = {
    "all_souls_000013": ["all_souls", "ashmolean", "balliol", "bodleian", "christ_church", "cornmarket",
                         "hertford", "keble", "magdalen", "pitt_rivers", "radcliffe_camera"],
    "paris_defense_000605": ["defense", "eiffel", "invalides", "louvre", "moulinrouge", "museedorsay",
                             "notredame", "pantheon", "pompidou", "sacrecoeur", "triomphe"],
}


@dataclass
class Benchmark:
    """A loaded benchmark. `root` is the folder that holds `<name>/`."""

    name: str
    root: Path
    imlist: list[str]
    qimlist: list[str]
    gnd: list[dict]

    @property
    def folder(self) -> Path:
        """The dataset folder `<root>/<name>`."""
        return self.root / self.name

    @property
    def jpg_dir(self) -> Path:
        return self.folder / "jpg"

    def image_path(self, i: int) -> Path:
        """Path of database image i."""
        return self.jpg_dir / f"{self.imlist[i]}.jpg"

    def query_path(self, q: int) -> Path:
        """Path of query image q (queries live in the same jpg/ folder)."""
        self.check_query(q)
        return self.jpg_dir / f"{self.qimlist[q]}.jpg"

    def query_bbx(self, q: int) -> tuple[float, float, float, float] | None:
        """The query's box (x1, y1, x2, y2) in pixels, or None when the ground truth has none."""
        self.check_query(q)
        bbx = self.gnd[q].get("bbx")
        if bbx is None:
            return None
        x1, y1, x2, y2 = (float(v) for v in bbx)
        return (x1, y1, x2, y2)

    @property
    def protocols(self) -> list[str]:
        """["old"] for ok/junk ground truth, else the revisited ["easy", "medium", "hard"]."""
        return protocols_of(self.gnd)

    def positives(self, q: int) -> set[int]:
        """Database indices positive for query q under its default protocol: 'ok' (old) or
        'easy' + 'hard' (revisited, Medium)."""
        self.check_query(q)
        entry = self.gnd[q]
        return set(protocol_gnd([entry], default_protocol(entry))[0]["ok"].tolist())

    def landmark_of_query(self, q: int) -> str:
        """Landmark name of query q (see `query_landmarks`)."""
        self.check_query(q)
        return self.query_landmarks[q]

    @cached_property
    def query_landmarks(self) -> list[str]:
        """Landmark of every query: the gnd 'query' name or the image name without its trailing
        _digits; for the official Oxford/Paris pickles (first query all_souls_000013 /
        paris_defense_000605, no 'query' key) queries 0-54 are 5 per landmark and each later
        (revisited) query takes the landmark of the original query it shares most positives with."""
        names = OFFICIAL_LANDMARKS.get(self.qimlist[0])
        if names is None or "query" in self.gnd[0] or len(self.qimlist) < 5 * len(names):
            return [re.sub(r"_\d+$", "", self.gnd[q].get("query") or self.qimlist[q])
                    for q in range(len(self.qimlist))]
        n0 = 5 * len(names)
        out = [names[q // 5] for q in range(n0)]
        original = [self.positives(q) for q in range(n0)]
        for q in range(n0, len(self.qimlist)):
            pos = self.positives(q)
            out.append(out[max(range(n0), key=lambda r: len(pos & original[r]))])
        return out

    def check_query(self, q: int) -> None:
        """Raise DeepretError unless q is a valid query index."""
        n = len(self.qimlist)
        if not isinstance(q, int) or isinstance(q, bool) or not 0 <= q < n:
            raise DeepretError(
                f"query index {q!r} is out of range for {self.name}: valid indices are 0..{n - 1}"
            )


class _PlainUnpickler(pickle.Unpickler):
    """Loads only builtin containers and scalars: a gnd pickle never needs anything else."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_gnd(path: Path) -> dict:
    """Read and validate a revisitop gnd pickle; DeepretError naming the file on any problem."""
    try:
        with open(path, "rb") as f:
            cfg = _PlainUnpickler(f).load()
    except FileNotFoundError as exc:
        raise DeepretError(f"ground-truth file {path} not found") from exc
    except Exception as e:  # unpickling garbage raises many different types
        raise DeepretError(
            f"cannot read ground-truth file {path} ({type(e).__name__}: {e}); "
            "replace it with the official gnd pickle (deepret download)"
        ) from e
    _validate(cfg, path)
    return cfg


def _validate(cfg: object, path: Path) -> None:
    def bad(what: str) -> DeepretError:
        return DeepretError(f"ground-truth file {path} is not in revisitop format: {what}")

    if not isinstance(cfg, dict):
        raise bad(f"expected a dict, found {type(cfg).__name__}")
    missing = [k for k in ("imlist", "qimlist", "gnd") if k not in cfg]
    if missing:
        raise bad(f"missing keys {missing}")
    if len(cfg["gnd"]) != len(cfg["qimlist"]):
        raise bad(f"{len(cfg['gnd'])} gnd entries for {len(cfg['qimlist'])} queries")
    if not cfg["gnd"]:
        raise bad("no queries")
    keys = OLD_KEYS if "ok" in cfg["gnd"][0] else REVISITED_KEYS
    for q, entry in enumerate(cfg["gnd"]):
        if not isinstance(entry, dict) or any(k not in entry for k in keys):
            raise bad(f"gnd[{q}] lacks one of the keys {list(keys)}")


def dataset_missing_hint(name: str, root: Path) -> str:
    """What to run to get dataset `name` under `root`."""
    source = BUILTIN_DATASETS.get(name)
    if source is None:
        return (
            f"check the name and root, or fetch a built-in dataset with `deepret download NAME "
            f"--root {root}` (NAME: {', '.join(BUILTIN_DATASETS)})"
        )
    return f"run `deepret download {name} --root {root}` to fetch {source.describe()}"


def load_benchmark(name: str, root: str | Path, check_images: bool = True) -> Benchmark:
    """Load `<root>/<name>/gnd_<name>.pkl`; with check_images, every listed image must exist."""
    root = Path(root)
    folder = root / name
    if not folder.is_dir():
        extra = ""
        if (root / f"gnd_{name}.pkl").is_file():
            extra = f" ({root} looks like the dataset folder itself: pass its parent as root)"
        raise DeepretError(
            f"dataset folder {folder} not found{extra}; {dataset_missing_hint(name, root)}"
        )
    gnd_path = folder / f"gnd_{name}.pkl"
    if not gnd_path.is_file():
        raise DeepretError(
            f"ground-truth file {gnd_path} not found; {dataset_missing_hint(name, root)}"
        )
    cfg = read_gnd(gnd_path)
    bench = Benchmark(name, root, list(cfg["imlist"]), list(cfg["qimlist"]), list(cfg["gnd"]))
    jpg = bench.jpg_dir
    if not jpg.is_dir() or next(jpg.glob("*.jpg"), None) is None:
        raise DeepretError(
            f"dataset root without images: {jpg} is missing or holds no .jpg files; "
            f"{dataset_missing_hint(name, root)}"
        )
    if check_images:
        _check_images(bench)
    return bench


def _check_images(bench: Benchmark) -> None:
    names = dict.fromkeys(bench.imlist + bench.qimlist)
    missing = [n for n in names if not (bench.jpg_dir / f"{n}.jpg").is_file()]
    if missing:
        raise DeepretError(
            f"{len(missing)} of {len(names)} images of {bench.name} are missing, the first is "
            f"{bench.jpg_dir / (missing[0] + '.jpg')}; complete the download "
            f"(deepret download {bench.name} --root {bench.root}) or pass check_images=False"
        )
