"""Bounded retries of whole S3 operations, and errors that name the object, endpoint and fix."""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import botocore.exceptions
from boto3.exceptions import RetriesExceededError, S3UploadFailedError

from ..fileio import StorageError
from .s3_connection import TIMEOUT_ENV, BudgetSpent, Connection, connect, socket_timeout, time_budget_from_env
from .s3_paths import split_s3

# The retry warnings are part of ganforge.platform.s3's log, where users and tests filter them.
log = logging.getLogger("ganforge.platform.s3")
T = TypeVar("T")

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


class EndpointTimeoutError(StorageError):
    """The S3 endpoint did not answer within the operation's time budget (``GANFORGE_S3_TIMEOUT_S``)."""


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


def root_cause(error: BaseException) -> BaseException:
    # boto3's managed transfers wrap the ClientError: S3UploadFailedError keeps it only as the
    # implicit __context__, RetriesExceededError as last_exception.
    if isinstance(error, S3UploadFailedError) and error.__context__ is not None:
        return root_cause(error.__context__)
    if isinstance(error, RetriesExceededError) and error.last_exception is not None:
        return root_cause(error.last_exception)
    return error


def error_code_and_status(error: BaseException) -> tuple[str, int]:
    if isinstance(error, botocore.exceptions.ClientError):
        response = error.response
        return (
            str(response.get("Error", {}).get("Code", "")),
            int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0),
        )
    return "", 0


def is_transient(error: BaseException) -> bool:
    """True for failures worth retrying: connection problems, 5xx, throttling."""
    cause = root_cause(error)
    if isinstance(cause, _TRANSIENT_EXCEPTIONS):
        return True
    code, status = error_code_and_status(cause)
    return code in _TRANSIENT_CODES or status >= 500 or status == 429


@dataclass(frozen=True)
class Target:
    """What an S3 operation works on, for error messages."""

    operation: str
    bucket: str
    key: str
    connection: Connection

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def bucket_exists(target: Target) -> bool | None:
    try:
        target.connection.client.head_bucket(Bucket=target.bucket)
        return True
    except botocore.exceptions.ClientError as e:
        return False if error_code_and_status(e)[0] in ("404", "NoSuchBucket") else None
    except botocore.exceptions.BotoCoreError:
        return None


def _fix_for(code: str, status: int, target: Target) -> str:
    if code in ("404", "NoSuchKey", "NoSuchBucket") or status == 404:
        if code == "NoSuchBucket" or bucket_exists(target) is False:
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


def _explain(error: BaseException, target: Target) -> StorageError:
    """A StorageError naming the object, endpoint, credential source and the fix."""
    cause = root_cause(error)
    where = f"endpoint {target.connection.endpoint}"
    if isinstance(cause, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)):
        return StorageError(
            f"S3 {target.operation} {target.uri} failed: no usable AWS credentials ({cause}); "
            f"{where}. Fix: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (on the cluster from "
            "a Kubernetes Secret), or AWS_PROFILE"
        )
    code, status = error_code_and_status(cause)
    return StorageError(
        f"S3 {target.operation} {target.uri} failed: {code or type(cause).__name__} "
        f"(HTTP {status or '-'}: {cause}); {where}; credentials from "
        f"{target.connection.credential_source()!r}. Fix: {_fix_for(code, status, target)}"
    )


def retrying(target: Target, action: Callable[[], T], policy: RetryPolicy | None = None) -> T:
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
            cause = root_cause(e)
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
                    f"{root_cause(e)}; endpoint {target.connection.endpoint}. Fix: check that "
                    "the endpoint is up and reachable, or raise GANFORGE_S3_ATTEMPTS"
                ) from e
            log.warning(
                "S3 %s %s: transient error (%s); retry %d/%d in %.2fs",
                target.operation,
                target.uri,
                root_cause(e),
                attempt,
                policy.attempts - 1,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")


def s3_target(operation: str, uri: str | os.PathLike, connection: Connection | None = None) -> Target:
    bucket, key = split_s3(uri)
    return Target(operation, bucket, key, connection or connect())
