"""Local files written atomically, and the URI helpers that need no S3 client.

Local writes go to a temporary sibling and are renamed into place, so a reader never sees a
half-written file and an interrupted writer leaves the old file (or nothing) behind. The ML
core writes every output through this module; S3 lives in ``ganforge.platform.s3``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import GanforgeError, OutputPathError, require_platform


class StorageError(GanforgeError, RuntimeError):
    """A storage operation failed; the message names the location and what to check."""


def local_path(uri: str | os.PathLike) -> Path:
    """The local ``Path`` of a plain path or ``file://`` URI; StorageError for any other scheme."""
    s = os.fspath(uri)
    if s.startswith("file://"):
        s = s[len("file://") :]
    if "://" in s:
        raise StorageError(f"{s!r} is not a local path")
    return Path(s)


# errno values that mean "this output cannot be written here", whatever the writer was doing.
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})
# The subset that cannot come from reading an input, for blocks that may also read (atomic_file, atomic_dir).
_OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def _write_failure(p: Path, e: OSError) -> StorageError:
    """A StorageError naming the output, the cause (errno) and the fix, for a failed write."""
    cause = f"{e.strerror or e} ({errno.errorcode.get(e.errno or 0, 'errno ' + str(e.errno))})"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free space on the file system holding {p.parent} (df -h {p.parent}), or choose another output path"
    elif e.errno == errno.EFBIG:
        fix = (
            "the file is larger than the file system or this process's file-size limit (ulimit -f) allows: "
            "raise the limit or choose another output path"
        )
    else:
        fix = f"choose an output path you can write to, or fix the permissions of {p.parent}"
    return StorageError(
        f"cannot write {p}: {cause}; nothing was written there (a previous version is kept). Fix: {fix}"
    )


def _writable_parent(p: Path) -> None:
    """Create ``p``'s parent folders; StorageError naming the path and the fix when that is impossible."""
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((a for a in [p.parent, *p.parent.parents] if a.exists() and not a.is_dir()), p.parent)
        raise StorageError(
            f"cannot write {p}: {blocker} is a file, not a directory. Fix: choose an output path "
            "whose parent folders are directories (or move that file away)"
        ) from None
    except OSError as e:
        raise _write_failure(p, e) from None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temporary_sibling(p: Path, make: Callable[..., Any]) -> Any:
    """``tempfile.mkstemp``/``mkdtemp`` beside ``p``, with OSError turned into a StorageError.

    mkstemp/mkdtemp create 0600/0700 entries; the temporary gets the mode an ordinary open/mkdir
    would give it under the process's umask, so an output renamed into place is not private by
    accident (a 0600 file also changes the classic Docker builder's cache key for a COPY of it).
    """
    _writable_parent(p)
    try:
        made = make(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        tmp = made[1] if isinstance(made, tuple) else made
        os.chmod(tmp, (0o777 if os.path.isdir(tmp) else 0o666) & ~_umask())
        return made
    except OSError as e:
        raise _write_failure(p, e) from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary sibling, fsync it, then rename it over ``path``.

    A failed write (disk full, read-only, no permission) is a StorageError naming ``path`` and
    its cause; the temporary file is removed and a previous ``path`` stays as it was.
    """
    p = local_path(path)
    fd, tmp = _temporary_sibling(p, tempfile.mkstemp)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
            raise _write_failure(p, e) from e
        raise
    return p


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``atomic_write_bytes`` of UTF-8 encoded ``text``."""
    return atomic_write_bytes(path, text.encode())


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    p = local_path(path)
    fd, tmp = _temporary_sibling(p, tempfile.mkstemp)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, p)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in _OUTPUT_ERRNOS:
            raise _write_failure(p, e) from e
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it replaces ``path`` only if the block succeeds.

    On failure the temporary directory is removed and any previous ``path`` is left untouched.
    A ``path`` that is a file (or a link) is never replaced. Callers replacing a user-named
    output check it first with :func:`check_output_dir`.
    """
    p = local_path(path)
    if p.exists() and not overwrite:
        raise StorageError(f"{p} already exists; remove it or choose another output directory")
    if p.is_symlink() or (p.exists() and not p.is_dir()):
        raise OutputPathError(
            f"{p} is a file{' link' if p.is_symlink() else ''}, not a directory, and would be "
            "replaced by one. Fix: choose another output path (or move the file away yourself)"
        )
    tmp = Path(_temporary_sibling(p, tempfile.mkdtemp))
    try:
        yield tmp
        if p.exists():
            old = p.with_name(f".{p.name}.old-{os.getpid()}")
            os.replace(p, old)
            os.replace(tmp, p)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, p)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in _OUTPUT_ERRNOS:
            raise _write_failure(p, e) from e
        raise


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_dir(
    path: str | os.PathLike,
    *,
    command: str,
    manifest: str,
    owned_files: Callable[[dict], Iterable[str]],
    protect: Iterable[str | os.PathLike] = (),
) -> Path:
    """Refuse an output directory whose replacement would delete something ganforge did not write.

    ``command`` writes a whole directory at ``path`` (``atomic_dir``), replacing what is there.
    Allowed: a new path, an empty directory, or an earlier output of the same command —
    recognised by its ``manifest`` file (a JSON object) and holding only the files
    ``owned_files(manifest)`` names. Refused with an OutputPathError naming the path and the
    fix: a file or link, any path in ``protect`` (the command's input) or a folder holding
    one, and a non-empty folder that is not such an output or holds anything else.
    """
    p = local_path(path)
    where = p.resolve()
    for source in protect:
        src = Path(source).expanduser().resolve()
        if _inside(src, where):
            what = "is" if src == where else "is a folder holding"
            raise OutputPathError(
                f"--out {p} {what} the input {src}, and {command} replaces its --out whole (the input would be "
                f"deleted). Fix: choose a separate output directory, e.g. --out {src.parent / (src.name + '-out')}"
            )
    if p.is_symlink() or (p.exists() and not p.is_dir()):
        raise OutputPathError(
            f"--out {p} is a file{' link' if p.is_symlink() else ''}; {command} writes a directory there and will not "
            "delete it. Fix: choose another --out (or move the file away yourself)"
        )
    if not p.exists() or not any(p.iterdir()):
        return p
    recorded = p / manifest
    try:
        listed = json.loads(recorded.read_text()) if recorded.is_file() else None
        allowed = set(owned_files(listed)) | {manifest} if isinstance(listed, dict) else None
    except (ValueError, KeyError, TypeError, OSError):
        allowed = None
    if allowed is None:
        raise OutputPathError(
            f"--out {p} is a non-empty folder that is not an earlier {command} output (no valid {manifest}); "
            f"{command} replaces its --out whole and deletes nothing it did not write. Fix: choose a new or empty "
            "directory, or remove that folder yourself"
        )
    written = (q.relative_to(p).as_posix() for q in p.rglob("*") if not q.is_dir())
    foreign = sorted(r for r in written if r not in allowed)
    if foreign:
        raise OutputPathError(
            f"--out {p} holds {p / foreign[0]}{f' (and {len(foreign) - 1} more)' if len(foreign) > 1 else ''}, which "
            f"the earlier {command} output there did not write; {command} replaces its --out whole and deletes nothing "
            "it did not write. Fix: move it out, or choose another --out"
        )
    return p


def _refuse_input_overlap(p: Path, where: Path, inputs: Iterable[str | os.PathLike], command: str, writes: str) -> None:
    """OutputPathError when ``where`` (the resolved --out) is, is inside or holds one of ``inputs``."""
    for source in inputs:
        src = Path(source).expanduser().resolve()
        if _inside(where, src) or _inside(src, where):
            if src == where:
                relation, fix = "is", "choose another --out"
            elif _inside(where, src):
                relation, fix = "is inside", f"choose an --out outside {src}"
            else:
                relation, fix = "is a folder holding", f"choose an --out that does not hold {src}"
            raise OutputPathError(
                f"--out {p} {relation} the input {src}, and {command} writes {writes} there (the input would be "
                f"overwritten or mixed with outputs). Fix: {fix}"
            )


def check_output_file(
    path: str | os.PathLike,
    *,
    command: str,
    inputs: Iterable[str | os.PathLike],
    is_own: Callable[[object], bool],
) -> Path:
    """Refuse an output file whose replacement would destroy something ganforge did not write.

    ``command`` writes one JSON file at ``path`` (atomically, replacing what is there). Allowed: a
    new path, or an existing file whose parsed JSON ``is_own`` recognises as an earlier output of
    the command. Refused with an OutputPathError naming the path and the fix: any of ``inputs``
    (a checkpoint, a dataset folder), a path inside one or a folder holding one, a directory, a
    link, and an existing file that is not such an output.
    """
    p = local_path(path)
    _refuse_input_overlap(p, p.resolve(), inputs, command, "its metrics JSON")
    if p.is_symlink():
        raise OutputPathError(
            f"--out {p} is a link; {command} will not replace it. Fix: name a new file "
            f"(e.g. --out {p.parent / 'metrics.json'})"
        )
    if p.is_dir():
        raise OutputPathError(
            f"--out {p} is a directory; {command} writes one JSON file. Fix: name a file "
            f"(e.g. --out {p / 'metrics.json'})"
        )
    if p.exists():
        try:
            own = is_own(json.loads(p.read_text()))
        except (OSError, ValueError):
            own = False
        if not own:
            raise OutputPathError(
                f"--out {p} exists and is not a metrics file {command} wrote; it replaces only its own earlier "
                "output. Fix: choose a new file name (or remove that file yourself)"
            )
    return p


def check_run_dir(
    path: str | os.PathLike,
    *,
    command: str,
    inputs: Iterable[str | os.PathLike],
    is_run: Callable[[Path], bool],
    housekeeping: Iterable[str] = (),
) -> Path:
    """Refuse a run directory that would mix a run's files into something else.

    ``command`` writes its files into the folder at ``path`` (config, checkpoints, samples), one by
    one, keeping what else is there. A link is followed: the rules apply to the folder it points
    to, so a run directory kept on another disk through a link works, and a link to a user's or a
    data folder is refused like that folder. Allowed: a new path, an empty folder, a folder holding
    only ``housekeeping`` files, and an earlier run (``is_run``). Refused with an OutputPathError
    naming the path and the fix: any of ``inputs`` (the dataset), a folder inside one or holding
    one, a file, a link to nothing, and any other non-empty folder (a user's folder, $HOME, /).
    """
    p = local_path(path)
    where = p.resolve()
    shown = f"{p} (a link to {where})" if p.is_symlink() else str(p)
    _refuse_input_overlap(p, where, inputs, command, "a training run")
    if p.is_symlink() and not p.exists():
        raise OutputPathError(
            f"--out {p} is a link to {where}, which does not exist. Fix: create that folder, or choose another --out"
        )
    if p.exists() and not p.is_dir():
        raise OutputPathError(
            f"--out {shown} is a file; {command} writes a run directory. Fix: choose another --out "
            "(or move the file away yourself)"
        )
    if p.is_dir() and not is_run(where):
        keep = set(housekeeping)
        try:
            foreign = any(e.name not in keep for e in where.iterdir())
        except OSError as e:
            raise StorageError(
                f"cannot list --out {shown} ({e.strerror or e}); fix its permissions or choose another --out"
            ) from None
        if foreign:
            raise OutputPathError(
                f"--out {shown} is a non-empty folder that is not a ganforge run (no ganforge config.json); "
                f"{command} would write its files among yours. Fix: choose a new or empty directory "
                f"(e.g. --out {where / 'run'})"
            )
    return p


def ensure_parent(path: str | os.PathLike) -> None:
    """Create the parent folders of the output ``path``; StorageError naming it when that is impossible."""
    _writable_parent(local_path(path))


def write_failure(path: str | os.PathLike, error: OSError) -> StorageError:
    """The StorageError for a failed write of ``path`` (its cause and the fix)."""
    return _write_failure(local_path(path), error)


def is_s3(uri: str | os.PathLike) -> bool:
    """True for an ``s3://`` URI."""
    return os.fspath(uri).startswith("s3://")


def join(uri: str | os.PathLike, *parts: str) -> str:
    """Append path parts to a local path, ``file://`` or ``s3://`` URI, keeping its scheme."""
    s = os.fspath(uri)
    if is_s3(s) or s.startswith("file://"):
        pieces = [s.rstrip("/")] + [p.strip("/") for p in parts if p.strip("/")]
        return "/".join(pieces)
    return os.path.join(s, *parts)


def fetch_s3_prefix(uri: str, local: str | os.PathLike) -> None:
    """Copy the objects under an ``s3://`` prefix into ``local`` — the core's one way to read S3 (a data
    source), through the platform layer (``ganforge.platform.s3``, boto3)."""
    s3 = require_platform("s3", f"the data source {uri}")
    s3.download_prefix(uri, local, require_marker=False)
