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
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions
from boto3.exceptions import RetriesExceededError, S3UploadFailedError
from boto3.s3.transfer import TransferConfig

from ..fileio import StorageError, atomic_dir, atomic_file, atomic_write_bytes, is_s3, local_path

log = logging.getLogger(__name__)
T = TypeVar("T")

COMPLETE_MARKER = "_COMPLETE"
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
# Error codes that S3, MinIO and proxies in front of them use for "try again later".
_TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "PriorRequestNotComplete",
        "XMinioServerNotInitialized",
    }
)
_TRANSIENT_EXCEPTIONS = (
    botocore.exceptions.ConnectionError,  # refused, DNS, connect timeout, proxy
    botocore.exceptions.HTTPClientError,  # read timeout, connection closed, broken stream
    botocore.exceptions.IncompleteReadError,
)


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


def endpoint_url_from_env() -> str | None:
    """The S3 endpoint override from the environment, or None for AWS itself."""
    for name in _ENDPOINT_VARIABLES:
        if os.environ.get(name):
            return os.environ[name]
    return None


TIMEOUT_ENV = "GANFORGE_S3_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 60.0


def time_budget_from_env() -> float:
    """Seconds one S3 operation may spend without success (``GANFORGE_S3_TIMEOUT_S``, default 60)."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        budget = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        budget = -1.0
    if not 0 < budget < float("inf"):
        raise StorageError(
            f"{TIMEOUT_ENV}={raw!r} must be a positive number of seconds (default {DEFAULT_TIMEOUT_S:g})"
        )
    return budget


class EndpointTimeoutError(StorageError):
    """The S3 endpoint did not answer within the operation's time budget (``GANFORGE_S3_TIMEOUT_S``)."""


class BudgetSpent(botocore.exceptions.BotoCoreError):
    """Raised inside botocore's retry loop: the operation's time budget is spent; do not retry."""

    fmt = "time budget of {budget:g} s spent; last error: {last}"


def _botocore_config(budget: float) -> botocore.config.Config:
    # Explicit client config wins over the environment in botocore, so read the standard
    # variables here to keep them working.
    try:
        max_attempts = int(os.environ.get("AWS_MAX_ATTEMPTS", "3"))
    except ValueError as e:
        raise StorageError(f"AWS_MAX_ATTEMPTS must be a whole number: {e}") from e
    return botocore.config.Config(
        retries={"mode": os.environ.get("AWS_RETRY_MODE", "standard"), "total_max_attempts": max_attempts},
        connect_timeout=min(10.0, budget / 2),
        read_timeout=socket_timeout(budget),
    )


def socket_timeout(budget: float) -> float:
    """Seconds a socket waits for an answer: half the budget (at most 60), so a retry still fits."""
    return min(60.0, budget / 2)


def _install_budget(client: Any, budget: float) -> None:
    """Stop botocore's own retries of one API call when another try could not end within ``budget``.

    The call's start goes into its request context (shared by its retries, also in s3transfer's
    worker threads); the check runs first among the ``needs-retry`` handlers and raises
    BudgetSpent instead of letting botocore sleep (at most 2^attempts s in its standard mode)
    and wait another socket timeout.
    """

    def stamp(context: dict | None = None, **_: Any) -> None:
        if context is not None:
            context.setdefault("ganforge_started", time.monotonic())

    def veto(
        request_dict: dict | None = None,
        caught_exception: BaseException | None = None,
        response: Any = None,
        attempts: int = 1,
        **_: Any,
    ) -> None:
        started = ((request_dict or {}).get("context") or {}).get("ganforge_started")
        failed = caught_exception is not None or (response is not None and response[0].status_code >= 500)
        next_try_ends = time.monotonic() + min(20.0, 2.0**attempts) + socket_timeout(budget)
        if failed and started is not None and next_try_ends - started > budget:
            last = caught_exception or f"HTTP {response[0].status_code}"
            raise BudgetSpent(budget=budget, last=last)

    client.meta.events.register("before-call.s3", stamp)
    client.meta.events.register_first("needs-retry.s3", veto)


@dataclass(frozen=True)
class _Connection:
    """A boto3 session and its S3 client, kept together to explain errors."""

    session: boto3.session.Session
    client: Any

    @property
    def endpoint(self) -> str:
        return self.client.meta.endpoint_url

    def credential_source(self) -> str:
        creds = self.session.get_credentials()
        return creds.method if creds is not None else "none found"


# Everything in the environment that changes which endpoint, keys, retries or timeouts a client uses.
_CLIENT_ENVIRONMENT = _ENDPOINT_VARIABLES + (
    TIMEOUT_ENV,
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)


@functools.lru_cache(maxsize=8)
def _connection_for(environment: tuple[str | None, ...]) -> _Connection:
    # ``environment`` is only the cache key: building a client costs a few hundred ms, and
    # boto3 clients are thread-safe, so one per distinct environment is reused.
    budget = time_budget_from_env()
    session = boto3.session.Session()
    client = session.client("s3", endpoint_url=endpoint_url_from_env(), config=_botocore_config(budget))
    _install_budget(client, budget)
    return _Connection(session, client)


def _connect() -> _Connection:
    return _connection_for(tuple(os.environ.get(name) for name in _CLIENT_ENVIRONMENT))


def s3_client() -> Any:
    """A boto3 S3 client for the endpoint and credentials in the environment (shared, thread-safe)."""
    return _connect().client


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries of a whole S3 operation, on top of botocore's per-request retries."""

    attempts: int
    base_delay_s: float
    max_delay_s: float = 30.0

    def delay_before(self, attempt: int) -> float:
        """Backoff before ``attempt`` (2, 3, ...): exponential with jitter, capped."""
        return min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 2)) * random.uniform(0.5, 1.0)


def retry_policy_from_env() -> RetryPolicy:
    """The retry policy from ``GANFORGE_S3_ATTEMPTS`` and ``GANFORGE_S3_BACKOFF_S``."""
    try:
        attempts = int(os.environ.get("GANFORGE_S3_ATTEMPTS", "4"))
        base = float(os.environ.get("GANFORGE_S3_BACKOFF_S", "1.0"))
    except ValueError as e:
        raise StorageError(f"GANFORGE_S3_ATTEMPTS / GANFORGE_S3_BACKOFF_S must be numbers: {e}") from e
    if attempts < 1 or base < 0:
        raise StorageError("GANFORGE_S3_ATTEMPTS must be >= 1 and GANFORGE_S3_BACKOFF_S >= 0")
    return RetryPolicy(attempts=attempts, base_delay_s=base)


def _root_cause(error: BaseException) -> BaseException:
    # boto3's managed transfers wrap the ClientError: S3UploadFailedError keeps it only as the
    # implicit __context__, RetriesExceededError as last_exception.
    if isinstance(error, S3UploadFailedError) and error.__context__ is not None:
        return _root_cause(error.__context__)
    if isinstance(error, RetriesExceededError) and error.last_exception is not None:
        return _root_cause(error.last_exception)
    return error


def _error_code_and_status(error: BaseException) -> tuple[str, int]:
    if isinstance(error, botocore.exceptions.ClientError):
        response = error.response
        return (
            str(response.get("Error", {}).get("Code", "")),
            int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0),
        )
    return "", 0


def is_transient(error: BaseException) -> bool:
    """True for failures worth retrying: connection problems, 5xx, throttling."""
    cause = _root_cause(error)
    if isinstance(cause, _TRANSIENT_EXCEPTIONS):
        return True
    code, status = _error_code_and_status(cause)
    return code in _TRANSIENT_CODES or status >= 500 or status == 429


@dataclass(frozen=True)
class _Target:
    """What an S3 operation works on, for error messages."""

    operation: str
    bucket: str
    key: str
    connection: _Connection

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def _bucket_exists(target: _Target) -> bool | None:
    try:
        target.connection.client.head_bucket(Bucket=target.bucket)
        return True
    except botocore.exceptions.ClientError as e:
        return False if _error_code_and_status(e)[0] in ("404", "NoSuchBucket") else None
    except botocore.exceptions.BotoCoreError:
        return None


def _fix_for(code: str, status: int, target: _Target) -> str:
    if code in ("404", "NoSuchKey", "NoSuchBucket") or status == 404:
        if code == "NoSuchBucket" or _bucket_exists(target) is False:
            return (
                f"bucket {target.bucket!r} does not exist at this endpoint: create it "
                f"(aws s3 mb s3://{target.bucket}) or fix the bucket name / endpoint"
            )
        return f"no object at {target.uri}: check the key, or run the step that writes it first"
    if code == "InvalidAccessKeyId":
        return (
            "the access key id is unknown to this endpoint: check AWS_ACCESS_KEY_ID "
            "(and that the endpoint is the server those keys belong to)"
        )
    if code == "SignatureDoesNotMatch":
        return "the secret key does not match the access key id: check AWS_SECRET_ACCESS_KEY"
    if code in ("AccessDenied", "403") or status == 403:
        return (
            f"these credentials may not {target.operation} in bucket {target.bucket!r}: "
            "check the access keys, or grant s3:GetObject, s3:PutObject, s3:ListBucket "
            f"and s3:DeleteObject on arn:aws:s3:::{target.bucket}"
        )
    return "check the URI, the endpoint and the credentials"


def _explain(error: BaseException, target: _Target) -> StorageError:
    """A StorageError naming the object, endpoint, credential source and the fix."""
    cause = _root_cause(error)
    where = f"endpoint {target.connection.endpoint}"
    if isinstance(cause, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)):
        return StorageError(
            f"S3 {target.operation} {target.uri} failed: no usable AWS credentials ({cause}); "
            f"{where}. Fix: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (on the cluster from "
            "a Kubernetes Secret), or AWS_PROFILE"
        )
    code, status = _error_code_and_status(cause)
    return StorageError(
        f"S3 {target.operation} {target.uri} failed: {code or type(cause).__name__} "
        f"(HTTP {status or '-'}: {cause}); {where}; credentials from "
        f"{target.connection.credential_source()!r}. Fix: {_fix_for(code, status, target)}"
    )


def _retrying(target: _Target, action: Callable[[], T], policy: RetryPolicy | None = None) -> T:
    """Run ``action``; retry transient S3 failures with backoff within the time budget, explain permanent ones."""
    policy = policy or retry_policy_from_env()
    budget = time_budget_from_env()
    deadline = time.monotonic() + budget
    for attempt in range(1, policy.attempts + 1):
        try:
            return action()
        except StorageError:
            raise
        except (
            botocore.exceptions.BotoCoreError,
            botocore.exceptions.ClientError,
            S3UploadFailedError,
            RetriesExceededError,
        ) as e:
            cause = _root_cause(e)
            delay = policy.delay_before(attempt + 1)
            out_of_time = time.monotonic() + delay + socket_timeout(budget) > deadline  # no room for another try
            if isinstance(cause, BudgetSpent) or (is_transient(e) and out_of_time):
                last = cause.kwargs.get("last", cause) if isinstance(cause, BudgetSpent) else cause
                raise EndpointTimeoutError(
                    f"S3 {target.operation} {target.uri} failed: endpoint {target.connection.endpoint} did not answer "
                    f"within the {budget:g} s budget ({TIMEOUT_ENV}; attempt {attempt}, last error: {last}). "
                    "Fix: check that the endpoint is up and answering (AWS_ENDPOINT_URL / MLFLOW_S3_ENDPOINT_URL), "
                    f"or raise {TIMEOUT_ENV}"
                ) from e
            if not is_transient(e):
                raise _explain(e, target) from e
            if attempt == policy.attempts:
                raise StorageError(
                    f"S3 {target.operation} {target.uri} failed after {policy.attempts} attempts "
                    f"(each with botocore's own retries) on transient errors, last: "
                    f"{_root_cause(e)}; endpoint {target.connection.endpoint}. Fix: check that "
                    "the endpoint is up and reachable, or raise GANFORGE_S3_ATTEMPTS"
                ) from e
            log.warning(
                "S3 %s %s: transient error (%s); retry %d/%d in %.2fs",
                target.operation,
                target.uri,
                _root_cause(e),
                attempt,
                policy.attempts - 1,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")


def _s3_target(operation: str, uri: str | os.PathLike, connection: _Connection | None = None) -> _Target:
    bucket, key = split_s3(uri)
    return _Target(operation, bucket, key, connection or _connect())


def write_bytes(uri: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to a local path (atomic rename) or an S3 object (one PUT); return the URI."""
    if not is_s3(uri):
        return str(atomic_write_bytes(uri, data))
    t = _s3_target("write", uri)
    _retrying(t, lambda: t.connection.client.put_object(Bucket=t.bucket, Key=t.key, Body=data))
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
    t = _s3_target("read", uri)
    return _retrying(t, lambda: t.connection.client.get_object(Bucket=t.bucket, Key=t.key)["Body"].read())


def read_text(uri: str | os.PathLike) -> str:
    """``read_bytes`` decoded as UTF-8."""
    return read_bytes(uri).decode()


def exists(uri: str | os.PathLike) -> bool:
    """True if the local path or S3 object exists (an S3 "directory" is not an object)."""
    if not is_s3(uri):
        return local_path(uri).exists()
    t = _s3_target("check", uri)

    def head() -> bool:
        try:
            t.connection.client.head_object(Bucket=t.bucket, Key=t.key)
            return True
        except botocore.exceptions.ClientError as e:
            code, status = _error_code_and_status(e)
            # A missing bucket is a configuration error, not a missing object.
            if (code in ("404", "NoSuchKey") or status == 404) and _bucket_exists(t) is not False:
                return False
            raise

    return _retrying(t, head)


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
    t = _s3_target("upload", uri)
    config = transfer_config or _transfer_config()
    _retrying(t, lambda: t.connection.client.upload_file(str(src), t.bucket, t.key, Config=config, Callback=progress))
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
    t = _s3_target("download", uri)
    with atomic_file(local) as tmp:
        _retrying(t, lambda: t.connection.client.download_file(t.bucket, t.key, str(tmp), Config=_transfer_config()))
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
    connection = _connect()
    bucket, prefix_key = split_s3(uri_prefix)
    marker = _Target("upload", bucket, _key_under(prefix_key, COMPLETE_MARKER), connection)
    _retrying(marker, lambda: connection.client.delete_object(Bucket=bucket, Key=marker.key))
    for relative in files:
        t = _Target("upload", bucket, _key_under(prefix_key, relative), connection)
        _retrying(
            t,
            lambda t=t, relative=relative: connection.client.upload_file(
                str(src / relative), t.bucket, t.key, Config=_transfer_config()
            ),
        )
    body = json.dumps({"files": [{"key": k, "size": n} for k, n in files.items()]}, indent=1).encode()
    _retrying(marker, lambda: connection.client.put_object(Bucket=bucket, Key=marker.key, Body=body))
    return os.fspath(uri_prefix)


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
    connection = _connect()
    bucket, prefix_key = split_s3(uri_prefix)
    marker = _Target("download", bucket, _key_under(prefix_key, COMPLETE_MARKER), connection)
    prefix_uri = f"s3://{bucket}/{prefix_key.rstrip('/')}"

    def read_marker() -> bytes:
        try:
            return connection.client.get_object(Bucket=bucket, Key=marker.key)["Body"].read()
        except botocore.exceptions.ClientError as e:
            if _error_code_and_status(e)[0] == "NoSuchKey":
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
        entries = _parse_marker(_retrying(marker, read_marker), marker.uri)
    except StorageError as e:
        if require_marker or isinstance(e, EndpointTimeoutError):  # a silent endpoint is not asked twice
            raise
        entries = _retrying(marker, list_sizes)
        if not entries:
            raise StorageError(f"nothing under {prefix_uri}: check the bucket and prefix") from None
    with atomic_dir(local_dir) as tmp:
        destinations = local_paths_for_keys(tmp, entries, prefix_uri)
        for relative, size in entries.items():
            t = _Target("download", bucket, _key_under(prefix_key, relative), connection)
            dest = destinations[relative]
            dest.parent.mkdir(parents=True, exist_ok=True)
            _retrying(
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
    t = _s3_target("list", uri)
    prefix = t.key.rstrip("/") + "/" if t.key.strip("/") else ""

    def list_all() -> list[str]:
        pages = t.connection.client.get_paginator("list_objects_v2").paginate(Bucket=t.bucket, Prefix=prefix)
        return sorted(f"s3://{t.bucket}/{o['Key']}" for page in pages for o in page.get("Contents", []))

    return _retrying(t, list_all)
