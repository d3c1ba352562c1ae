"""Objects at ``s3://`` URIs (boto3), and the same operations on local paths (``ganforge.fileio``).

On S3 a single PUT is atomic. A directory is several objects, so ``upload_dir`` writes a
``_COMPLETE`` marker object last (relative keys and sizes) and ``download_prefix`` refuses a
prefix without it. The endpoint comes from ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL`` or
MLflow's ``MLFLOW_S3_ENDPOINT_URL`` (MinIO), credentials from boto3's standard chain.
Transient failures (connection errors, 5xx, throttling) are retried by botocore per request
(``AWS_RETRY_MODE``/``AWS_MAX_ATTEMPTS``, default standard/3) and again for the whole
operation (``GANFORGE_S3_ATTEMPTS``, default 4, exponential backoff from
``GANFORGE_S3_BACKOFF_S``, default 1 s), all within a time budget per operation
(``GANFORGE_S3_TIMEOUT_S``, default 60 s): sockets give up after that long without an answer,
and no retry starts once an operation has spent it, so an endpoint that accepts connections
and never answers fails in about the budget, naming it (a transfer that keeps moving bytes is
not cut off). Permanent failures raise StorageError at once.

The client lives in ``s3_connection``, retries and error messages in ``s3_retry``, URI and
key-to-path checks in ``s3_paths``; their public names are re-exported here.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from ..fileio import StorageError, atomic_dir, atomic_file, atomic_write_bytes, is_s3, local_path
from .s3_connection import (
    DEFAULT_TIMEOUT_S,
    TIMEOUT_ENV,
    BudgetSpent,
    connect,
    endpoint_url_from_env,
    s3_client,
    socket_timeout,
    time_budget_from_env,
)
from .s3_paths import local_path_for_key, local_paths_for_keys, split_s3, unsafe_key_problem
from .s3_retry import (
    EndpointTimeoutError,
    RetryPolicy,
    Target,
    bucket_exists,
    error_code_and_status,
    is_transient,
    retry_policy_from_env,
    retrying,
    s3_target,
)

__all__ = [
    "COMPLETE_MARKER",
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_ENV",
    "BudgetSpent",
    "EndpointTimeoutError",
    "RetryPolicy",
    "download_file",
    "download_prefix",
    "endpoint_url_from_env",
    "exists",
    "is_transient",
    "list_prefix",
    "local_path_for_key",
    "local_paths_for_keys",
    "read_bytes",
    "read_text",
    "retry_policy_from_env",
    "s3_client",
    "socket_timeout",
    "split_s3",
    "time_budget_from_env",
    "unsafe_key_problem",
    "upload_dir",
    "upload_file",
    "write_bytes",
    "write_text",
]

COMPLETE_MARKER = "_COMPLETE"


def write_bytes(uri: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to a local path (atomic rename) or an S3 object (one PUT); return the URI."""
    if not is_s3(uri):
        return str(atomic_write_bytes(uri, data))
    t = s3_target("write", uri)
    retrying(t, lambda: t.connection.client.put_object(Bucket=t.bucket, Key=t.key, Body=data))
    return os.fspath(uri)


def write_text(uri: str | os.PathLike, text: str) -> str:
    """``write_bytes`` of UTF-8 encoded ``text``."""
    return write_bytes(uri, text.encode())


def read_bytes(uri: str | os.PathLike) -> bytes:
    """The contents of a local file or S3 object."""
    if not is_s3(uri):
        p = local_path(uri)
        if not p.is_file():
            raise StorageError(f"no file at {p}: check the path, or run the step that writes it first")
        return p.read_bytes()
    t = s3_target("read", uri)
    return retrying(t, lambda: t.connection.client.get_object(Bucket=t.bucket, Key=t.key)["Body"].read())


def read_text(uri: str | os.PathLike) -> str:
    """``read_bytes`` decoded as UTF-8."""
    return read_bytes(uri).decode()


def exists(uri: str | os.PathLike) -> bool:
    """True if the local path or S3 object exists (an S3 "directory" is not an object)."""
    if not is_s3(uri):
        return local_path(uri).exists()
    t = s3_target("check", uri)

    def head() -> bool:
        try:
            t.connection.client.head_object(Bucket=t.bucket, Key=t.key)
            return True
        except botocore.exceptions.ClientError as e:
            code, status = error_code_and_status(e)
            # A missing bucket is a configuration error, not a missing object.
            if (code in ("404", "NoSuchKey") or status == 404) and bucket_exists(t) is not False:
                return False
            raise

    return retrying(t, head)


def _transfer_config() -> TransferConfig:
    # Managed transfers switch to multipart above 64 MiB and abort the multipart upload on
    # failure; concurrency stays small because the nodes are shared with training.
    return TransferConfig(multipart_threshold=64 * 2**20, multipart_chunksize=16 * 2**20, max_concurrency=4)


def upload_file(
    local: str | os.PathLike,
    uri: str | os.PathLike,
    *,
    progress: Callable[[int], None] | None = None,
    transfer_config: TransferConfig | None = None,
) -> str:
    """Copy a local file to a local path (atomic) or an S3 object (managed transfer).

    ``progress`` is called with the number of bytes sent since the last call.
    """
    src = local_path(local)
    if not src.is_file():
        raise StorageError(f"no file at {src} to upload: check the path")
    if not is_s3(uri):
        with atomic_file(uri) as tmp:
            shutil.copyfile(src, tmp)
        return os.fspath(uri)
    t = s3_target("upload", uri)
    config = transfer_config or _transfer_config()
    retrying(t, lambda: t.connection.client.upload_file(str(src), t.bucket, t.key, Config=config, Callback=progress))
    return os.fspath(uri)


def download_file(uri: str | os.PathLike, local: str | os.PathLike) -> Path:
    """Copy a local file or S3 object to ``local``; the local file appears only when complete."""
    if not is_s3(uri):
        data_path = local_path(uri)
        if not data_path.is_file():
            raise StorageError(f"no file at {data_path}: check the path, or run the step that writes it first")
        with atomic_file(local) as tmp:
            shutil.copyfile(data_path, tmp)
        return local_path(local)
    t = s3_target("download", uri)
    with atomic_file(local) as tmp:
        retrying(t, lambda: t.connection.client.download_file(t.bucket, t.key, str(tmp), Config=_transfer_config()))
    return local_path(local)


def _relative_files(local_dir: Path) -> dict[str, int]:
    """Relative POSIX path → size of every file under ``local_dir``, sorted."""
    files = {}
    for p in sorted(local_dir.rglob("*")):
        if p.is_file():
            files[p.relative_to(local_dir).as_posix()] = p.stat().st_size
    return files


def _key_under(prefix_key: str, relative: str) -> str:
    return f"{prefix_key.rstrip('/')}/{relative}" if prefix_key.strip("/") else relative


def upload_dir(local_dir: str | os.PathLike, uri_prefix: str | os.PathLike) -> str:
    """Copy a directory to a local directory (atomic rename) or under an S3 prefix.

    On S3 the ``_COMPLETE`` marker (relative keys and sizes) is deleted first and written
    last, so readers can tell a finished upload from an interrupted one. Objects left by an
    earlier upload to the same prefix stay, but are not in the marker, so never downloaded.
    """
    src = local_path(local_dir)
    if not src.is_dir():
        raise StorageError(f"no directory at {src} to upload: check the path")
    files = _relative_files(src)
    if COMPLETE_MARKER in files:
        raise StorageError(f"{src / COMPLETE_MARKER} uses the reserved name {COMPLETE_MARKER!r}: rename it")
    if not is_s3(uri_prefix):
        with atomic_dir(uri_prefix) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
        return os.fspath(uri_prefix)
    connection = connect()
    bucket, prefix_key = split_s3(uri_prefix)
    marker = Target("upload", bucket, _key_under(prefix_key, COMPLETE_MARKER), connection)
    retrying(marker, lambda: connection.client.delete_object(Bucket=bucket, Key=marker.key))
    for relative in files:
        t = Target("upload", bucket, _key_under(prefix_key, relative), connection)
        retrying(
            t,
            lambda t=t, relative=relative: connection.client.upload_file(
                str(src / relative), t.bucket, t.key, Config=_transfer_config()
            ),
        )
    body = json.dumps({"files": [{"key": k, "size": n} for k, n in files.items()]}, indent=1).encode()
    retrying(marker, lambda: connection.client.put_object(Bucket=bucket, Key=marker.key, Body=body))
    return os.fspath(uri_prefix)


def _parse_marker(body: bytes, marker_uri: str) -> dict[str, int]:
    """Relative key → size from a ``_COMPLETE`` marker, refusing keys that leave the prefix."""
    try:
        entries = {e["key"]: int(e["size"]) for e in json.loads(body)["files"]}
    except (ValueError, KeyError, TypeError) as e:
        raise StorageError(f"{marker_uri} is not a valid {COMPLETE_MARKER} marker ({e}); rerun the upload") from e
    for key in entries:
        if (problem := unsafe_key_problem(key)) is not None:
            raise StorageError(f"{marker_uri} lists the unsafe key {key!r} ({problem}); rerun the upload")
    return entries


def download_prefix(uri_prefix: str | os.PathLike, local_dir: str | os.PathLike, require_marker: bool = True) -> Path:
    """Copy a completed S3 prefix (or a local directory) to ``local_dir`` atomically.

    Only the objects listed in the ``_COMPLETE`` marker are fetched, and their sizes are
    checked; a prefix without the marker is refused — unless ``require_marker`` is False
    (user-uploaded source data, e.g. `aws s3 sync`), where every object under it is fetched.
    """
    if not is_s3(uri_prefix):
        src = local_path(uri_prefix)
        if not src.is_dir():
            raise StorageError(f"no directory at {src}: check the path, or run the step that writes it first")
        with atomic_dir(local_dir) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
        return local_path(local_dir)
    connection = connect()
    bucket, prefix_key = split_s3(uri_prefix)
    marker = Target("download", bucket, _key_under(prefix_key, COMPLETE_MARKER), connection)
    prefix_uri = f"s3://{bucket}/{prefix_key.rstrip('/')}"

    def read_marker() -> bytes:
        try:
            return connection.client.get_object(Bucket=bucket, Key=marker.key)["Body"].read()
        except botocore.exceptions.ClientError as e:
            if error_code_and_status(e)[0] == "NoSuchKey":
                raise StorageError(
                    f"incomplete upload at {prefix_uri}: {COMPLETE_MARKER} marker missing; the "
                    "writer was interrupted (or never ran) — rerun the step"
                ) from e
            raise

    def list_sizes() -> dict[str, int]:
        base = prefix_key.rstrip("/") + "/" if prefix_key.strip("/") else ""
        pages = connection.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base)
        return {
            o["Key"][len(base) :]: o["Size"]
            for page in pages
            for o in page.get("Contents", [])
            if not o["Key"].endswith("/")
        }

    try:
        entries = _parse_marker(retrying(marker, read_marker), marker.uri)
    except StorageError as e:
        if require_marker or isinstance(e, EndpointTimeoutError):  # a silent endpoint is not asked twice
            raise
        entries = retrying(marker, list_sizes)
        if not entries:
            raise StorageError(f"nothing under {prefix_uri}: check the bucket and prefix") from None
    with atomic_dir(local_dir) as tmp:
        destinations = local_paths_for_keys(tmp, entries, prefix_uri)
        for relative, size in entries.items():
            t = Target("download", bucket, _key_under(prefix_key, relative), connection)
            dest = destinations[relative]
            dest.parent.mkdir(parents=True, exist_ok=True)
            retrying(
                t,
                lambda t=t, dest=dest: connection.client.download_file(
                    t.bucket, t.key, str(dest), Config=_transfer_config()
                ),
            )
            if dest.stat().st_size != size:
                raise StorageError(
                    f"{t.uri} is {dest.stat().st_size} bytes but {COMPLETE_MARKER} records {size}: "
                    "the prefix was rewritten after it was completed — rerun the step"
                )
    return local_path(local_dir)


def list_prefix(uri: str | os.PathLike) -> list[str]:
    """Every file under a local directory or object under an S3 "directory", sorted.

    S3 prefixes are taken as directories: ``s3://b/run1`` lists ``run1/...``, not ``run10/...``.
    """
    if not is_s3(uri):
        root = local_path(uri)
        return sorted(str(p) for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    t = s3_target("list", uri)
    prefix = t.key.rstrip("/") + "/" if t.key.strip("/") else ""

    def list_all() -> list[str]:
        pages = t.connection.client.get_paginator("list_objects_v2").paginate(Bucket=t.bucket, Prefix=prefix)
        return sorted(f"s3://{t.bucket}/{o['Key']}" for page in pages for o in page.get("Contents", []))

    return retrying(t, list_all)
