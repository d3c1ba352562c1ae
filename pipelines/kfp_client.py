"""The KFP endpoint: host and token from the environment, a reachability check, ``kfp.Client``,
run and experiment names, and KFP/HTTP failures turned into ``SubmitError`` with the fix."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import kfp
import kfp_server_api
import urllib3

from ganforge.errors import GanforgeError
from ganforge.platform.settings import git_commit

DEFAULT_SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
PORT_FORWARD = "kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80"
HEALTHZ_PATH = "/apis/v2beta1/healthz"


class SubmitError(GanforgeError, RuntimeError):
    """A KFP submission or schedule failed for a reason the user can fix; the message says how."""


def resolve_host(host: str | None = None) -> str:
    """The KFP endpoint: ``host``, else $KFP_HOST, else $KF_PIPELINES_ENDPOINT (trailing / dropped)."""
    resolved = host or os.environ.get("KFP_HOST") or os.environ.get("KF_PIPELINES_ENDPOINT")
    if not resolved:
        raise SubmitError(
            "no KFP endpoint configured: set KFP_HOST=https://… (or KF_PIPELINES_ENDPOINT), "
            "e.g. `make submit PIPELINE=dcgan KFP_HOST=http://localhost:8080` after "
            f"`{PORT_FORWARD}`"
        )
    if not resolved.startswith(("http://", "https://")):
        raise SubmitError(f"KFP endpoint {resolved!r} has no scheme: write http://{resolved} or https://{resolved}")
    return resolved.rstrip("/")


def resolve_token(token: str | None = None) -> str | None:
    """The bearer token: ``token``, else $KF_PIPELINES_TOKEN, else the in-cluster token file, else None."""
    if token:
        return token
    if os.environ.get("KF_PIPELINES_TOKEN"):
        return os.environ["KF_PIPELINES_TOKEN"]
    token_file = Path(os.environ.get("KF_PIPELINES_SA_TOKEN_PATH", DEFAULT_SA_TOKEN_PATH))
    if token_file.is_file():
        return token_file.read_text().strip() or None
    return None


def run_revision() -> str:
    """The revision in a KFP run name: ``settings.git_commit``, short; "nogit" when unknown."""
    sha = git_commit()
    return "nogit" if sha == "unknown" else sha[:7]


def experiment_name(pipeline: str) -> str:
    """The KFP experiment that groups every run and schedule of one pipeline."""
    return f"ganforge-{pipeline}"


def run_name(pipeline: str, sha: str, now: dt.datetime | None = None) -> str:
    """``ganforge-<pipeline>-<sha>-<UTC timestamp>``: which code, which time, at a glance in the UI."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"ganforge-{pipeline}-{sha}-{now.strftime('%Y%m%dT%H%M%SZ')}"


def default_job_name(pipeline: str) -> str:
    """The recurring run's name when none is given: one retraining schedule per pipeline."""
    return f"ganforge-{pipeline}-retrain"


def _fix_for_status(status: int, host: str) -> str:
    if status in (401, 403):
        return (
            f"check the auth token: set KF_PIPELINES_TOKEN (or mount one at KF_PIPELINES_SA_TOKEN_PATH, "
            f"default {DEFAULT_SA_TOKEN_PATH}); behind the Kubeflow dashboard the token must be allowed "
            f"in the profile namespace (pass --namespace)"
        )
    if status == 404:
        return (
            f"check the path prefix: behind the Kubeflow central dashboard the API lives under /pipeline "
            f"(KFP_HOST={host}/pipeline); with `{PORT_FORWARD}` use KFP_HOST=http://localhost:8080"
        )
    if status >= 500:
        return "the KFP API server failed: check `kubectl -n kubeflow logs deploy/ml-pipeline`"
    return "the request was rejected; see the server's message above"


def _server_message(body: str | bytes | None) -> str:
    """The ``message`` field of a grpc-gateway error body, or a short slice of the raw body."""
    if not body:
        return ""
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
    try:
        return str(json.loads(text).get("message") or text[:300])
    except (ValueError, AttributeError):
        return text[:300]


def http_error(host: str, status: int, reason: str, body: str | bytes | None = None) -> SubmitError:
    """A SubmitError for an HTTP error status from ``host``, saying what to check."""
    message = _server_message(body)
    detail = f": {message}" if message else ""
    return SubmitError(f"KFP at {host} answered HTTP {status} {reason}{detail} — {_fix_for_status(status, host)}")


def unreachable_error(host: str, cause: object) -> SubmitError:
    """A SubmitError for a connection that never got an HTTP answer (refused, DNS, TLS)."""
    return SubmitError(
        f"could not connect to KFP at {host} ({cause}): is the endpoint right and reachable? For a cluster "
        f"without ingress run `{PORT_FORWARD}` and use KFP_HOST=http://localhost:8080"
    )


def check_endpoint(host: str, token: str | None, timeout_s: float = 10.0) -> None:
    """One GET of the healthz endpoint, so refusals surface as a clear error.

    kfp.Client's own healthz check retries 5 times with 5 s sleeps on any API error, and a login
    page answers 200 with HTML; both would hide the real problem.
    """
    request = urllib.request.Request(host + HEALTHZ_PATH, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    # No proxy: kfp.Client (urllib3) ignores proxy environment variables too.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout_s) as response:
            content_type = response.headers.get("Content-Type", "")
            body = response.read(2048)
    except urllib.error.HTTPError as e:
        raise http_error(host, e.code, e.reason, e.read(2048)) from None
    except (urllib.error.URLError, OSError) as e:
        raise unreachable_error(host, getattr(e, "reason", e)) from None
    if "html" in content_type or body.lstrip().startswith(b"<"):
        raise SubmitError(
            f"KFP at {host} answered {HEALTHZ_PATH} with an HTML page (a login page?), not the API: "
            f"{_fix_for_status(401, host)}; or check the path prefix (/pipeline)"
        )


@contextlib.contextmanager
def kfp_errors(host: str) -> Iterator[None]:
    """Turn kfp_server_api / urllib3 failures inside the block into SubmitError naming ``host``."""
    try:
        yield
    except kfp_server_api.ApiException as e:
        if e.status == 0:  # kfp_server_api reports network and SSL failures as status 0
            raise unreachable_error(host, e.reason) from None
        raise http_error(host, e.status, e.reason or "", e.body) from None
    except urllib3.exceptions.HTTPError as e:
        raise unreachable_error(host, getattr(e, "reason", e)) from None


def make_client(host: str | None = None, token: str | None = None, namespace: str | None = None) -> kfp.Client:
    """A kfp.Client for the resolved endpoint and token, after checking the endpoint answers."""
    host = resolve_host(host)
    token = resolve_token(token)
    check_endpoint(host, token)
    with warnings.catch_warnings(), kfp_errors(host):
        warnings.filterwarnings("ignore", message="This client only works with Kubeflow Pipeline v2")
        return kfp.Client(host=host, existing_token=token, namespace=namespace or "kubeflow")


LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def is_local_name(host: str) -> bool:
    import ipaddress

    host = host.strip("[]").lower()
    if host in LOCAL_HOSTS or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
