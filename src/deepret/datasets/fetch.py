"""Fetch one file over HTTP(S) with resume (`<file>.part` + Range), a progress bar and sha256 check."""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from deepret.errors import DeepretError
from deepret.fileio import sha256_file

CHUNK = 1 << 20
TIMEOUT_S = 60


def fetch(url: str, dest: Path, sha256: str | None = None, progress: bool = True) -> None:
    """Download url to dest. An interrupted download leaves `dest.part`, which the next call
    continues with a Range request (restarting when the server ignores it). With sha256 given the
    result is verified; on mismatch nothing is left in place and DeepretError says so."""
    part = dest.with_name(dest.name + ".part")
    try:
        _download(url, part, progress)
    except urllib.error.HTTPError as e:
        raise DeepretError(
            f"download of {url} failed: HTTP {e.code} {e.reason}; check the URL or use --base-url "
            "to point to a mirror"
        ) from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise DeepretError(
            f"download of {url} failed ({reason}); check the network and rerun to resume, "
            "or use --base-url to point to a mirror"
        ) from e
    if sha256 is not None:
        actual = sha256_file(part)
        if actual != sha256.lower():
            part.unlink()
            raise DeepretError(
                f"checksum mismatch for {dest.name} from {url}: expected sha256 {sha256}, got "
                f"{actual}; the file was removed, rerun the download (or use --base-url for "
                "another mirror, or pass the right checksum)"
            )
    os.replace(part, dest)


def _download(url: str, part: Path, progress: bool) -> None:
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "deepret"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not offset:
            raise
        part.unlink()  # range not satisfiable: the .part is not a prefix of this file, restart
        _download(url, part, progress)
        return
    with response:
        resumed = offset and response.status == 206 and _range_start(response) == offset
        if not resumed:
            offset = 0  # the server ignored Range (or sent another range): start over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length else None
        with open(part, "ab" if resumed else "wb") as f, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name.removesuffix(".part"), disable=not progress,
        ) as bar:
            for block in iter(lambda: response.read(CHUNK), b""):
                f.write(block)
                bar.update(len(block))
        if total is not None and part.stat().st_size != total:
            raise OSError(f"connection closed after {part.stat().st_size} of {total} bytes")


def _range_start(response) -> int | None:
    """First byte of a 206 response, from `Content-Range: bytes START-END/TOTAL`."""
    value = response.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None
