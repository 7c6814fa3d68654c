"""Batched, multi-scale descriptor extraction.

`extract` takes image files, their bytes or decoded PIL images (an `ImageSource`) and always returns an
`Extraction`: the descriptors and the images that could not be decoded. Images whose resized shapes
are equal are stacked into one batch (the shorter side is rounded to
`round_to` pixels so that images of similar aspect ratio share a shape); a DataLoader decodes
them in worker processes, or in a thread of this process when there are none, while the network
runs. The network runs compiled by the settings' engine (deepret.engines: OpenVINO on the CPU, torch
on CUDA) in their precision (deepret.precision: fp32, bf16/fp16, int8 with OpenVINO; `auto` picks per
backbone, device and engine). Multi-scale descriptors are combined by the GeM
power mean and L2-normalised; flip averaging adds the mirrored image.
"""
from __future__ import annotations

import queue
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from deepret.engines import Engine, compile_network
from deepret.engines.calibration import calibration_photos
from deepret.errors import DeepretError
from deepret.imageio import (
    DEFAULT_MAX_PIXELS,
    BBox,
    ImageError,
    ImageInput,
    ImageSource,
    broken_images_message,
    target_shape,
    to_tensor,
)
from deepret.models import RetrievalNet, l2n
from deepret.precision import parse_engine, parse_precision, resolve_engine, resolve_precision
from deepret.runtime import default_device, default_workers, tune_allocator


@dataclass(frozen=True)
class ExtractSettings:
    """How images become descriptors; part of the feature cache key. `size` None: the network's
    default evaluation size (see `resolve_settings`)."""

    size: int | None = None
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    round_to: int = 32
    precision: str = "auto"  # auto, fp32, bf16 or fp16 (deepret.precision)
    upscale: bool = False  # True: enlarge an image smaller than `size`; False keeps its size (cirtorch's `thumbnail`)
    engine: str = "auto"  # auto, torch or openvino (deepret.engines); stored settings without it: torch
    calibration: str | None = None  # int8: a folder (or photo) of calibration photos, not the ones evaluated
    calibration_id: str | None = None  # their identity (names, sizes, mtimes), set by resolve_settings

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", parse_precision(self.precision))
        object.__setattr__(self, "engine", parse_engine(self.engine))
        if self.size is not None and self.size <= 0:
            raise DeepretError(f"image size {self.size} must be a positive number of pixels, e.g. 512")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise DeepretError(f"scales {self.scales} must be positive numbers, e.g. (1, 0.707, 1.414)")
        if self.round_to <= 0:
            raise DeepretError(f"round_to {self.round_to} must be a positive number of pixels")

    def to_dict(self) -> dict:
        """JSON-ready (scales a list), as caches, indexes and reports store the settings."""
        return {**asdict(self), "scales": list(self.scales)}

    @classmethod
    def from_dict(cls, stored: dict) -> ExtractSettings:
        """Settings read back from `to_dict`'s output; a field not stored (added to ExtractSettings
        since) has the default it had when it was written (engine: torch, the only one then; upscale:
        True, the default until 2026-12-02)."""
        return cls(**{"engine": "torch", "upscale": True, **stored, "scales": tuple(stored["scales"])})


def resolve_settings(net: RetrievalNet, settings: ExtractSettings | None = None,
                     device: torch.device | str | None = None) -> ExtractSettings:
    """`settings` with every unset field filled in for `net` on `device` (what caches and indexes are
    keyed by): size None -> the net's default size, engine auto -> openvino on the CPU, torch on
    CUDA, precision auto -> the precision it means there, int8's calibration photos -> their identity."""
    settings = settings or ExtractSettings()
    device = torch.device(device) if device is not None else default_device()
    engine = resolve_engine(settings.engine, device, settings.precision)
    precision = resolve_precision(settings.precision, net.meta.get("backbone"), device, engine=engine)
    calibration, calibration_id = None, None
    if precision == "int8":
        if not settings.calibration:
            raise DeepretError("precision int8 needs calibration photos (ExtractSettings.calibration): a folder "
                               "of photos that are not the ones evaluated, e.g. ../shared/data/landmarks-mini")
        calibration = str(Path(settings.calibration).resolve())
        calibration_id = _calibration_identity(calibration)
    return replace(settings, size=settings.size if settings.size is not None else net.default_size,
                   engine=engine, precision=precision, calibration=calibration, calibration_id=calibration_id)


def _calibration_identity(source: str) -> str:
    """sha1 (16 hex) of the calibration photos' names, sizes and modification times."""
    import hashlib

    h = hashlib.sha1()
    folder = Path(source).is_dir()
    for photo in calibration_photos(source):
        st = photo.stat()
        name = photo.relative_to(source) if folder else photo.name if photo == Path(source) else photo
        h.update(f"{name}|{st.st_size}|{st.st_mtime_ns}\n".encode(errors="surrogateescape"))
    return h.hexdigest()[:16]


def compile_for(net: RetrievalNet, requested: ExtractSettings | None, settings: ExtractSettings,
                device: torch.device) -> Engine:
    """The engine that runs `net` under resolved `settings`; `requested` engine auto keeps
    compile_network's fallback to torch where OpenVINO cannot convert the network."""
    engine = "auto" if (requested or ExtractSettings()).engine == "auto" else settings.engine
    calibration = [settings.calibration] if settings.calibration else None
    return compile_network(net, engine, settings.precision, device, calibration=calibration,
                           calibration_size=settings.size, calibration_id=settings.calibration_id)


class _Images(Dataset):
    """Decodes item i of `source` at shape (H, W): keys are (i, H, W) tuples given by the batch sampler."""

    def __init__(self, source: ImageSource, mean, std) -> None:
        self.source, self.mean, self.std = source, mean, std

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int, int]):
        i, h, w = key
        try:
            im = self.source.load(i, draft_to=(w, h))
        except ImageError as exc:  # travels to the main process as a value (its reason)
            return i, exc.reason
        return i, to_tensor(im, (h, w), self.mean, self.std)


@dataclass
class Extraction:
    """What `extract` returns: `vectors` (N, D) float32, one row per image in order (zeros for a failed
    one), and `failed` {index: reason} of the images that could not be used (empty with on_error="raise")."""

    vectors: np.ndarray
    failed: dict[int, str] = field(default_factory=dict)

    def described(self) -> np.ndarray:
        """The rows of the images that were described, in order (the failed ones left out)."""
        return self.vectors[[i for i in range(len(self.vectors)) if i not in self.failed]]


def _collate(items):
    """(indices, stacked tensors, {index: reason}) of a batch: a decoding error drops only its image."""
    ok = [(i, x) for i, x in items if not isinstance(x, str)]
    errors = {i: x for i, x in items if isinstance(x, str)}
    batch = torch.from_numpy(np.stack([x.numpy() for _, x in ok])) if ok else None  # numpy: no OpenMP team
    return [i for i, _ in ok], batch, errors


def plan_batches(sizes: Sequence[tuple[int, int]], longest: int | None, round_to: int,
                 max_pixels: int, fixed: int | None = None, upscale: bool = True,
                 scale: float = 1.0) -> list[list[tuple[int, int, int]]]:
    """Group items by resized shape (longest side `longest` x `scale`); each batch holds at most
    `max_pixels` pixels (at least one image). `upscale` False: an image whose longest side is below
    `longest` keeps its own, times `scale` (as cirtorch's multi-scale resizes its thumbnail)."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (w, h) in enumerate(sizes):
        if fixed:
            shape = (fixed, fixed)
        else:
            side = int(round((longest if upscale else min(longest, max(w, h))) * scale))
            shape = target_shape(w, h, side, round_to)
        groups[shape].append(i)
    batches = []
    for (h, w), items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        per_batch = max(1, max_pixels // (h * w))
        for start in range(0, len(items), per_batch):
            batches.append([(i, h, w) for i in items[start:start + per_batch]])
    return batches


@torch.inference_mode()
def extract(net: RetrievalNet, images: Sequence[ImageInput] | ImageSource, bbxs: Sequence[BBox | None] | None = None,
            settings: ExtractSettings | None = None, device: torch.device | str | None = None,
            workers: int | None = None, max_batch_pixels: int = 4 * 1024 * 1024,
            desc: str = "extract", progress: bool = True, on_error: str = "raise", upright: bool = False,
            max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Extraction:
    """Descriptors of `images` (paths, bytes of image files or PIL images; see ImageSource), cropped to
    `bbxs` where given; an ImageSource brings its own boxes, `upright` and `max_pixels`.

    Every image that can be decoded is; the broken ones (missing, corrupt, above `max_pixels`) are
    collected. on_error="raise" (default) then raises one DeepretError naming them; "skip" returns them
    in `Extraction.failed` {index: reason}, with zero rows for them. `upright` applies the EXIF
    orientation (collection photos; boxes are then upright too).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    if isinstance(images, ImageSource):
        if bbxs is not None:
            raise ValueError("an ImageSource holds its own boxes: give them to it, not to extract")
        source = images
    else:
        source = ImageSource(images, bbxs, upright=upright, max_pixels=max_pixels)
    device = torch.device(device) if device is not None else default_device()
    requested, settings = settings, resolve_settings(net, settings, device)
    workers = default_workers() if workers is None else workers
    if device.type == "cpu":
        tune_allocator()
    engine = compile_for(net, requested, settings, device)
    broken: dict[int, ImageError] = {}  # each with its reason and advice (e.g. raise --max-pixels)
    sizes: dict[int, tuple[int, int]] = {}
    for i in range(len(source)):
        try:
            sizes[i] = source.size(i)
        except ImageError as exc:
            broken[i] = exc
    usable = sorted(sizes)
    mean, std = net.meta["input"]["mean"], net.meta["input"]["std"]
    msp = _multiscale_power(net) if len(settings.scales) > 1 else 1.0
    acc = torch.zeros(len(source), net.dim, dtype=torch.float64)
    dataset = _Images(source, mean, std)
    total = len(source) * len(settings.scales)
    with tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        bar.update(len(broken) * len(settings.scales))
        for scale in settings.scales:
            batches = plan_batches([sizes[i] for i in usable], settings.size, settings.round_to, max_batch_pixels,
                                   fixed=net.input_size, upscale=settings.upscale, scale=scale)
            batches = [[(usable[j], h, w) for j, h, w in batch] for batch in batches]
            with closing(_loader(dataset, batches, workers, device.type == "cuda")) as loader:
                for idx, x, errors in loader:
                    broken.update({i: ImageError(source.name(i), reason) for i, reason in errors.items()})
                    if idx:
                        v = _forward(engine, x.to(device, non_blocking=True), settings.flip)
                        acc[idx] += v.double().cpu().pow(msp) if msp != 1.0 else v.double().cpu()
                    bar.update(len(idx) + len(errors))
    if broken and on_error == "raise":
        raise DeepretError(broken_images_message([broken[i] for i in sorted(broken)], len(source)))
    acc /= len(settings.scales)
    if msp != 1.0:
        acc = acc.pow(1.0 / msp)
    out = l2n(acc).float().numpy()
    out[sorted(broken)] = 0.0
    return Extraction(out, {i: broken[i].reason for i in sorted(broken)})


DECODE_AHEAD = 2  # batches the decoding thread may hold ready


def _loader(dataset: Dataset, batches: list, workers: int, pin: bool) -> Iterator:
    """(indices, batch, {index: reason}) per batch: decoded by `workers` processes, or by one
    thread of this process when workers is 0 (PIL and numpy release the GIL, so decoding overlaps
    the forward pass). Close the iterator to stop the decoding early."""
    if not workers:
        yield from _decoded_in_thread(dataset, batches, DECODE_AHEAD)
        return
    yield from DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=_collate,
                          pin_memory=pin, prefetch_factor=4)


_DONE = object()


def _decoded_in_thread(dataset: Dataset, batches: list, ahead: int) -> Iterator:
    """Collated batches decoded by a background thread into a queue of `ahead` batches. An
    exception of the thread is raised here; closing the generator stops and joins the thread."""
    ready: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def decode() -> None:
        try:
            for batch in batches:
                if not put(_collate([dataset[key] for key in batch])):
                    return
        except BaseException as exc:
            put(exc)
            return
        put(_DONE)

    thread = threading.Thread(target=decode, name="deepret-decode", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _forward(engine: Engine, x: torch.Tensor, flip: bool) -> torch.Tensor:
    v = engine(x)
    return l2n(v + engine(x.flip(-1))) if flip else v


def _multiscale_power(net: RetrievalNet) -> float:
    """GeM power mean over scales with the network's p (cirtorch); 1 (plain mean) when descriptors
    may be negative (whitening) or the head is not GeM."""
    p = net.gem_p()
    return p if p is not None and net.whiten is None else 1.0
