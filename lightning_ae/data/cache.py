"""The decoded-once cache of an image folder: one raw ``uint8 (N, C, H, W)`` file, memory-mapped when read.

A cache is a folder ``<cache_dir>/<key>/`` holding ``images.u8`` (the array, no header), ``labels.npy``,
``splits.npy`` and ``meta.json`` (shape, class names, file list, skipped files). The key hashes the folder's path,
the decode options and every file's path, size and modification time, so any change to the folder or to the options
names another cache. It is built in a temporary folder that is renamed into place only when complete: a cache
from an interrupted decode is never found.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lightning_ae.data.images import DecodeOptions, ImageDecodeError, decode_many

CACHE_VERSION = 1
CHUNK = 64  # images per task sent to a worker


@dataclass
class FolderScan:
    """What :func:`lightning_ae.data.images.scan_folder` found, with the names of the classes."""

    files: list[Path]
    labels: list[int]
    splits: list[str]
    class_names: list[str]


@dataclass
class ImageCache:
    """A built cache, mapped: ``images`` uint8 ``(N, C, H, W)`` (copy-on-write map), ``labels`` int64 (``-1``:
    none), ``splits`` (``train``/``val``/``test``/``""``), ``files`` relative to the folder, ``skipped`` files."""

    path: Path
    images: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    class_names: list[str]
    files: list[str]
    skipped: list[str]


def cache_key(root: Path, scan: FolderScan, options: DecodeOptions, skip_bad: bool) -> str:
    """sha256 (first 24 hex digits) of the folder, the options and every file's relative path, size and mtime."""
    digest = hashlib.sha256()
    header = {"version": CACHE_VERSION, "root": str(root.resolve()), "options": asdict(options),
              "skip_bad": skip_bad, "classes": scan.class_names}
    digest.update(json.dumps(header, sort_keys=True).encode())
    prefix = str(root) + os.sep
    for path, label, split in zip(scan.files, scan.labels, scan.splits, strict=True):
        name = str(path)  # the relative path by slicing where it can (pathlib's relative_to is 5 us a file)
        relative = name[len(prefix):] if name.startswith(prefix) else str(path.relative_to(root))
        st = os.stat(name)
        digest.update(f"\n{relative}\0{st.st_size}\0{st.st_mtime_ns}\0{label}\0{split}".encode())
    return digest.hexdigest()[:24]


def _decode_all(files: list[Path], options: DecodeOptions, out, workers: int) -> tuple[list[int], list[str]]:
    """Decodes in ``workers`` processes, appending good images to ``out``; ``(good positions, errors)``."""
    chunks = [[str(p) for p in files[i:i + CHUNK]] for i in range(0, len(files), CHUNK)]
    good: list[int] = []
    errors: list[str] = []
    bar = tqdm(total=len(files), desc=f"decoding {len(files)} images", unit="img", mininterval=1.0)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(decode_many, chunks, [options] * len(chunks))
        for start, (array, bad) in zip(range(0, len(files), CHUNK), results, strict=True):
            out.write(array.tobytes())
            bad_pos = {pos for pos, _ in bad}
            good += [start + i for i in range(len(chunks[start // CHUNK])) if i not in bad_pos]
            errors += [msg for _, msg in bad]
            bar.update(len(chunks[start // CHUNK]))
    bar.close()
    return good, errors


def build_cache(root: Path, scan: FolderScan, options: DecodeOptions, cache_dir: Path, skip_bad: bool,
                workers: int) -> Path:
    """Decodes every file of ``scan`` into ``cache_dir/<key>`` unless that exists; returns the folder.

    Raises :class:`ImageDecodeError` naming the first bad file, unless ``skip_bad`` (then a warning counts them).
    """
    final = cache_dir / cache_key(root, scan, options, skip_bad)
    if final.is_dir():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{final.name}-partial-"))
    try:
        with open(tmp / "images.u8", "wb") as out:
            good, errors = _decode_all(scan.files, options, out, workers)
        if errors and not skip_bad:
            raise ImageDecodeError(f"{errors[0]} ({len(errors)} unreadable image(s); skip_bad_files=True skips them)")
        if errors:
            warnings.warn(f"skipped {len(errors)} unreadable image(s) under {root}, e.g. " + "; ".join(errors[:3]),
                          stacklevel=2)
        if not good:
            raise ImageDecodeError(f"no readable image under {root}")
        _write_meta(tmp, root, scan, options, good, errors)
        tmp.chmod(0o755)  # mkdtemp made it private
        try:
            tmp.rename(final)
        except OSError:  # another process (another node sharing the folder) finished first: use its cache
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _write_meta(tmp: Path, root: Path, scan: FolderScan, options: DecodeOptions, good: list[int],
                errors: list[str]) -> None:
    np.save(tmp / "labels.npy", np.asarray(scan.labels, dtype=np.int64)[good])
    np.save(tmp / "splits.npy", np.asarray(scan.splits, dtype="<U5")[good])
    meta = {"version": CACHE_VERSION, "shape": [len(good), *options.shape], "class_names": scan.class_names,
            "root": str(root), "options": asdict(options), "skipped": errors,
            "files": [str(scan.files[i].relative_to(root)) for i in good]}
    (tmp / "meta.json").write_text(json.dumps(meta))


def open_cache(path: Path) -> ImageCache:
    """Maps a cache built by :func:`build_cache` (no decoding, no copy of the images)."""
    meta = json.loads((path / "meta.json").read_text())
    images = np.memmap(path / "images.u8", dtype=np.uint8, mode="c", shape=tuple(meta["shape"]))
    return ImageCache(path, images, np.load(path / "labels.npy"), np.load(path / "splits.npy"),
                      meta["class_names"], meta["files"], meta["skipped"])


def default_workers() -> int:
    """Decode processes: the CPUs this process may use, at most 16."""
    return max(1, min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
