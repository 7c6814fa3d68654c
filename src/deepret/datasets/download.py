"""Download a built-in benchmark into the revisitop layout `<root>/<name>/{gnd_<name>.pkl,jpg/}`.

Like revisitop's download.py: the image archives come from the Oxford VGG site, the ground truth
from cmp.felk.cvut.cz. With `base_url`, every file is fetched from `<base_url>/<file name>`
instead (e.g. `<base_url>/oxbuild_images-v1.tgz`, `<base_url>/gnd_oxford5k.pkl`): put all the
files of a mirror in one folder. Interrupted downloads resume; finished steps are skipped; an
archive is deleted once extracted. roxford5k/oxford5k (and rparis6k/paris6k) share images: when
the sibling's images are already extracted under the same root they are hard-linked, not fetched.
Checksums: the gnd files are verified against KNOWN_SHA256; the image archives have no known
checksum (None: not verified) unless the caller passes them in `checksums`.
"""

from __future__ import annotations

from pathlib import Path

from deepret.errors import DeepretError
from deepret.fileio import sha256_file

from .archive import extract_images, extracted_names, link_images, write_marker
from .fetch import fetch
from .revisitop import load_benchmark
from .sources import BUILTIN_DATASETS, KNOWN_SHA256, DatasetSource


def download(
    name: str,
    root: str | Path,
    base_url: str | None = None,
    progress: bool = True,
    checksums: dict[str, str] | None = None,
) -> Path:
    """Fetch images and ground truth of `name` into `<root>/<name>`; returns that folder.

    `checksums` maps file names (e.g. "oxbuild_images-v1.tgz") to sha256, adding to or
    overriding KNOWN_SHA256. The result is checked with load_benchmark before returning.
    """
    source = BUILTIN_DATASETS.get(name)
    if source is None:
        raise DeepretError(
            f"unknown dataset {name!r}: deepret download knows {', '.join(BUILTIN_DATASETS)}"
        )
    root = Path(root)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    sums = {**KNOWN_SHA256, **(checksums or {})}
    for archive in source.archives:
        _get_images(source, archive, root, _url(base_url, source.images_url, archive), sums, progress)
    _get_gnd(folder / source.gnd_file, _url(base_url, source.gnd_url, source.gnd_file), sums, progress)
    load_benchmark(name, root, check_images=True)
    return folder


def _url(base_url: str | None, default_dir: str, file_name: str) -> str:
    return f"{(base_url or default_dir).rstrip('/')}/{file_name}"


def _get_images(
    source: DatasetSource, archive: str, root: Path, url: str, sums: dict, progress: bool
) -> None:
    jpg = root / source.name / "jpg"
    if extracted_names(jpg, archive) is not None:
        return
    sibling = root / source.shares_images_with / "jpg"
    names = extracted_names(sibling, archive)
    if names is not None:
        link_images(sibling, names, jpg)
        write_marker(jpg, archive, names)
        return
    path = root / source.name / archive
    if not path.is_file():  # a finished download whose extraction was interrupted is reused
        fetch(url, path, sums.get(archive), progress)
    extract_images(path, jpg)
    path.unlink()


def _get_gnd(path: Path, url: str, sums: dict, progress: bool) -> None:
    expected = sums.get(path.name)
    if path.is_file() and (expected is None or sha256_file(path) == expected.lower()):
        return
    fetch(url, path, expected, progress)
