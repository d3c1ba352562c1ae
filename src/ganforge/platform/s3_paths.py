"""S3 URIs and object keys as local paths: parsing, and refusing keys that cannot be safe local files."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from ..fileio import StorageError, is_s3, local_path

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def split_s3(uri: str | os.PathLike) -> tuple[str, str]:
    """``s3://bucket/some/key`` → ``("bucket", "some/key")``; the key may be empty."""
    s = os.fspath(uri)
    if not is_s3(s):
        raise StorageError(f"{s!r} is not an S3 URI; write it as s3://BUCKET/KEY")
    bucket, _, key = s[len("s3://") :].partition("/")
    if not bucket:
        raise StorageError(f"{s!r} has no bucket; write it as s3://BUCKET/KEY")
    if not _BUCKET_NAME.match(bucket) or ".." in bucket:
        raise StorageError(
            f"bucket {bucket!r} in {s!r} is not a valid S3 bucket name: use 3-63 lowercase "
            "letters, digits, '.' or '-', starting and ending with a letter or digit"
        )
    return bucket, key


def unsafe_key_problem(relative: str) -> str | None:
    """Why an object key, relative to a prefix, cannot become a path under a local directory (or None).

    Refused: an empty key, an absolute one (``prefix//abs/path`` leaves ``/abs/path``), empty,
    ``.`` or ``..`` segments, and NUL bytes.
    """
    if not relative:
        return "it is empty"
    if relative.startswith("/"):
        return "it is absolute"
    if "\0" in relative:
        return "it holds a NUL byte"
    bad = sorted({part for part in relative.split("/") if part in ("", ".", "..")})
    if bad:
        return "it has " + " and ".join(repr(b) if b else "empty" for b in bad) + " path segments"
    return None


# A download writes each object to a temporary name beside its final one: s3transfer appends ".XXXXXXXX",
# fileio.atomic_file wraps the name as ".NAME.XXXXXXXX.tmp"; a file name needs this much room below NAME_MAX.
_TEMPORARY_NAME_ROOM = 16


def _name_max(directory: Path) -> int:
    """The longest file name (bytes) the file system holding ``directory`` (or its nearest existing parent) takes."""
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            try:
                return os.pathconf(candidate, "PC_NAME_MAX")
            except (OSError, ValueError):
                break
    return 255


def _too_long_segment(root: Path, relative: str) -> str | None:
    """Why one of the key's segments cannot be a file or folder name under ``root`` (or None)."""
    name_max = _name_max(root)
    parts = relative.split("/")
    for i, part in enumerate(parts):
        limit = name_max - (_TEMPORARY_NAME_ROOM if i == len(parts) - 1 else 0)
        size = len(os.fsencode(part))
        if size > limit:
            kind = "file name" if i == len(parts) - 1 else "folder name"
            return (
                f"its {kind} {part[:24]!r}… is {size} bytes, longer than the {limit} a local {kind} can have "
                f"({name_max} on this file system{', less room for a temporary name' if kind == 'file name' else ''})"
            )
    return None


def local_path_for_key(local_dir: str | os.PathLike, relative: str, uri: str) -> Path:
    """``local_dir / relative`` for an S3 object's key relative to the prefix being downloaded.

    Object names come from whoever can write to the bucket, so a key must not choose where a
    file lands: StorageError (naming the object and the fix) unless the path, resolved, stays
    inside ``local_dir``, and unless every segment fits the local file system's name length.
    """
    root = local_path(local_dir)
    problem = unsafe_key_problem(relative)
    dest = root.joinpath(*relative.split("/")) if problem is None else root
    if problem is None and not dest.resolve().is_relative_to(root.resolve()):
        problem = "it resolves to a path outside the download directory"
    if problem is not None:
        raise StorageError(
            f"refusing to download {uri}: its name relative to the prefix, {relative!r}, cannot be a local path "
            f"({problem}), so it could be written outside {root}. Fix: rename or delete that object "
            "(aws s3 mv / aws s3 rm), or upload the directory again with ganforge.platform.s3.upload_dir"
        )
    too_long = _too_long_segment(root, relative)
    if too_long is not None:
        raise StorageError(
            f"cannot download {uri}: {too_long}. Fix: rename that object to a shorter name "
            "(aws s3 mv) or delete it (aws s3 rm)"
        )
    return dest


def local_paths_for_keys(local_dir: str | os.PathLike, relatives: Iterable[str], prefix_uri: str) -> dict[str, Path]:
    """:func:`local_path_for_key` for every key of one download, checked before any object is fetched.

    Also refused: a key that is an object and, for another key, a folder (``coll`` and
    ``coll/inner``), which S3 allows and no local file system does.
    """
    prefix = prefix_uri.rstrip("/")
    paths = {relative: local_path_for_key(local_dir, relative, f"{prefix}/{relative}") for relative in relatives}
    for relative in sorted(paths):
        parts = relative.split("/")
        folder = next(("/".join(parts[:i]) for i in range(1, len(parts)) if "/".join(parts[:i]) in paths), None)
        if folder is not None:
            raise StorageError(
                f"cannot download {prefix}/: {prefix}/{folder} is an object and also the folder of "
                f"{prefix}/{relative}; a local path cannot be both a file and a folder. Fix: rename one of them "
                f"(aws s3 mv {prefix}/{folder} {prefix}/{folder}.data) or delete it (aws s3 rm)"
            )
    return paths
