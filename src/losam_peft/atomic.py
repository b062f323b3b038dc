"""Writing outputs so that nothing is ever left half-written: a temporary file in the destination's folder, then
``os.replace`` (atomic on one filesystem). Every output of the package goes through here."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import OutputExistsError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


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


def check_apart(output: str | os.PathLike, inputs, what: str = "output") -> Path:
    """Refuse an ``output`` that is, contains or lies inside one of ``inputs`` (``OutputExistsError`` naming both);
    returns the resolved output path."""
    out = Path(output).expanduser().resolve()
    for item in inputs:
        if item is None:
            continue
        source = Path(item).expanduser().resolve()
        if out == source or source.is_relative_to(out) or out.is_relative_to(source):
            relation = "is" if out == source else ("contains" if source.is_relative_to(out) else "lies inside")
            raise OutputExistsError(f"{out}: the {what} {relation} the input {source}; choose another folder", out)
    return out


def check_replaceable(output: str | os.PathLike, inputs, *, overwrite: bool, what: str = "output") -> Path:
    """The rule for every command that may replace an output folder.

    Refused: an output that is, contains or lies inside one of ``inputs``; an output that is a file; an existing
    output without ``overwrite``; and, even with ``overwrite``, a folder this package did not write (no
    :data:`OUTPUT_MARKER` in it). Returns the resolved output path.
    """

    out = check_apart(output, inputs, what)
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


#: the lock file :func:`output_lock` keeps in an output folder while a run writes there
LOCK_NAME = ".losam-lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    except OSError:
        return False
    return True


def _lock_owner(path: Path) -> dict:
    try:
        owner = json.loads(path.read_text(encoding="utf-8") or "{}")
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


def _busy(folder: Path, path: Path, owner: dict) -> OutputExistsError:
    pid = owner.get("pid")
    who = f"pid {pid}" if pid else "a process whose pid is not recorded yet"
    host = owner.get("host")
    if host and host != socket.gethostname():
        who += f" on {host}"
    since = f", since {owner['started']}" if owner.get("started") else ""
    return OutputExistsError(
        f"{folder} is being written by another run ({who}{since}; lock file {path}); wait for it to finish or "
        "choose another output folder",
        folder,
    )


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, what: str = "output folder"):
    """Hold ``folder``'s lock file (:data:`LOCK_NAME`) for the duration of a ``with`` block.

    A second run asking for the lock of the same folder meanwhile gets an :class:`OutputExistsError` naming the folder
    and the owner's pid. The lock is an advisory ``flock`` on the lock file, so a run that dies (even by
    ``kill -9``) releases it with its process: its leftover lock file is taken over by the next run. Where ``flock``
    does not exist (Windows), the lock file is created exclusively and a leftover one whose pid is no longer alive is
    taken over. The lock file records ``pid``, ``host`` and ``started``; it is removed on leaving the block.
    """
    folder = check_output_dir(folder, what)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    record = json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    )
    if fcntl is None:  # pragma: no cover - Windows
        with _exclusive_lock(folder, path, record):
            yield path
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(folder, path, _lock_owner(path)) from None
        except OSError:
            os.close(fd)
            raise
        try:  # the file may have been removed (and re-created) by its previous holder between open and flock
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, (record + "\n").encode("utf-8"))
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


@contextlib.contextmanager
def _exclusive_lock(folder: Path, path: Path, record: str):  # pragma: no cover - used where flock is missing
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            owner = _lock_owner(path)
            pid = owner.get("pid")
            if isinstance(pid, int) and not _pid_alive(pid):
                with contextlib.suppress(OSError):
                    os.unlink(path)  # a stale lock from a dead process
                continue
            raise _busy(folder, path, owner) from None
        break
    else:
        raise _busy(folder, path, _lock_owner(path))
    try:
        os.write(fd, (record + "\n").encode("utf-8"))
        os.close(fd)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
