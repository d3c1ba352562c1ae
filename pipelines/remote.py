"""Submit a compiled pipeline to a Kubeflow Pipelines endpoint, and schedule recurring retraining.

Everything talks to KFP through ``kfp.Client`` (v2beta1 REST). Failures a user can fix (no
endpoint, refused connection, missing token, wrong path prefix, a bad cron expression, an
unknown pipeline parameter) come back as ``SubmitError`` with the fix in the message.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import kfp
import yaml

from ganforge.config import PRESETS, PROFILES
from ganforge.platform import run_knobs

from .cron import validate_cron
from .kfp_client import (
    HEALTHZ_PATH,
    LOCAL_HOSTS,
    PORT_FORWARD,
    SubmitError,
    check_endpoint,
    default_job_name,
    experiment_name,
    http_error,
    is_local_name,
    kfp_errors,
    make_client,
    resolve_host,
    resolve_token,
    run_name,
    run_revision,
    unreachable_error,
)
from .overrides import PARAMETER as OVERRIDES
from .overrides import add_set_argument, overrides_parameter

__all__ = [
    "HEALTHZ_PATH",
    "LOCAL_HOSTS",
    "PORT_FORWARD",
    "SubmitError",
    "check_endpoint",
    "check_images",
    "check_params",
    "default_job_name",
    "delete_schedule",
    "disable_schedule",
    "experiment_name",
    "find_recurring_run",
    "http_error",
    "is_local_name",
    "kfp_errors",
    "main_schedule",
    "main_submit",
    "main_unschedule",
    "make_client",
    "package_images",
    "parse_param_args",
    "pipeline_parameters",
    "resolve_host",
    "resolve_token",
    "run_name",
    "run_revision",
    "schedule",
    "service_account",
    "submit",
    "unreachable_error",
    "validate_cron",
]


def package_images(package_path: str | Path) -> list[str]:
    """Every container image a compiled pipeline's tasks run in."""
    spec = next(yaml.safe_load_all(Path(package_path).read_text()))
    executors = spec.get("deploymentSpec", {}).get("executors", {})
    return sorted({e["container"]["image"] for e in executors.values() if e.get("container", {}).get("image")})


def check_images(host: str, images: list[str], force: bool = False) -> None:
    """Refuse images on this machine's registry (``localhost…``) when KFP is elsewhere: its nodes
    would pull them from their own localhost. ``force`` (``--force-image``) sends them anyway."""
    from urllib.parse import urlsplit

    if force or is_local_name(urlsplit(host).hostname or ""):
        return
    local = [i for i in images if "/" in i and is_local_name(i.split("/", 1)[0].rsplit(":", 1)[0])]
    if local:
        raise SubmitError(
            f"image {local[0]} is on this machine's registry, which the KFP cluster at {host} cannot pull from: "
            f"push the images to the cluster's registry and set IMAGE_REGISTRY=registry.example.com/ganforge "
            f"(make; or GANFORGE_IMAGE=…), or pass --force-image (make: FORCE_IMAGE=1) if that cluster has it"
        )


def pipeline_parameters(package_path: str | Path) -> dict[str, str]:
    """Root parameter name → KFP parameter type (``NUMBER_INTEGER``, ``STRING``, …) of a compiled package."""
    path = Path(package_path)
    if not path.is_file():
        raise SubmitError(f"compiled pipeline {path} not found: run `python -m pipelines compile <name>` first")
    spec = next(yaml.safe_load_all(path.read_text()))
    definitions = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    return {name: d.get("parameterType", "STRING") for name, d in definitions.items()}


def check_params(params: dict[str, Any], parameter_types: dict[str, str]) -> dict[str, Any]:
    """``params`` unchanged if every key is a parameter of the pipeline; else a SubmitError listing them."""
    unknown = sorted(set(params) - set(parameter_types))
    if unknown:
        raise SubmitError(f"unknown pipeline parameter(s) {unknown}; this pipeline takes {sorted(parameter_types)}")
    return params


def _coerce(name: str, text: str, parameter_type: str) -> Any:
    try:
        if parameter_type == "NUMBER_INTEGER":
            return int(text)
        if parameter_type == "NUMBER_DOUBLE":
            return float(text)
        if parameter_type == "BOOLEAN":
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if parameter_type in ("LIST", "STRUCT"):
            return json.loads(text)
    except ValueError:
        raise SubmitError(f"--param {name}={text}: {name} is {parameter_type}, {text!r} is not") from None
    return text


def parse_param_args(pairs: list[str], parameter_types: dict[str, str]) -> dict[str, Any]:
    """``["epochs=5", "source=s3://b/x"]`` → typed values, checked against the pipeline's parameters."""
    raw: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SubmitError(f"--param {pair!r}: write KEY=VALUE, e.g. --param epochs=5")
        raw[key.strip()] = value
    check_params(raw, parameter_types)
    return {k: _coerce(k, v, parameter_types[k]) for k, v in raw.items()}


def service_account() -> str:
    """The runs' Kubernetes ServiceAccount (k8s/base RBAC); KFP_SERVICE_ACCOUNT overrides it."""
    return os.environ.get("KFP_SERVICE_ACCOUNT", "ganforge-pipeline-runner")


def submit(
    package_path: str | Path,
    pipeline: str,
    params: dict[str, Any],
    *,
    host: str | None = None,
    token: str | None = None,
    namespace: str | None = None,
    experiment: str | None = None,
) -> dict:
    """Start one run of a compiled pipeline; returns ``{"run_id", "run_url", "experiment"}``."""
    check_params(params, pipeline_parameters(package_path))
    host = resolve_host(host)
    experiment = experiment or experiment_name(pipeline)
    client = make_client(host, token, namespace)
    with kfp_errors(host):
        result = client.create_run_from_pipeline_package(
            str(package_path),
            arguments=dict(params),
            run_name=run_name(pipeline, run_revision()),
            experiment_name=experiment,
            namespace=namespace,
            service_account=service_account(),
        )
    ui = os.environ.get("KF_PIPELINES_UI_ENDPOINT", host).rstrip("/")
    return {"run_id": result.run_id, "run_url": f"{ui}/#/runs/details/{result.run_id}", "experiment": experiment}


def _recurring_runs_in(client: kfp.Client, experiment_id: str) -> list:
    runs, page_token = [], ""
    while True:
        page = client.list_recurring_runs(experiment_id=experiment_id, page_size=100, page_token=page_token)
        runs.extend(page.recurring_runs or [])
        page_token = page.next_page_token or ""
        if not page_token:
            return runs


def _experiment_id(client: kfp.Client, pipeline: str, namespace: str | None, host: str) -> str:
    name = experiment_name(pipeline)
    try:
        return client.get_experiment(experiment_name=name, namespace=namespace).experiment_id
    except ValueError:  # kfp.Client's way of saying "no experiment with that name"
        raise SubmitError(
            f"no experiment {name!r} at {host}, so nothing is scheduled for {pipeline} there "
            f"(schedule it with `python -m pipelines schedule {pipeline} --cron '…'`)"
        ) from None


def schedule(
    package_path: str | Path,
    pipeline: str,
    params: dict[str, Any],
    cron: str,
    *,
    host: str | None = None,
    token: str | None = None,
    namespace: str | None = None,
    job_name: str | None = None,
) -> dict:
    """Create a recurring run (no overlap, no backfill, no caching); returns its id, name and cron."""
    cron = validate_cron(cron)
    check_params(params, pipeline_parameters(package_path))
    host = resolve_host(host)
    job_name = job_name or default_job_name(pipeline)
    client = make_client(host, token, namespace)
    with kfp_errors(host):
        experiment_id = client.create_experiment(experiment_name(pipeline), namespace=namespace).experiment_id
        clashes = [r.recurring_run_id for r in _recurring_runs_in(client, experiment_id) if r.display_name == job_name]
        if clashes:
            raise SubmitError(
                f"a recurring run named {job_name!r} already exists (id {', '.join(clashes)}): "
                f"delete it first (`python -m pipelines schedule {pipeline} --delete`) "
                f"or pass another --job-name"
            )
        # Caching off: a scheduled retrain with unchanged inputs must train again, not reuse outputs.
        recurring = client.create_recurring_run(
            experiment_id,
            job_name,
            cron_expression=cron,
            max_concurrency=1,
            no_catchup=True,
            pipeline_package_path=str(package_path),
            params=dict(params),
            enable_caching=False,
            service_account=service_account(),
        )
    return {"recurring_run_id": recurring.recurring_run_id, "job_name": job_name, "cron": cron}


def find_recurring_run(client: kfp.Client, pipeline: str, name_or_id: str, *, host: str, namespace: str | None = None):
    """The recurring run in the pipeline's experiment whose display name or id is ``name_or_id``."""
    with kfp_errors(host):
        experiment_id = _experiment_id(client, pipeline, namespace, host)
        runs = _recurring_runs_in(client, experiment_id)
    matches = [r for r in runs if name_or_id in (r.display_name, r.recurring_run_id)]
    if not matches:
        known = ", ".join(f"{r.display_name} ({r.recurring_run_id})" for r in runs) or "none"
        raise SubmitError(
            f"no recurring run {name_or_id!r} in experiment {experiment_name(pipeline)!r} at {host}; existing: {known}"
        )
    if len(matches) > 1:
        raise SubmitError(
            f"{len(matches)} recurring runs are named {name_or_id!r} "
            f"({', '.join(r.recurring_run_id for r in matches)}): pass one id instead"
        )
    return matches[0]


def _act_on_schedule(
    action: str, name_or_id: str, pipeline: str, host: str | None, token: str | None, namespace: str | None
) -> dict:
    host = resolve_host(host)
    client = make_client(host, token, namespace)
    recurring = find_recurring_run(client, pipeline, name_or_id, host=host, namespace=namespace)
    with kfp_errors(host):
        if action == "disabled":
            client.disable_recurring_run(recurring.recurring_run_id)
        else:
            client.delete_recurring_run(recurring.recurring_run_id)
    return {"recurring_run_id": recurring.recurring_run_id, "job_name": recurring.display_name, "action": action}


def disable_schedule(
    name_or_id: str, pipeline: str, *, host: str | None = None, token: str | None = None, namespace: str | None = None
) -> dict:
    """Pause a recurring run (it stays listed and can be re-enabled in the UI)."""
    return _act_on_schedule("disabled", name_or_id, pipeline, host, token, namespace)


def delete_schedule(
    name_or_id: str, pipeline: str, *, host: str | None = None, token: str | None = None, namespace: str | None = None
) -> dict:
    """Remove a recurring run for good."""
    return _act_on_schedule("deleted", name_or_id, pipeline, host, token, namespace)


def _common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", choices=sorted(PRESETS))
    p.add_argument(
        "--profile",
        default="full",
        choices=sorted(PROFILES),
        help="profile the pipeline is compiled with (its default `profile` parameter)",
    )
    p.add_argument("--package", help="an already compiled pipeline YAML (default: compile to build/<name>.yaml)")
    p.add_argument("--host", help="KFP endpoint (default $KFP_HOST or $KF_PIPELINES_ENDPOINT)")
    p.add_argument("--namespace", help="Kubeflow profile namespace (multi-user clusters)")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"pipeline parameter, repeatable ({', '.join(run_knobs.NAMES)})",
    )
    p.add_argument(
        "--force-image",
        action="store_true",
        help="send a localhost/… image to a KFP host that is not this machine (normally refused)",
    )
    add_set_argument(p)


def checked_overrides(args: argparse.Namespace) -> str | None:
    """``--set`` values as the ``overrides`` parameter, checked against the typed config (of the
    ``profile`` the run will use) before compiling or connecting to anything."""
    profile = next(
        (pair.partition("=")[2] for pair in args.param if pair.partition("=")[0].strip() == "profile"), args.profile
    )
    if args.set and any(pair.partition("=")[0].strip() == OVERRIDES for pair in args.param):
        raise SubmitError(f"give config overrides with --set group.field=value, not --param {OVERRIDES}=… as well")
    return overrides_parameter(args.pipeline, profile, args.set)


def with_overrides(params: dict[str, Any], overrides: str | None, parameter_types: dict[str, str]) -> dict[str, Any]:
    """``params`` plus the ``overrides`` parameter when there are any (checked against the package)."""
    if overrides is None:
        return params
    return check_params({**params, OVERRIDES: overrides}, parameter_types)


def _compiled_package(args: argparse.Namespace) -> Path:
    if args.package:
        return Path(args.package)
    from .compile import compile_pipeline

    return compile_pipeline(args.pipeline, Path("build") / f"{args.pipeline}.yaml", args.profile)


def main_submit(argv: list[str]) -> int:
    """``python -m pipelines submit NAME [--param k=v …]``: compile, then start one run on KFP."""
    p = argparse.ArgumentParser(prog="python -m pipelines submit", description="start one run on a KFP cluster")
    _common_arguments(p)
    p.add_argument("--experiment", help="KFP experiment (default ganforge-<name>)")
    args = p.parse_args(argv)
    overrides = checked_overrides(args)
    host = resolve_host(args.host)  # before compiling: a missing endpoint is the likelier mistake
    package = _compiled_package(args)
    types = pipeline_parameters(package)
    check_images(host, package_images(package), args.force_image)
    params = with_overrides(parse_param_args(args.param, types), overrides, types)
    with contextlib.redirect_stdout(sys.stderr):  # kfp.Client prints links; stdout stays one JSON document
        result = submit(package, args.pipeline, params, host=host, namespace=args.namespace, experiment=args.experiment)
    print(json.dumps(result, indent=2))
    return 0


def main_schedule(argv: list[str]) -> int:
    """``python -m pipelines schedule NAME --cron '0 0 3 * * 0'`` (or ``--disable`` / ``--delete``)."""
    p = argparse.ArgumentParser(
        prog="python -m pipelines schedule", description="recurring retraining on KFP (cron: 6 fields, seconds first)"
    )
    _common_arguments(p)
    p.add_argument("--cron", help="e.g. '0 0 3 * * 0' = Sundays 03:00:00 (sec min hour dom month dow)")
    p.add_argument(
        "--job-name",
        help="recurring run name (default ganforge-<name>-retrain); for --disable/--delete also a recurring run id",
    )
    action = p.add_mutually_exclusive_group()
    action.add_argument("--disable", action="store_true", help="pause the recurring run")
    action.add_argument("--delete", action="store_true", help="delete the recurring run")
    args = p.parse_args(argv)
    job = args.job_name or default_job_name(args.pipeline)
    if args.disable or args.delete:
        act = disable_schedule if args.disable else delete_schedule
        result = act(job, args.pipeline, host=args.host, namespace=args.namespace)
    else:
        if not args.cron:
            p.error("--cron is required to create a schedule, e.g. --cron '0 0 3 * * 0'")
        cron = validate_cron(args.cron)  # before compiling: fail fast on the likelier mistake
        overrides = checked_overrides(args)
        host = resolve_host(args.host)
        package = _compiled_package(args)
        types = pipeline_parameters(package)
        check_images(host, package_images(package), args.force_image)
        params = with_overrides(parse_param_args(args.param, types), overrides, types)
        with contextlib.redirect_stdout(sys.stderr):
            result = schedule(package, args.pipeline, params, cron, host=host, namespace=args.namespace, job_name=job)
    print(json.dumps(result, indent=2))
    return 0


def main_unschedule(argv: list[str]) -> int:
    """``python -m pipelines unschedule NAME [--delete]``: pause (default) or delete the recurring run."""
    p = argparse.ArgumentParser(prog="python -m pipelines unschedule", description="pause or delete a schedule")
    p.add_argument("pipeline", choices=sorted(PRESETS))
    p.add_argument("--job-name", help="recurring run name or id (default ganforge-<name>-retrain)")
    p.add_argument("--host", help="KFP endpoint (default $KFP_HOST or $KF_PIPELINES_ENDPOINT)")
    p.add_argument("--namespace", help="Kubeflow profile namespace (multi-user clusters)")
    p.add_argument("--delete", action="store_true", help="delete instead of pausing")
    args = p.parse_args(argv)
    act = delete_schedule if args.delete else disable_schedule
    result = act(
        args.job_name or default_job_name(args.pipeline), args.pipeline, host=args.host, namespace=args.namespace
    )
    print(json.dumps(result, indent=2))
    return 0
