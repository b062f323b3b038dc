"""Writing outputs so that nothing is ever left half-written: a temporary file in the destination's folder, then
``os.replace`` (atomic on one filesystem). Every output of the package goes through here."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import OutputExistsError


def current_umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: str | os.PathLike, folder: bool = False) -> None:
    """Give a temporary file (0600) or folder (0700) the permissions an ordinary ``open``/``mkdir`` would have:
    0644/0755 under umask 022."""
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def atomic_save(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(temp_path)`` and move the result to ``path``; the temporary file keeps ``path``'s suffix so that
    writers that pick a format by extension (PIL, matplotlib) still work."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(temp)
        honour_umask(temp)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_save(path, lambda temp: Path(temp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=json_default) + "\n")


def atomic_write_csv(
    path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None
) -> Path:
    columns = list(columns) if columns is not None else (list(rows[0]) if rows else [])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return atomic_write_text(path, buffer.getvalue())


def write_staged(output_dir: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Let ``write(staging)`` fill a staging folder beside ``output_dir``, then move each file into place."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=output_dir))
    try:
        write(staging)
        for item in staging.iterdir():
            if item.is_file():
                honour_umask(item)
                os.replace(item, output_dir / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def json_default(value):
    """JSON for numpy scalars, paths, torch devices and dtypes."""
    import numpy as np

    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path) or type(value).__module__.startswith("torch"):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """``path`` as a folder that can be created or written into: refuses a path that is a file, or that lies under a
    file, before any work is done (``OutputExistsError`` naming it)."""

    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path}: the {what} is an existing file, not a folder", path)
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputExistsError(f"{path}: the {what} lies under {parent}, which is a file", parent)
            break
    return path


#: written into every output folder this package may later replace (``overwrite``)
OUTPUT_MARKER = ".losam-output"


def check_replaceable(output: str | os.PathLike, inputs, *, overwrite: bool, what: str = "output") -> Path:
    """The rule for every command that may replace an output folder.

    Refused: an output that is, contains or lies inside one of ``inputs``; an output that is a file; an existing
    output without ``overwrite``; and, even with ``overwrite``, a folder this package did not write (no
    :data:`OUTPUT_MARKER` in it). Returns the resolved output path.
    """

    out = Path(output).expanduser().resolve()
    for item in inputs:
        if item is None:
            continue
        source = Path(item).expanduser().resolve()
        if out == source or source.is_relative_to(out) or out.is_relative_to(source):
            relation = "is" if out == source else ("contains" if source.is_relative_to(out) else "lies inside")
            raise OutputExistsError(f"{out}: the {what} {relation} the input {source}; choose another folder", out)
    check_output_dir(out, what)
    if out.exists():
        if not overwrite:
            raise OutputExistsError(f"{out} exists already; pass overwrite=True (--overwrite) to replace it", out)
        if not (out / OUTPUT_MARKER).is_file():
            raise OutputExistsError(
                f"{out} exists and was not written by losam-peft (no {OUTPUT_MARKER} in it); it is never replaced, "
                "even with overwrite: choose a new folder",
                out,
            )
    return out


def mark_output(folder: str | os.PathLike, what: str) -> None:
    """Record in ``folder`` that this package wrote it (so that ``overwrite`` may replace it later)."""
    (Path(folder) / OUTPUT_MARKER).write_text(json.dumps({"written_by": "losam-peft", "what": what}) + "\n")
