"""Downloads into a cache folder: progress bar, checksum, resumable and never half-taken.

A file is written to ``<name>.part`` and renamed to ``<name>`` only once it is complete (the
length the server announced) and its checksum matches, so an interrupted transfer never passes
for a whole file; the next call resumes the ``.part`` with an HTTP range request where the server
supports it and starts over where it does not. Offline, the error names the URL and how to pass
a local copy instead (``data.path=...``).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "~/.cache/recozoo"
_CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """A download failed; the message names the URL and how to use a local copy instead."""


def cache_folder(cache_dir: str | os.PathLike | None, *parts: str) -> Path:
    """``<cache_dir>/<parts...>``, created; ``cache_dir`` None means ``$RECOZOO_CACHE`` or
    ``~/.cache/recozoo`` (the default of ``paths.cache_dir``)."""
    root = cache_dir if cache_dir is not None else os.environ.get("RECOZOO_CACHE",
                                                                  DEFAULT_CACHE_DIR)
    folder = Path(root).expanduser().joinpath(*parts)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def file_md5(path: Path) -> str:
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, folder: str | os.PathLike, *, md5: str | None = None,
             filename: str | None = None, hint: str = "data.path=<local copy>",
             timeout: float = 30.0, progress: bool = True) -> Path:
    """Download ``url`` into ``folder`` (kept there: a second call costs nothing).

    Args:
        url: http(s) or file URL.
        folder: the cache folder.
        md5: expected hex MD5; a mismatch deletes the download and raises.
        filename: the name to save as (default: the URL's last path segment).
        hint: how a user passes a local copy instead, quoted in errors.
        timeout: seconds to wait for the server.
        progress: show a tqdm progress bar.

    Returns:
        The path of the complete file.

    Raises:
        DownloadError: offline, HTTP error, interrupted transfer or checksum mismatch.
    """
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (filename or url.rstrip("/").rsplit("/", 1)[-1])
    if target.exists():
        if md5 is None or file_md5(target) == md5:
            return target
        log.warning("%s does not match md5 %s: downloading it again", target, md5)
        target.unlink()
    partial = target.with_name(target.name + ".part")
    offset = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "recozoo"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the .part is already complete
            return _finish(partial, target, url, md5, hint)
        raise DownloadError(f"could not download {url}: HTTP {error.code} {error.reason}. "
                            f"Download it yourself and pass {hint}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"could not download {url} ({reason}); offline? Download it on a "
                            f"connected machine and pass {hint}") from None
    with response:
        resumed = offset and response.status == 206
        if offset and not resumed:
            log.info("%s: the server does not resume; starting over", url)
            offset = 0
        length = response.headers.get("Content-Length")
        expected = int(length) + offset if length is not None else None
        received = offset
        mode = "ab" if resumed else "wb"
        bar = tqdm(total=expected, initial=offset, unit="B", unit_scale=True,
                   desc=target.name, disable=not progress, leave=False)
        try:
            with partial.open(mode) as handle, bar:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    handle.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as error:
            raise DownloadError(
                f"download of {url} was interrupted after {received:,} bytes ({error}); the "
                f"part is kept in {partial} and the next run resumes it") from None
    if expected is not None and received < expected:
        raise DownloadError(
            f"download of {url} was interrupted after {received:,} of {expected:,} bytes; the "
            f"part is kept in {partial} and the next run resumes it")
    return _finish(partial, target, url, md5, hint)


def _finish(partial: Path, target: Path, url: str, md5: str | None, hint: str) -> Path:
    if md5 is not None:
        found = file_md5(partial)
        if found != md5:
            partial.unlink()
            raise DownloadError(f"{url}: md5 {found} does not match the expected {md5} (the "
                                f"download was deleted). Retry, or pass {hint}")
    partial.replace(target)  # atomic: the target exists only when complete and verified
    log.info("downloaded %s to %s", url, target)
    return target


def extract_zip(archive: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Unpack ``archive`` into ``folder`` (once: an existing ``folder`` is taken as complete).

    The archive is unpacked into ``<folder>.tmp`` and renamed, so an interrupted extraction is
    never taken for a whole one.
    """
    archive, folder = Path(archive), Path(folder)
    if folder.is_dir():
        return folder
    staging = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as handle:
            handle.extractall(staging)  # zipfile drops absolute paths and '..' components
    except zipfile.BadZipFile:
        shutil.rmtree(staging, ignore_errors=True)
        raise DownloadError(f"{archive} is not a valid zip file; delete it and retry") from None
    staging.replace(folder)
    return folder
