"""Verified downloads: a temporary file beside the target, md5 checked, then an atomic rename.

A truncated, corrupt or wrong file never reaches the target path: the temporary file is removed on any
failure, and the next mirror is tried. Only when every mirror failed is a :class:`DownloadError` raised,
naming each mirror and what went wrong with it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from lightning_ae.errors import InputError

_CHUNK = 1 << 20


class DownloadError(InputError, RuntimeError):
    """Every mirror failed for a file."""


def _fetch(url: str, dest: Path, md5: str | None, timeout: float) -> None:
    """Downloads ``url`` to a temporary file in ``dest``'s folder and renames it to ``dest`` once verified."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5()
        received = 0
        request = urllib.request.Request(url, headers={"User-Agent": "lightning-ae"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
            expected = response.headers.get("Content-Length")
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
        if expected is not None and received != int(expected):
            raise DownloadError(f"truncated: received {received} of {expected} bytes")
        if md5 is not None and digest.hexdigest() != md5:
            raise DownloadError(f"md5 mismatch: expected {md5}, got {digest.hexdigest()}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def download_file(
    filename: str,
    mirrors: Sequence[str],
    dest_dir: str | os.PathLike[str],
    md5: str | None,
    timeout: float = 60.0,
) -> Path:
    """Downloads ``filename`` from the first mirror that serves it intact.

    Args:
        filename: the file's name, appended to each mirror's base URL.
        mirrors: base URLs, tried in order (each ends with ``/`` or gets one).
        dest_dir: folder to write into (created if needed).
        md5: expected md5 hex digest of the file, or ``None`` to skip the check.
        timeout: socket timeout in seconds per mirror.

    Returns:
        The path of the verified file.

    Raises:
        DownloadError: every mirror failed; the message lists each URL and its error.
    """
    if not mirrors:
        raise ValueError("mirrors is empty: give at least one base URL")
    dest = Path(dest_dir) / filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for base in mirrors:
        url = base if base.endswith("/") else base + "/"
        url += filename
        try:
            _fetch(url, dest, md5, timeout)
            return dest
        except (OSError, urllib.error.URLError, DownloadError, ValueError) as err:
            failures.append(f"  {url}: {err}")
    raise DownloadError(
        f"could not download {filename} into {dest.parent}; every mirror failed:\n" + "\n".join(failures)
        + f"\nIf this machine is offline, copy {filename} into {dest.parent} yourself."
    )
