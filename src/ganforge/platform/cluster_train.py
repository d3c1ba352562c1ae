"""Training on the cluster through S3: the pipeline step that launches the job, and its pods.

Launch side (``launch_cluster_training``, called by ``steps.train_step`` when
``train.launcher`` is ``trainjob`` or ``pytorchjob``): the dataset goes to S3 (the prep step's
mirror when it holds the same data), a TrainJob/PyTorchJob runs ``torchrun -m ganforge.platform.worker
train --data s3://… --out s3://… --resume`` on the nodes, and the finished run directory is
downloaded into the step's output directory.

Pod side (``train_staged``, called by the pods' ``ganforge.platform.worker`` and by ``ganforge train`` for
``s3://`` URIs): the job's pods share no disk with the step that launched them, only S3. So the run is
staged on the pod's local disk and S3 holds the state:

* ``--data s3://…`` is downloaded (only a completed prefix, see ``s3.download_prefix``)
  into ``$GANFORGE_CACHE/staging/`` by local rank 0 of each node; the node's other ranks wait.
* ``--out s3://…``: training writes into a staging directory that is emptied first, so nothing
  but S3 decides where training resumes. With ``--resume`` every object under OUT
  (checkpoint.pt, config.json, samples/) is fetched first, so the replacement of a killed pod
  continues from the last uploaded checkpoint.
* Rank 0 deletes OUT/_COMPLETE when it starts, uploads config.json, new samples and then
  checkpoint.pt (one atomic object) after every checkpoint, and at the end the whole run
  directory with ``s3.upload_dir``, whose ``_COMPLETE`` marker (written last) tells
  readers that training finished.

No MLflow or KFP here: metrics leave through ``on_metrics`` as in ``train.train``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch.distributed as dist

from .. import fileio
from ..checkpoint import CHECKPOINT_NAME, SAMPLES_DIR, read_checkpoint
from ..config import PipelineConfig
from ..paths import cache_dir
from ..train import MetricsFn, TrainResult, init_distributed, train
from . import s3
from .cluster_jobs import ClusterSpecError, kubernetes_apis, launch_and_watch, spec_from_config
from .gpu_nodes import gpus_per_node
from .settings import ARTIFACT_ROOT_ENV, MLFLOW_RUN_ID_ENV, WORKER_MODULE, Settings

S3_SECRET = "ganforge-s3"
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# Rank 0 logs metrics into the pipeline's MLflow run; with MLflow's basic-auth (k8s/base) it needs
# the pipeline's MLflow user, from the same Secret as the step (only when the step has it).
MLFLOW_SECRET = "ganforge-mlflow"
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
# ServiceAccount of the job's pods: no RoleBinding, no token mounted (k8s/base/training-identity.yaml);
# the admission policy there admits TrainJob/PyTorchJob pods only under this identity.
TRAINING_SERVICE_ACCOUNT = "ganforge-training"
# Non-secret settings the pods need, copied from the launching step's environment (which
# gets them from the ganforge-env ConfigMap on the cluster).
FORWARDED_ENV = (
    "AWS_ENDPOINT_URL",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "MLFLOW_TRACKING_URI",
    "GANFORGE_S3_ATTEMPTS",
    "GANFORGE_S3_BACKOFF_S",
    "GANFORGE_S3_TIMEOUT_S",
)


def staging_dir(uri: str, kind: str) -> Path:
    """``$GANFORGE_CACHE/staging/KIND-HASH-nodeN``: one local directory per URI and node.

    The node rank (torchrun's GROUP_RANK) is part of the name so that several "nodes" started
    on one machine do not share, and wipe, each other's staging directory.
    """
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return cache_dir() / "staging" / f"{kind}-{digest}-node{os.environ.get('GROUP_RANK', '0')}"


def _relative_key(object_uri: str, prefix_uri: str) -> str:
    return object_uri[len(prefix_uri.rstrip("/")) + 1 :]


def pull_run(out_uri: str, local_dir: Path) -> int | None:
    """Copy every object under ``out_uri`` (but the completion marker) into ``local_dir``.

    Returns the step of the fetched checkpoint.pt, or None when OUT holds no checkpoint yet.
    """
    uris = {_relative_key(uri, out_uri): uri for uri in s3.list_prefix(out_uri)}
    # "folder/" placeholder objects are skipped; a key decides the local path only if it stays inside local_dir
    # (no "..", no "//abs"), fits the file system's name length and is not also another key's folder.
    wanted = [r for r in uris if r != s3.COMPLETE_MARKER and not r.endswith("/")]
    for relative, dest in s3.local_paths_for_keys(local_dir, wanted, out_uri).items():
        s3.download_file(uris[relative], dest)
    ckpt = local_dir / CHECKPOINT_NAME
    return int(read_checkpoint(ckpt)["step"]) if ckpt.is_file() else None


def mark_incomplete(out_uri: str) -> None:
    """Delete OUT/_COMPLETE: the prefix is being rewritten, so readers must not trust it yet.

    Without this, a retrained prefix could keep a marker whose sizes happen to match the new
    (intermediate) files, and a reader would take a half-trained run for a finished one.
    """
    marker = fileio.join(out_uri, s3.COMPLETE_MARKER)
    if s3.exists(marker):  # also explains a missing bucket or bad keys as a StorageError
        bucket, key = s3.split_s3(marker)
        # storage has no delete; botocore's own retries cover transient errors of this one request.
        s3.s3_client().delete_object(Bucket=bucket, Key=key)


@dataclass
class CheckpointUploader:
    """``on_checkpoint`` callback: copy the run directory's new or changed files to ``out_uri``.

    checkpoint.pt goes last, so a checkpoint in S3 implies its config and samples are there too.
    """

    local_dir: Path
    out_uri: str
    sent: dict[str, tuple[int, int]] = field(default_factory=dict, init=False, repr=False)
    """Relative path → (size, mtime_ns) of what is already in S3."""

    def _changed_files(self) -> list[str]:
        changed = []
        for p in sorted(self.local_dir.rglob("*")):
            # atomic writers leave ".name.tmp" siblings only while writing; never upload those.
            if p.is_file() and not p.name.startswith("."):
                relative = p.relative_to(self.local_dir).as_posix()
                stat = p.stat()
                if self.sent.get(relative) != (stat.st_size, stat.st_mtime_ns):
                    changed.append(relative)
        return sorted(changed, key=lambda r: r == CHECKPOINT_NAME)

    def __call__(self, step: int, path: Path) -> None:
        for relative in self._changed_files():
            local = self.local_dir / relative
            stat = local.stat()
            s3.upload_file(local, fileio.join(self.out_uri, relative))
            self.sent[relative] = (stat.st_size, stat.st_mtime_ns)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _reset_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def train_staged(
    cfg: PipelineConfig,
    data: str,
    out: str,
    *,
    resume: bool = False,
    on_metrics: MetricsFn | None = None,
    allow_config_change: bool = False,
    allow_data_change: bool = False,
) -> TrainResult:
    """``train.train`` where ``data`` and/or ``out`` may be ``s3://`` URIs (see the module docstring).

    Every rank of every node calls it (under torchrun). The returned result's paths are the
    local staging paths; the run's outputs are under ``out``.
    """
    dist_info = init_distributed()
    data_s3, out_s3 = fileio.is_s3(data), fileio.is_s3(out)
    local_data = staging_dir(data, "data") if data_s3 else Path(data)
    local_out = staging_dir(out, "run") if out_s3 else Path(out)
    if dist_info.local_rank == 0:
        if data_s3:
            s3.download_prefix(data, local_data)
        if out_s3:
            _reset_dir(local_out)
            step = pull_run(out, local_out) if resume else None
            if step is not None and dist_info.is_main:
                print(f"resuming from {fileio.join(out, CHECKPOINT_NAME)} at step {step}", file=sys.stderr, flush=True)
    if out_s3 and dist_info.is_main:
        mark_incomplete(out)
    _barrier()  # the node's other ranks read the staged data and checkpoint
    uploader = CheckpointUploader(local_out, out) if out_s3 and dist_info.is_main else None
    result = train(
        cfg,
        local_data,
        local_out,
        resume=resume,
        on_metrics=on_metrics,
        on_checkpoint=uploader,
        dist_info=dist_info,
        allow_config_change=allow_config_change,
        allow_data_change=allow_data_change,
    )
    if uploader is not None:
        s3.upload_dir(local_out, out)
    return result


def cluster_artifact_root(settings: Settings) -> str:
    """GANFORGE_ARTIFACT_ROOT, which must be an ``s3://`` URI: the job's pods share nothing else."""
    root = settings.artifact_root
    if not fileio.is_s3(root):
        raise ClusterSpecError(
            f"train.launcher trainjob/pytorchjob needs {ARTIFACT_ROOT_ENV} to be an s3:// URI (got {root!r}): the "
            "job's pods reach the data and write checkpoints only through S3. On a cluster the ConfigMap "
            "ganforge-env sets it (k8s/base/cluster-settings.yaml); locally export "
            f"{ARTIFACT_ROOT_ENV}=s3://BUCKET/PREFIX or use train.launcher=local"
        )
    return root


def training_image(settings: Settings) -> str:
    """GANFORGE_IMAGE: the image the job's nodes run (ganforge installed, torchrun on PATH)."""
    if not settings.image:
        raise ClusterSpecError(
            "GANFORGE_IMAGE is not set: the cluster training job needs the ganforge image "
            "reference (e.g. registry/ganforge-gpu:0.1.0); set it in the ConfigMap ganforge-env "
            "or the step's environment"
        )
    return settings.image


def _local_sha256(data_dir: str) -> str:
    manifest = Path(data_dir) / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{data_dir} is not a prepared dataset (no manifest.json); run the prep step first")
    return json.loads(manifest.read_text())["sha256"]


def training_data_uri(data_dir: str, run_prefix: str, split: str) -> str:
    """The dataset's S3 copy: the prep step's mirror RUN/dataset-SPLIT if complete and of the same
    data (manifest sha256), else a fresh upload of ``data_dir`` to RUN/train-data."""
    mirror_uri = fileio.join(run_prefix, f"dataset-{split}")
    local_sha = _local_sha256(data_dir)
    if s3.exists(fileio.join(mirror_uri, s3.COMPLETE_MARKER)):
        mirrored = json.loads(s3.read_text(fileio.join(mirror_uri, "manifest.json")))
        if mirrored.get("sha256") == local_sha:
            return mirror_uri
    return s3.upload_dir(data_dir, fileio.join(run_prefix, "train-data"))


def job_environment(run_id: str) -> dict[str, str]:
    """Plain env of the job's containers: FORWARDED_ENV as set here, plus the MLflow run id."""
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    if run_id:
        env[MLFLOW_RUN_ID_ENV] = run_id
    return env


def job_secret_refs() -> dict[str, tuple[str, str]]:
    """Env var → (Secret, key) of the job's pods: the S3 keys, and the MLflow user when this step has one."""
    refs = {k: (S3_SECRET, k) for k in S3_SECRET_KEYS}
    if all(os.environ.get(k) for k in MLFLOW_SECRET_KEYS):
        refs.update({k: (MLFLOW_SECRET, k) for k in MLFLOW_SECRET_KEYS})
    return refs


def launch_cluster_training(cfg: PipelineConfig, data_dir: str, out_dir: str, run_id: str, settings: Settings) -> dict:
    """Run ``cfg``'s training as a TrainJob/PyTorchJob, then download its run directory into ``out_dir``.

    The job's output prefix is ARTIFACT_ROOT/runs/RUN_ID/train-job, stable per run, so a retried
    step launches a new job that resumes from the checkpoint the last one uploaded.
    Returns step, epoch, seconds (the job's wall time, pod start-up included), img_per_s over
    that time, samples and the job's name/engine/phase.
    """
    run_prefix = fileio.join(cluster_artifact_root(settings), "runs", run_id or "no-run")
    image = training_image(settings)
    data_uri = training_data_uri(data_dir, run_prefix, cfg.data.split)
    out_uri = fileio.join(run_prefix, "train-job")
    gpus = gpus_per_node(cfg, settings.gpus_per_node)
    spec = spec_from_config(
        cfg,
        image=image,
        namespace=settings.namespace,
        data_uri=data_uri,
        out_uri=out_uri,
        engine=cfg.train.launcher,
        gpus_per_node=gpus,
        module=WORKER_MODULE,
        nnodes=cfg.train.nnodes,
        env=job_environment(run_id),
        env_from_secrets=job_secret_refs(),
        # GPU placement from GANFORGE_GPU_NODE_SELECTOR / GANFORGE_GPU_TOLERATIONS (the compiled task sets both).
        tolerations=list(settings.gpu_tolerations) if gpus else [],
        node_selector=dict(settings.gpu_node_selector) if gpus else {},
        service_account=TRAINING_SERVICE_ACCOUNT,
        # Named after the MLflow run: a retried step that finds its job still running gets a clear
        # 409 instead of starting a second job on the same S3 prefix.
        name=f"{cfg.name}-{run_id[:12]}" if run_id else None,
    )
    print(
        f"launching {spec.engine} {spec.namespace}/{spec.name}: {spec.nnodes} node(s) x {spec.nproc_per_node} "
        f"rank(s), data {data_uri}, out {out_uri}",
        file=sys.stderr,
        flush=True,
    )
    api, core_api = kubernetes_apis()
    job = launch_and_watch(
        spec,
        api,
        poll_s=settings.job_poll_s,
        core_api=core_api,
        on_phase=lambda phase: print(f"{spec.name}: {phase}", file=sys.stderr, flush=True),
    )
    s3.download_prefix(out_uri, out_dir)
    ckpt = read_checkpoint(Path(out_dir) / CHECKPOINT_NAME)
    step, seconds = int(ckpt["step"]), float(job["seconds"])
    return {
        "step": step,
        "epoch": int(ckpt["epoch"]),
        "seconds": seconds,
        "img_per_s": step * cfg.train.batch_size * cfg.train.n_critic / seconds if seconds > 0 else 0.0,
        "samples": [str(p) for p in sorted((Path(out_dir) / SAMPLES_DIR).glob("*.png"))],
        "job": job,
    }
