"""Writing outputs so that a failure never leaves a half-written file or folder behind.

Every write goes to a temporary name next to the target and is renamed into place at the end (a rename on the
same file system is atomic); an existing target stays intact until the new one is complete.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def _temporary_next_to(path: Path) -> Iterator[Path]:
    """A temporary file path in ``path``'s folder; renamed onto ``path`` when the block succeeds, else removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (newlines as given)."""
    with _temporary_next_to(Path(path)) as temporary:
        with open(temporary, "w", newline="") as stream:
            stream.write(text)


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int = 4) -> None:
    """Write ``data`` as JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(data, indent=indent))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` atomically."""
    # imported here: torch takes seconds to import, and convert, synth and evaluate write through this module
    # without needing it
    import torch

    with _temporary_next_to(Path(path)) as temporary:
        torch.save(obj, temporary)


def replace_directory(finished: Path, target: Path) -> None:
    """Move the complete folder ``finished`` to ``target`` with renames only (same file system), keeping an existing
    ``target`` until the new one is in place."""
    backup = None
    if target.exists():
        backup = target.parent / f".{target.name}.replaced-{os.getpid()}"
        os.replace(target, backup)
    os.replace(finished, target)
    if backup is not None:
        shutil.rmtree(backup)


@contextmanager
def directory_in_the_making(parent: Path, name: str) -> Iterator[Path]:
    """A hidden temporary folder in ``parent`` to build ``name`` in; removed if it is still there afterwards
    (the caller moves it into place with ``replace_directory`` on success)."""
    parent.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent))
    try:
        yield work_dir
    finally:
        if work_dir.exists():
            shutil.rmtree(work_dir)
