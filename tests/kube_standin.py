"""A stand-in for the Kubernetes API server, for tests. No cluster runs here.

It is a small real HTTP server on 127.0.0.1 (``http.server`` in a thread) that answers the few
REST calls the ``kubernetes`` Python client makes for ``ganforge.platform.cluster_jobs.launch_and_watch``:

* POST/GET/DELETE ``/apis/<group>/<version>/namespaces/<ns>/<plural>[/<name>]`` (custom objects)
* GET ``/api/v1/namespaces/<ns>/pods?labelSelector=k=v`` and ``.../pods/<pod>/log?tailLines=N``

Nothing is scheduled or run: each GET of a job moves its ``status`` one step along a scripted
sequence of phases (``Created``, ``Running``, ``Succeeded``/``Failed``), written in the form the
real engine uses (PyTorchJob conditions; TrainJob ``Complete``/``Failed`` conditions and
``jobsStatus``). On create it invents the pods the engine would make, labelled as the engine
labels them, with the log text the test scripted.

``ExecutingKubeStandin`` goes one step further: it runs each created job's container command
as local processes (one per node) with the env the engine would inject, and reports the job's
status from their exit codes.

Run as a module (``python -m kube_standin``, e.g. as torchrun's worker) it stands in for
``ganforge.cli`` instead: each rank records its RANK/WORLD_SIZE, argv and config file to $PROBE_OUT.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

_TS = "2026-01-01T00:00:00Z"


@dataclass
class Scenario:
    """What the stand-in does: phases returned on successive GETs (the last one repeats) and pod logs."""

    phases: list[str]
    pod_log: str = ""
    failure_reason: str = "BackoffLimitExceeded"
    failure_message: str = "job has reached the specified backoff limit"


@dataclass
class Recorded:
    created: list[dict] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    gets: int = 0
    log_requests: list[tuple[str, int]] = field(default_factory=list)
    pod_selectors: list[str] = field(default_factory=list)


def _condition(ctype: str, reason: str = "", message: str = "") -> dict:
    return {
        "type": ctype,
        "status": "True",
        "reason": reason or ctype,
        "message": message or ctype,
        "lastTransitionTime": _TS,
    }


def _pytorchjob_status(phases_so_far: list[str], sc: Scenario) -> dict:
    conds = []
    for p in phases_so_far:
        if p == "Failed":
            conds.append(_condition("Failed", sc.failure_reason, sc.failure_message))
        else:
            conds.append(_condition(p))
    # Like the operator: earlier conditions flip to False when a later one holds.
    for c in conds[:-1]:
        c["status"] = "False"
    return {"conditions": conds, "startTime": _TS}


def _trainjob_status(phase: str, sc: Scenario) -> dict:
    jobs = [
        {
            "name": "node",
            "active": int(phase == "Running"),
            "ready": int(phase == "Running"),
            "succeeded": int(phase == "Succeeded"),
            "failed": int(phase == "Failed"),
            "suspended": 0,
        }
    ]
    conds = []
    if phase == "Succeeded":
        conds.append(_condition("Complete", "JobsCompleted", "jobs completed"))
    elif phase == "Failed":
        conds.append(_condition("Failed", sc.failure_reason, sc.failure_message))
    return {"conditions": conds, "jobsStatus": jobs}


def _pods_for(obj: dict) -> list[dict]:
    name = obj["metadata"]["name"]
    if obj["kind"] == "PyTorchJob":
        label = "training.kubeflow.org/job-name"
        names = []
        for rtype, rs in obj["spec"]["pytorchReplicaSpecs"].items():
            names += [f"{name}-{rtype.lower()}-{i}" for i in range(rs.get("replicas", 1))]
    else:
        label = "jobset.sigs.k8s.io/jobset-name"
        names = [f"{name}-node-0-{i}" for i in range(obj["spec"]["trainer"].get("numNodes", 1))]
    return [
        {
            "metadata": {"name": n, "namespace": obj["metadata"]["namespace"], "labels": {label: name}},
            "status": {"phase": "Running"},
        }
        for n in names
    ]


class KubeStandin:
    """Start with ``with KubeStandin(Scenario([...])) as kube: ...``; ``kube.host`` is the base URL."""

    def __init__(self, scenario: Scenario):
        self.scenario = scenario
        self.recorded = Recorded()
        self.objects: dict[tuple, dict] = {}
        self.get_count: dict[tuple, int] = {}
        self.pods: list[dict] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> KubeStandin:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _created(self, obj: dict) -> None:
        """Called (under the lock) after a job is created; nothing runs in the scripted stand-in."""

    def _deleted(self, name: str) -> None:
        """Called (under the lock) after a job is deleted."""

    def _pod_log(self, pod_name: str) -> str:
        return self.scenario.pod_log

    def _status_after_get(self, key: tuple, obj: dict) -> dict:
        n = self.get_count[key] = self.get_count.get(key, 0) + 1
        phases = self.scenario.phases[:n] if n <= len(self.scenario.phases) else self.scenario.phases
        if obj["kind"] == "PyTorchJob":
            return _pytorchjob_status(phases, self.scenario)
        return _trainjob_status(phases[-1], self.scenario)

    def _handler_class(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _send(self, code: int, body, content_type: str = "application/json") -> None:
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._send(
                    code,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "reason": reason,
                        "message": message,
                        "code": code,
                    },
                )

            def _route(self):
                url = urlparse(self.path)
                parts = [p for p in url.path.split("/") if p]
                return parts, parse_qs(url.query)

            def do_POST(self) -> None:
                parts, _ = self._route()
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if len(parts) != 6 or parts[0] != "apis" or parts[3] != "namespaces":
                    return self._status(404, "NotFound", f"no route POST {self.path}")
                key = (parts[1], parts[2], parts[4], parts[5], body["metadata"]["name"])
                with standin._lock:
                    if key in standin.objects:
                        return self._status(409, "AlreadyExists", f"{parts[5]} {key[-1]} already exists")
                    obj = json.loads(json.dumps(body))
                    obj["metadata"].update(uid="standin-uid", creationTimestamp=_TS)
                    standin.objects[key] = obj
                    standin.recorded.created.append(body)
                    standin.pods += _pods_for(obj)
                    standin._created(obj)
                self._send(201, obj)

            def do_GET(self) -> None:
                parts, query = self._route()
                if parts[:2] == ["api", "v1"] and len(parts) == 5 and parts[4] == "pods":
                    selector = query.get("labelSelector", [""])[0]
                    standin.recorded.pod_selectors.append(selector)
                    wanted = dict(kv.split("=", 1) for kv in selector.split(",") if kv)
                    items = [
                        p
                        for p in standin.pods
                        if p["metadata"]["namespace"] == parts[3]
                        and all(p["metadata"]["labels"].get(k) == v for k, v in wanted.items())
                    ]
                    return self._send(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
                if parts[:2] == ["api", "v1"] and len(parts) == 7 and parts[6] == "log":
                    tail = int(query.get("tailLines", ["0"])[0]) or None
                    standin.recorded.log_requests.append((parts[5], tail or 0))
                    lines = [f"[{parts[5]}] {line}" for line in standin._pod_log(parts[5]).splitlines()]
                    return self._send(200, "\n".join(lines[-tail:] if tail else lines) + "\n", "text/plain")
                if parts[:1] == ["apis"] and len(parts) == 7:
                    key = (parts[1], parts[2], parts[4], parts[5], parts[6])
                    with standin._lock:
                        obj = standin.objects.get(key)
                        if obj is None:
                            return self._status(404, "NotFound", f"{parts[5]} {parts[6]} not found")
                        standin.recorded.gets += 1
                        obj["status"] = standin._status_after_get(key, obj)
                    return self._send(200, obj)
                self._status(404, "NotFound", f"no route GET {self.path}")

            def do_DELETE(self) -> None:
                parts, _ = self._route()
                key = (parts[1], parts[2], parts[4], parts[5], parts[6]) if len(parts) == 7 else None
                with standin._lock:
                    if key not in standin.objects:
                        return self._status(404, "NotFound", f"no object at {self.path}")
                    del standin.objects[key]
                    standin._deleted(key[-1])
                    standin.recorded.deleted.append(key[-1])
                    standin.pods = [p for p in standin.pods if key[-1] not in p["metadata"]["labels"].values()]
                self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

        return Handler


@dataclass
class _Pod:
    name: str
    log: Path
    process: subprocess.Popen | None = None
    start_error: str = ""
    """Why the container never started (e.g. a missing Secret key), as the kubelet reports it."""


def _node_containers(obj: dict) -> list[tuple[dict, dict]]:
    """(container with command/env, engine-injected env) per node, in the order of ``_pods_for``.

    The variables are those the engines set (see ganforge.platform.cluster_jobs): TrainJob's torch plugin
    ``PET_*`` including the master address; PyTorchJob's ``PET_NNODES/NPROC_PER_NODE/NODE_RANK``
    plus ``MASTER_ADDR/MASTER_PORT`` and the node-level ``WORLD_SIZE``/``RANK``. The master is
    127.0.0.1 on a free port (on a cluster: the node-0 Service and port 23456).
    """
    # Imported here: run as a module (the worker), this file may lack the checkout root on its path.
    from pipelines.stack import free_port

    port = str(free_port())
    if obj["kind"] == "TrainJob":
        trainer = obj["spec"]["trainer"]
        n = trainer.get("numNodes", 1)
        return [
            (
                trainer,
                {
                    "PET_NNODES": str(n),
                    "PET_NPROC_PER_NODE": str(trainer.get("numProcPerNode", 1)),
                    "PET_NODE_RANK": str(i),
                    "PET_MASTER_ADDR": "127.0.0.1",
                    "PET_MASTER_PORT": port,
                },
            )
            for i in range(n)
        ]
    containers = []
    for rs in obj["spec"]["pytorchReplicaSpecs"].values():
        containers += [rs["template"]["spec"]["containers"][0]] * rs.get("replicas", 1)
    n = len(containers)
    return [
        (
            c,
            {
                "PET_NNODES": str(n),
                "PET_NPROC_PER_NODE": str(obj["spec"].get("nprocPerNode", "1")),
                "PET_NODE_RANK": str(i),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
                "WORLD_SIZE": str(n),
                "RANK": str(i),
            },
        )
        for i, c in enumerate(containers)
    ]


class ExecutingKubeStandin(KubeStandin):
    """The stand-in API server, except that each created job's nodes really run. No cluster runs here.

    On create, every node ("pod") of the job runs the manifest's container command as a local
    process group, with the manifest's env (plain values, and ``secretKeyRef`` resolved from
    ``secrets`` as the kubelet would: a missing Secret or key fails the pod with
    CreateContainerConfigError) plus the variables the engine injects (``_node_containers``).
    The job's status follows the processes: Running while any runs, Succeeded when all exit 0,
    Failed when one exits non-zero (or cannot start); pod logs are the processes' output.

    Not modelled: images (the command runs with this venv's python/torchrun on PATH),
    scheduling, resources, volumes, restarts (restartPolicy/backoffLimit), network isolation.
    Each pod gets its own HOME, TMPDIR and GANFORGE_CACHE (its local disk), and the in-pod
    config path /tmp/ganforge-config.json is rewritten to a file of its own, since all pods
    here share one /tmp. The pod environment does not inherit the test process's; its ganforge is this
    checkout's (an image is built from it), not whichever one the venv has installed.
    """

    def __init__(
        self,
        workdir: str | Path,
        secrets: dict[str, dict[str, str]] | None = None,
        base_env: dict[str, str] | None = None,
    ):
        super().__init__(Scenario(phases=["Created"]))
        self.workdir = Path(workdir)
        self.secrets = secrets or {}
        self.base_env = base_env or {
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
        }
        self.jobs: dict[str, list[_Pod]] = {}

    def __exit__(self, *exc) -> None:
        for name in list(self.jobs):
            self._stop(name)
        super().__exit__(*exc)

    def _resolve_env(self, env_list: list[dict], namespace: str) -> tuple[dict[str, str], str]:
        env, error = {}, ""
        for e in env_list:
            if "value" in e:
                env[e["name"]] = e["value"]
                continue
            ref = e["valueFrom"]["secretKeyRef"]
            secret = self.secrets.get(ref["name"])
            if secret is None:
                error = error or f'Error: secret "{ref["name"]}" not found'
            elif ref["key"] not in secret:
                error = error or f"Error: couldn't find key {ref['key']} in Secret {namespace}/{ref['name']}"
            else:
                env[e["name"]] = secret[ref["key"]]
        return env, error

    def _start_pod(self, name: str, container: dict, engine_env: dict, namespace: str) -> _Pod:
        from ganforge.platform.cluster_jobs import CONFIG_PATH_IN_POD

        pod_dir = self.workdir / name
        for sub in ("home", "tmp", "cache"):
            (pod_dir / sub).mkdir(parents=True, exist_ok=True)
        pod = _Pod(name=name, log=pod_dir / "pod.log")
        env, pod.start_error = self._resolve_env(container.get("env", []), namespace)
        if pod.start_error:
            pod.log.write_text(pod.start_error + "\n")
            return pod
        env = {
            **self.base_env,
            "HOME": str(pod_dir / "home"),
            "TMPDIR": str(pod_dir / "tmp"),
            "GANFORGE_CACHE": str(pod_dir / "cache"),
            **env,
            **engine_env,
        }
        command = [
            arg.replace(CONFIG_PATH_IN_POD, str(pod_dir / "ganforge-config.json")) for arg in container["command"]
        ]
        with open(pod.log, "wb") as log:
            pod.process = subprocess.Popen(
                command, env=env, cwd=pod_dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return pod

    def _created(self, obj: dict) -> None:
        name, namespace = obj["metadata"]["name"], obj["metadata"]["namespace"]
        pod_names = [p["metadata"]["name"] for p in _pods_for(obj)]
        self.jobs[name] = [
            self._start_pod(pod, container, engine_env, namespace)
            for pod, (container, engine_env) in zip(pod_names, _node_containers(obj))
        ]

    def _stop(self, name: str) -> None:
        for pod in self.jobs.pop(name, []):
            if pod.process is not None and pod.process.poll() is None:
                os.killpg(pod.process.pid, signal.SIGKILL)
                pod.process.wait(timeout=60)

    def _deleted(self, name: str) -> None:
        self._stop(name)

    def _pod_log(self, pod_name: str) -> str:
        for pods in self.jobs.values():
            for pod in pods:
                if pod.name == pod_name:
                    return pod.log.read_text(errors="replace")
        return ""

    def _status_after_get(self, key: tuple, obj: dict) -> dict:
        pods = self.jobs.get(key[-1], [])
        failed = [f"pod {p.name}: {p.start_error}" for p in pods if p.start_error]
        failed += [
            f"pod {p.name} exited with code {p.process.returncode}"
            for p in pods
            if p.process is not None and p.process.poll() not in (None, 0)
        ]
        if failed:
            phase, reason = "Failed", "CreateContainerConfigError" if any(p.start_error for p in pods) else "Error"
        elif all(p.process is not None and p.process.poll() == 0 for p in pods):
            phase, reason = "Succeeded", ""
        else:
            phase, reason = "Running", ""
        sc = Scenario(phases=[phase], failure_reason=reason, failure_message="; ".join(failed))
        if obj["kind"] == "PyTorchJob":
            return _pytorchjob_status(["Created", "Running"] + ([phase] if phase != "Running" else []), sc)
        return _trainjob_status(phase, sc)


def _record_rank() -> None:
    """Stand-in for ``ganforge.cli`` as a torchrun worker: write what this rank was given to $PROBE_OUT."""
    import os
    import sys
    from pathlib import Path

    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    record = {k: os.environ.get(k) for k in keys}
    record["argv"] = sys.argv[1:]
    config_path = sys.argv[sys.argv.index("--config-json") + 1] if "--config-json" in sys.argv else None
    record["config"] = json.loads(Path(config_path).read_text()) if config_path else None
    Path(os.environ["PROBE_OUT"], f"rank{record['RANK']}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    _record_rank()
