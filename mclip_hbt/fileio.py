"""Writing files so that a reader never sees half of one, and refusing unwritable outputs early.

Every command that writes (training, the recipes, the evaluators, the reports) goes through these
helpers: a JSON or text file is written to a temporary sibling and renamed; a folder is built in a
staging sibling and renamed into place; an output location is checked before any work starts, so
a read-only folder or a file where a folder should be is one plain error, not a traceback at the end.
"""
from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class OutputError(ValueError):
    """An output location that cannot be written; the message names it and says what to do."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_readable(folder: Path) -> None:
    """Give a folder tree the modes of ordinary files (mkdtemp and safetensors create them private)."""
    mask = _umask()
    folder.chmod(0o777 & ~mask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write text through a temporary sibling renamed into place; on failure the old file stays."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes (a PNG, ...) through a temporary sibling renamed into place; on failure (a full
    disk) the temporary file is removed and the old file stays."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON through a temporary file so a reader never sees half a file."""
    write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


@contextmanager
def atomic_directory(directory: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder beside ``directory``; on success it replaces ``directory`` whole.

    On an exception (a full disk, a kill signal turned into one) the staging folder is removed and
    an existing ``directory`` is left as it was.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(directory)
    # The writer's pid in the name: a later writer can tell a staging folder whose writer was killed.
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.{os.getpid()}.", suffix=".tmp", dir=directory.parent))
    try:
        yield staging
        make_readable(staging)
        if directory.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
            os.replace(directory, retired / directory.name)
            os.replace(staging, directory)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_abandoned_staging(directory: Path) -> None:
    """Delete the staging folders of ``directory`` (``.NAME.PID.XXXX.tmp``) whose writing process is gone: a
    killed export or training leaves a full copy of a model there that nothing else would ever remove."""
    pattern = re.compile(rf"\.{re.escape(directory.name)}\.(\d+)\.\w+\.tmp")
    for sibling in directory.parent.glob(f".{glob.escape(directory.name)}.*.tmp"):
        match = pattern.fullmatch(sibling.name)
        if match and sibling.is_dir() and not process_alive(int(match.group(1))):
            shutil.rmtree(sibling, ignore_errors=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


#: Written by :func:`build_once` into each folder it builds: what the folder was built from.
BUILD_STAMP = "mclip_hbt_build.json"


@contextmanager
def exclusive_lock(lock_path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if missing): one process at a time."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_once(directory: str | os.PathLike, stamp: Mapping[str, Any], build: Callable[[Path], None],
               *, force: bool = False) -> Path:
    """``directory`` as ``build(staging)`` fills it, built only when it does not hold ``stamp`` yet.

    For caches of converted models: the stamp names the converter version and the source, so a new
    converter or another source rebuilds. Processes starting together build once (the others wait on
    a lock file beside the folder, then reuse it), and the folder is replaced whole (:func:`atomic_directory`).
    """
    directory = Path(directory)
    stamp = dict(stamp)

    def current() -> bool:
        try:
            return json.loads((directory / BUILD_STAMP).read_text()) == stamp
        except (OSError, ValueError):
            return False

    if not force and current():
        return directory
    try:
        with exclusive_lock(directory.with_name(f".{directory.name}.lock")):
            if not force and current():  # another process built it while this one waited
                return directory
            with atomic_directory(directory) as staging:
                build(staging)
                write_json_atomic(staging / BUILD_STAMP, stamp)
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC):
            raise
        raise OutputError(f"cannot write the cache folder {directory} ({err.strerror}); set MCLIP_HBT_CACHE to a "
                          "folder you can write to (the converted models go there once)") from err
    return directory


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest parent that exists (the file system root at the latest)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_output_dir(path: str | os.PathLike, option: str) -> Path:
    """Make sure ``path`` is (or can become) a writable folder; raise :class:`OutputError` if not.

    Called before any work starts, so a bad output location costs nothing.
    """
    path = Path(path)
    existing = _nearest_existing(path)
    if existing.exists() and not existing.is_dir():
        raise OutputError(f"{option}: {existing} is a file, not a folder; choose another {option}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        # A real write, not os.access: root passes access checks that a read-only mount still refuses.
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise OutputError(f"{option}: cannot write to {path} ({err.strerror or err}); "
                          f"choose a folder you can write to") from err
    return path


def check_replaceable(path: str | os.PathLike, option: str, written_by_us: Callable[[Path], bool], *,
                      overwrite: bool = False, flag: str | None = "--overwrite") -> None:
    """OutputError unless the folder ``path`` may be replaced or cleared: it is missing or empty, ``written_by_us``
    recognises it (the files a writer of this project leaves), or the user said ``overwrite``.

    A writer never deletes or replaces a folder it did not write: the user's own files in the folder they named
    are refused with a message, before any work starts."""
    path = Path(path)
    if overwrite or not path.exists():
        return
    if not path.is_dir():
        raise OutputError(f"{option}: {path} is a file, not a folder; choose another {option}")
    entries = sorted(p.name for p in path.iterdir())
    if entries and not written_by_us(path):
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise OutputError(f"{option}: {path} holds files this command did not write ({shown}); choose another "
                          f"{option}" + (f", or pass {flag} to replace them" if flag else ""))


def check_output_file(path: str | os.PathLike, option: str) -> Path:
    """Make sure the file ``path`` can be written (its folder writable, not itself a folder)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option}: {path} is a folder; give a file name")
    check_output_dir(path.parent, option)
    return path


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes available to this user on the file system holding ``path`` (or its nearest parent)."""
    return shutil.disk_usage(_nearest_existing(Path(path))).free


def parse_json(text: str | bytes) -> Any:
    """``json.loads`` whose every failure on bad input is a ``ValueError``: bad syntax, bad UTF-8, and
    nesting too deep for the parser (``[`` × 100000 raises ``RecursionError`` in ``json.loads``), so
    one ``except ValueError`` at a record boundary turns any unparsable record into a counted fault."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply to parse") from None
