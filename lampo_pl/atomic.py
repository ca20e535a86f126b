"""Write a file or a folder so that it is never seen half-written, and survives a power cut once written.

The one way lampo-pl puts a file (checkpoints, evaluation JSON, ablation results) or a folder
(adapters, merged models, cached model folders) on disk:
1. Write beside the target under a temporary name (a ``.tmp`` suffix; a folder: a hidden sibling),
   in the same folder, so that the final rename stays on one filesystem and is atomic (POSIX rename).
2. ``fsync`` the data before the rename: otherwise a crash shortly after can leave the new name
   pointing at empty or partial data (ext4/xfs delayed allocation; see the ``rename(2)`` notes and
   LWN "ext4 and data loss", 2009).
3. ``fsync`` the parent folder after the rename: the new directory entry itself is only durable then.
A folder that is replaced is first renamed aside and removed only once the new one is in place, so
at every instant the old or the new folder is complete on disk.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".tmp"


def fsync_dir(directory: str | Path) -> None:
    """Persist the entries of ``directory`` (a rename into it): on POSIX, only a synced directory keeps them."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on ``<path>.tmp``, fsync it, rename it over ``path``, fsync the folder.

    A failure (or a kill) before the rename leaves ``path`` as it was; a failed write removes its
    temporary file, a killed one leaves at most ``<path>.tmp``, which no ``*.ckpt``/``*.json`` glob matches.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)  # atomic on one filesystem: readers see the old file or the new one
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return target


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``write_atomic`` for text (UTF-8)."""
    return write_atomic(path, lambda file: file.write(text.encode("utf-8")))


def write_dir_atomic(path: str | Path, build: Callable[[Path], Path | None], *, replace: bool = True) -> Path:
    """Build a folder with ``build(tmp)`` in a hidden sibling of ``path``, fsync it and swap it in for ``path``.

    ``build`` fills the empty folder ``tmp``; it may return a sub-folder of ``tmp`` to publish instead
    (peft writes a named adapter into ``tmp/<name>``). An existing ``path`` is renamed aside first and
    removed only after the new folder is in place. Nothing but ``path`` and the two temporaries is
    touched: callers decide whether ``path`` may be replaced at all. ``replace=False`` (a cache
    built once): an existing ``path``, e.g. one another process finished first, is kept and the new
    folder dropped.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent))
    old = tmp.with_name(tmp.name + ".old")
    try:
        src = build(tmp) or tmp
        _fsync_tree(src)
        if not replace:
            try:
                src.rename(target)  # fails when another process renamed its folder into place first
            except OSError:
                if not target.is_dir():
                    raise
            fsync_dir(target.parent)
            return target
        if target.exists() or target.is_symlink():
            target.rename(old)
        src.rename(target)
        fsync_dir(target.parent)
    except BaseException:
        if old.exists() and not target.exists():  # put the previous folder back
            old.rename(target)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return target


def _fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder`` and every folder itself, before it is renamed into place."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(Path(root) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)
