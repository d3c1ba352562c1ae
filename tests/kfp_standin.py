"""A stand-in for the Kubeflow Pipelines API server, for tests: it records requests, it is not KFP.

No cluster runs here and nothing is ever executed or scheduled. It is a small real HTTP server
on 127.0.0.1 (``http.server`` in a thread, free port) that answers the v2beta1 REST calls that
``kfp.Client`` 2.17 makes for submitting and scheduling (paths read from kfp_server_api):

* GET    /apis/v2beta1/healthz
* GET    /apis/v2beta1/experiments?filter=<display_name EQUALS …>&namespace=…
* POST   /apis/v2beta1/experiments
* POST   /apis/v2beta1/runs
* POST   /apis/v2beta1/recurringruns
* GET    /apis/v2beta1/recurringruns?experiment_id=…&page_size=…&page_token=…
* POST   /apis/v2beta1/recurringruns/<id>:disable
* DELETE /apis/v2beta1/recurringruns/<id>

Every request is recorded (method, path, query, headers with lower-cased names including
``authorization``, JSON body).
With ``token`` set, a request without ``Authorization: Bearer <token>`` gets 401; with
``prefix`` set (e.g. "/pipeline"), the API lives only under that prefix, as behind the Kubeflow
dashboard. Errors use the grpc-gateway body shape ``{"code", "message"}``. JSON field names follow
kfp_server_api's ``attribute_map`` (the wire names the real server uses).
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

_TS = "2026-01-01T00:00:00Z"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict | None


@dataclass
class _State:
    experiments: dict[str, dict] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    recurring_runs: dict[str, dict] = field(default_factory=dict)


def _display_name_filter(raw: str | None) -> str | None:
    """The display_name an EQUALS filter asks for (the only filter kfp.Client sends here)."""
    if not raw:
        return None
    for predicate in json.loads(raw).get("predicates", []):
        # kfp.Client sends the operation as the enum's number (EQUALS = 1), the gateway also takes the name
        if predicate.get("key") == "display_name" and predicate.get("operation") in ("EQUALS", 1):
            return predicate.get("string_value", predicate.get("stringValue"))
    return None


class KFPStandin:
    """Start with ``with KFPStandin() as kfp_api: …``; ``kfp_api.url`` is the endpoint."""

    def __init__(self, token: str | None = None, prefix: str = "", page_size_cap: int = 2, login_page: bool = False):
        self.token = token
        # Answer everything with an HTML page, as an auth proxy (Dex, oauth2-proxy) does for anonymous calls.
        self.login_page = login_page
        self.prefix = prefix.rstrip("/")
        # Small pages so that clients that do not follow next_page_token miss items here as on KFP.
        self.page_size_cap = page_size_cap
        self.requests: list[Request] = []
        self.state = _State()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> KFPStandin:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def calls(self, method: str, path_pattern: str) -> list[Request]:
        """Recorded requests with this method whose path matches the regex (prefix stripped)."""
        return [
            r
            for r in self.requests
            if r.method == method and re.fullmatch(path_pattern, r.path[len(self.prefix) :] if self.prefix else r.path)
        ]

    def _route(self, method: str, path: str, query: dict[str, str], body: dict | None) -> tuple[int, dict]:
        s = self.state
        if method == "GET" and path == "/apis/v2beta1/healthz":
            return 200, {"multi_user": False, "pipeline_store": "database"}
        if path == "/apis/v2beta1/experiments":
            if method == "GET":
                wanted = _display_name_filter(query.get("filter"))
                found = [e for e in s.experiments.values() if wanted is None or e["display_name"] == wanted]
                return 200, {"experiments": found, "total_size": len(found)} if found else {}
            if method == "POST":
                experiment = {
                    **body,
                    "experiment_id": str(uuid.uuid4()),
                    "created_at": _TS,
                    "storage_state": "AVAILABLE",
                }
                s.experiments[experiment["experiment_id"]] = experiment
                return 200, experiment
        if method == "POST" and path == "/apis/v2beta1/runs":
            run = {**body, "run_id": str(uuid.uuid4()), "created_at": _TS, "state": "PENDING"}
            s.runs[run["run_id"]] = run
            return 200, run
        if path == "/apis/v2beta1/recurringruns":
            if method == "POST":
                status = "ENABLED" if body.get("mode") == "ENABLE" else "DISABLED"
                recurring = {**body, "recurring_run_id": str(uuid.uuid4()), "created_at": _TS, "status": status}
                s.recurring_runs[recurring["recurring_run_id"]] = recurring
                return 200, recurring
            if method == "GET":
                return 200, self._page(query)
        match = re.fullmatch(r"/apis/v2beta1/recurringruns/([^/:]+)(:disable)?", path)
        if match and match.group(1) in s.recurring_runs:
            recurring_id, disable = match.groups()
            if method == "POST" and disable:
                s.recurring_runs[recurring_id].update(status="DISABLED", mode="DISABLE")
                return 200, {}
            if method == "DELETE" and not disable:
                del s.recurring_runs[recurring_id]
                return 200, {}
        if match:
            return 404, {"code": 5, "message": f"recurring run {match.group(1)} not found"}
        return 404, {"code": 5, "message": f"no route for {method} {path} in the KFP stand-in"}

    def _page(self, query: dict[str, str]) -> dict:
        experiment_id = query.get("experiment_id")
        runs = [
            r
            for r in self.state.recurring_runs.values()
            if experiment_id is None or r.get("experiment_id") == experiment_id
        ]
        start = int(query.get("page_token") or 0)
        size = min(int(query.get("page_size") or 10), self.page_size_cap)
        page = runs[start : start + size]
        more = start + size < len(runs)
        # "recurringRuns" is the wire name (proto json_name, kfp_server_api's attribute_map), unlike its siblings
        return {
            "recurringRuns": page,
            "total_size": len(runs),
            **({"next_page_token": str(start + size)} if more else {}),
        }

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlparse(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with self._lock:
            self.requests.append(
                Request(handler.command, url.path, query, {k.lower(): v for k, v in handler.headers.items()}, body)
            )
            if self.token and handler.headers.get("Authorization") != f"Bearer {self.token}":
                status, payload = 401, {"code": 16, "message": "Unauthenticated: missing or invalid bearer token"}
            elif not url.path.startswith(self.prefix + "/apis/"):
                status, payload = 404, {"code": 5, "message": f"404 page not found: {url.path}"}
            else:
                status, payload = self._route(handler.command, url.path[len(self.prefix) :], query, body)
        data, content_type = json.dumps(payload).encode(), "application/json"
        if self.login_page:
            status, data, content_type = 200, b"<!DOCTYPE html><html><body>Log in</body></html>", "text/html"
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                standin._handle(self)

            do_POST = do_DELETE = do_GET

            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

        return Handler
