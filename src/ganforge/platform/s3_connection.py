"""The S3 client: endpoint, credentials, botocore retries and the per-operation time budget.

One client per distinct environment (endpoint, keys, retry and timeout variables) is built and
reused; botocore's own retries of a call stop once another try could not end within the
budget (``GANFORGE_S3_TIMEOUT_S``).
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from ..fileio import StorageError

_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")


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
class Connection:
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
def _connection_for(environment: tuple[str | None, ...]) -> Connection:
    # ``environment`` is only the cache key: building a client costs a few hundred ms, and
    # boto3 clients are thread-safe, so one per distinct environment is reused.
    budget = time_budget_from_env()
    session = boto3.session.Session()
    client = session.client("s3", endpoint_url=endpoint_url_from_env(), config=_botocore_config(budget))
    _install_budget(client, budget)
    return Connection(session, client)


def connect() -> Connection:
    return _connection_for(tuple(os.environ.get(name) for name in _CLIENT_ENVIRONMENT))


def s3_client() -> Any:
    """A boto3 S3 client for the endpoint and credentials in the environment (shared, thread-safe)."""
    return connect().client
