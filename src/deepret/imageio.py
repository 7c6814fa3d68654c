"""Reading photos: header sizes, query crops, resizing to a target shape, normalising to a tensor.

The one decoder of the package, for descriptors (`ImageSource`, `open_rgb`) and for display (figures,
thumbnails, the web app's upload checks: `open_rgb` too). Collection photos are read upright
(`upright=True` applies the EXIF orientation); benchmarks keep their raw pixels, since their boxes are
in raw coordinates. Every reader refuses images above a pixel limit (decompression bombs) and turns any
decoding failure into an `ImageError` naming the file; grayscale, CMYK, 16-bit, palette, alpha
(composited on white) and animated (first frame) images all become RGB.

HEIF/HEIC (phones' photos) is read through pillow-heif, whose decoder applies the file's own rotation
(its `irot`/`imir` boxes, as every HEIF viewer does, and resets the EXIF orientation so that it is not
applied twice): its pixels come out upright whatever `upright` says. AVIF is read by Pillow's own plugin
where Pillow was built with libavif, its rotation given as the EXIF orientation, as a JPEG's.
"""
from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, NamedTuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError, features

from deepret.errors import DeepretError

if TYPE_CHECKING:
    import torch


def _register_formats() -> tuple[str, ...]:
    """Register the HEIF opener (pillow-heif, a dependency; without it HEIC files are not read, and a
    collection counts them as not indexed); the suffixes it and Pillow's own AVIF plugin add."""
    added = []
    try:
        import pillow_heif
    except ImportError:
        pass
    else:  # embedded previews off: descriptors are of the photo's own pixels, never of its thumbnail
        pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
        added += [".heic", ".heif"]
    if "avif" in features.modules and features.check_module("avif"):
        added.append(".avif")
    return tuple(added)


# what collections index, uploads take and calibration reads
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", *_register_formats())

BBox = Sequence[float]
ImageInput = Union[str, "os.PathLike[str]", bytes, Image.Image]  # an item of an ImageSource
FileLike = Union[str, "os.PathLike[str]", IO[bytes]]  # what the file readers take: a path or an open binary file
DEFAULT_MAX_PIXELS = 100_000_000  # 100 Mpx: above any camera, below a decompression bomb
# EXIF orientation -> the transpose that makes the pixels upright (as PIL.ImageOps.exif_transpose)
_ORIENT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


# What to do about an ImageError, said of one image ("it"); lists of images say "them".
REPLACE_ADVICE = "replace or remove it"
MISSING_ADVICE = "check the dataset root or run `deepret download`"
LIMIT_ADVICE = "raise --max-pixels if you trust it"


class ImageError(DeepretError):
    """An image that cannot be used: `path`, a short `reason` (kept for skipped-file lists) and
    `advice`, what to do about it."""

    def __init__(self, path: str | Path, reason: str, advice: str = REPLACE_ADVICE) -> None:
        self.path, self.reason, self.advice = str(path), reason, advice
        super().__init__(f"image {path} {reason}: {advice}")

    def __reduce__(self):  # picklable across DataLoader workers
        return ImageError, (self.path, self.reason, self.advice)


SHOWN_BROKEN = 3  # broken images named on the first line of the error (all are listed below it)


def broken_images_message(broken: Sequence[ImageError], total: int, what: str = "images") -> str:
    """The error for unusable images: one line naming each with its reason when there are up to
    SHOWN_BROKEN; else a short first line (the count, the first names, what to do) and then every
    one of them with its reason on a line of its own."""
    n = len(broken)
    counts: dict[str, int] = {}
    for e in broken:  # each advice once, in order, said of "it" or of "them"
        counts[e.advice] = counts.get(e.advice, 0) + 1
    advice = "; or ".join(a[:-3] + " them" if k > 1 and a.endswith(" it") else a for a, k in counts.items())
    items = [f"{e.path} {e.reason}" for e in broken]
    if n <= SHOWN_BROKEN:
        return f"{n} of {total} {what} cannot be used: {'; '.join(items)}: {advice}"
    names = ", ".join(Path(e.path).name for e in broken[:SHOWN_BROKEN])
    return (f"{n} of {total} {what} cannot be used ({names} and {n - SHOWN_BROKEN} more, each with its reason "
            f"below): {advice}\n" + "\n".join(f"  {item}" for item in items))


@contextmanager
def _opened(path: FileLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Iterator[Image.Image]:
    """Image.open with ImageErrors for missing, corrupt and oversized files."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if max_pixels is not None and Image.MAX_IMAGE_PIXELS is not None:
                Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS, max_pixels // 2 + 1)  # our limit rules
            with Image.open(path) as im:
                _check_pixels(path, *im.size, max_pixels)
                yield im
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(path, "not found", MISSING_ADVICE) from None
    except Image.DecompressionBombError as exc:
        raise ImageError(path, f"is a decompression bomb ({exc})", LIMIT_ADVICE) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(path, f"is corrupt or not an image ({exc})") from None


def _check_pixels(name: object, w: int, h: int, max_pixels: int | None) -> None:
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError(name, f"has {w}x{h} = {w * h / 1e6:.3g} Mpx, above the limit of {max_pixels / 1e6:g} Mpx",
                         LIMIT_ADVICE)
    if w * h == 0:
        raise ImageError(name, "is empty (0 pixels)")


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block does not make the pixels unusable
        return 1


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB from any mode: 16/32-bit and float scaled to 8 bits, alpha composited on white."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(a * (255.0 / top), 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _turn(im: Image.Image, upright: bool) -> Image.Transpose | None:
    """The transpose that makes `im` upright (None: none needed, or `upright` off)."""
    return _ORIENT.get(_orientation(im)) if upright else None


def _upright_size(im: Image.Image, upright: bool) -> tuple[int, int]:
    w, h = im.size
    return (h, w) if upright and _orientation(im) in (5, 6, 7, 8) else (w, h)


def _turned_and_cropped(im: Image.Image, turn: Image.Transpose | None, bbx: BBox | None) -> Image.Image:
    if turn is not None:
        im = im.transpose(turn)
    return im.crop(_clip_box(bbx, *im.size)) if bbx is not None else im


def open_rgb(path: FileLike, bbx: BBox | None = None, draft_to: tuple[int, int] | None = None,
             upright: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `path` (or an open binary file) as RGB, cropped to `bbx` (x1, y1, x2, y2 in pixels) when given.

    `draft_to` (w, h) lets the JPEG decoder scale down by a power of two while staying >= that size.
    `upright` applies the EXIF orientation first (the box is then in upright coordinates).
    """
    with _opened(path, max_pixels) as im:
        turn = _turn(im, upright)
        if draft_to is not None and bbx is None:
            swap = turn in (Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE,
                            Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270)
            im.draft("RGB", draft_to[::-1] if swap else draft_to)
        im.seek(0)  # animated: the first frame
        return _turned_and_cropped(_to_rgb(im), turn, bbx)


class Header(NamedTuple):
    """What a file's header says: its format (Pillow's name, e.g. JPEG) and size (upright when asked)."""

    format: str
    width: int
    height: int


def read_header(path: FileLike, upright: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Header:
    """Format and (width, height) of `path` (or an open binary file) from its header, no pixel decoded."""
    with _opened(path, max_pixels) as im:
        return Header(im.format or "", *_upright_size(im, upright))


def image_size(path: FileLike, bbx: BBox | None = None, upright: bool = False,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the file header (or of the bbx crop), without decoding pixels."""
    _, w, h = read_header(path, upright, max_pixels)
    return _box_size(bbx, w, h)


def _box_size(bbx: BBox | None, w: int, h: int) -> tuple[int, int]:
    if bbx is None:
        return w, h
    x1, y1, x2, y2 = _clip_box(bbx, w, h)
    return x2 - x1, y2 - y1


class ImageSource:
    """Images to describe, by index (as cirtorch's ImagesFromList): each item a path, the bytes of an image
    file or a PIL image, each with an optional box (x1, y1, x2, y2 in pixels, upright ones when `upright`).

    Paths and bytes are decoded as files: the size from the header first, then the pixels, the JPEG
    decoder scaling down where it may. A PIL image as Image.open returns it (not loaded yet) is decoded
    from its file's bytes the same way, so it gives its file's descriptor; a loaded or made image is used
    as its pixels (its EXIF orientation applied when `upright`). Another loader: subclass and override
    `size` and `load`.
    """

    def __init__(self, items: Sequence[ImageInput], bbxs: Sequence[BBox | None] | None = None,
                 upright: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.items = [_as_item(x) for x in items]
        self.bbxs = list(bbxs) if bbxs is not None else [None] * len(self.items)
        if len(self.bbxs) != len(self.items):
            raise ValueError(f"{len(self.items)} images but {len(self.bbxs)} boxes: give one box (or None) per image")
        self.upright, self.max_pixels = upright, max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def name(self, i: int) -> str:
        """How errors name item i: its path, or its index for an image given in memory."""
        item = self.items[i]
        return str(item) if isinstance(item, Path) else f"#{i} (in memory)"

    def size(self, i: int) -> tuple[int, int]:
        """(width, height) of item i as it will be decoded (upright, cropped); an ImageError if unusable."""
        item, bbx = self.items[i], self.bbxs[i]
        with self._named(i):
            if not isinstance(item, Image.Image):
                return image_size(self._file(item), bbx, self.upright, self.max_pixels)
            w, h = _upright_size(item, self.upright)
            _check_pixels(self.name(i), w, h, self.max_pixels)
            return _box_size(bbx, w, h)

    def load(self, i: int, draft_to: tuple[int, int] | None = None) -> Image.Image:
        """Item i as RGB, upright and cropped (`draft_to`: as open_rgb's); an ImageError if it cannot be."""
        item, bbx = self.items[i], self.bbxs[i]
        with self._named(i):
            if not isinstance(item, Image.Image):
                return open_rgb(self._file(item), bbx, draft_to, self.upright, self.max_pixels)
            try:
                return _turned_and_cropped(_to_rgb(item), _turn(item, self.upright), bbx)
            except (OSError, ValueError) as exc:
                raise ImageError(self.name(i), f"cannot be decoded ({exc})") from None

    @staticmethod
    def _file(item: Path | bytes) -> FileLike:
        return io.BytesIO(item) if isinstance(item, bytes) else item

    @contextmanager
    def _named(self, i: int) -> Iterator[None]:
        try:
            yield
        except ImageError as exc:  # named by this source (a file object has no name of its own)
            raise ImageError(self.name(i), exc.reason, exc.advice) from None


def _as_item(x: ImageInput) -> Path | bytes | Image.Image:
    if isinstance(x, Image.Image):
        fp = getattr(x, "fp", None)
        if fp is not None and getattr(x, "tile", None):  # opened, not decoded: decode its file's bytes
            try:
                fp.seek(0)
                return fp.read()
            except (OSError, ValueError):  # closed: decoding it says what is wrong
                pass
        return x
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x)
    return Path(x)


def _clip_box(bbx: BBox, w: int, h: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (int(round(v)) for v in bbx)
    x1, y1 = max(0, min(x1, w - 1)), max(0, min(y1, h - 1))
    return x1, y1, max(x1 + 1, min(x2, w)), max(y1 + 1, min(y2, h))


def target_shape(w: int, h: int, longest: int, round_to: int = 1) -> tuple[int, int]:
    """(height, width) with the longest side `longest` and the other side rounded to `round_to` px."""
    if w >= h:
        short = max(round_to, int(round(h * longest / w / round_to)) * round_to)
        return short, longest
    short = max(round_to, int(round(w * longest / h / round_to)) * round_to)
    return longest, short


def to_tensor(im: Image.Image, shape: tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Resize (bilinear, antialiased) to `shape` = (H, W) and normalise to a (3, H, W) float tensor.

    In numpy, as one multiply-add per channel straight from the uint8 pixels (2-2.5x faster than
    four float passes, bench/decode_cost.py): it runs in the decoding thread beside the forward pass, where a torch op would
    start a second OpenMP team on the cores the forward pass is using."""
    h, w = shape
    if im.size != (w, h):
        im = im.resize((w, h), Image.BILINEAR)
    std32 = np.asarray(std, dtype=np.float32)
    scale = (1.0 / (np.float32(255.0) * std32))[:, None, None]
    shift = (-np.asarray(mean, dtype=np.float32) / std32)[:, None, None]
    x = np.empty((3, h, w), dtype=np.float32)
    np.multiply(np.asarray(im).transpose(2, 0, 1), scale, out=x)  # (x / 255 - mean) / std
    x += shift
    import torch  # here: reading headers and suffixes (deepret index info) loads no torch

    return torch.from_numpy(x)
