"""Submitting and scheduling through the real kfp.Client against a recording stand-in of the KFP API.

The stand-in (tests/kfp_standin.py) is a real HTTP server that records requests; it is not KFP
and nothing runs. These tests check what ganforge sends and how it explains refusals.
"""

# No `from __future__ import annotations` here: kfp reads the component's annotations as types.
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import remote
from pipelines.remote import SubmitError

sys.path.insert(0, str(Path(__file__).parent))
from conftest import PIPELINE_PARAMETERS  # noqa: E402
from kfp_standin import KFPStandin  # noqa: E402

TOKEN = "sa-token-from-file"


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """The real dcgan pipeline, compiled."""
    from pipelines.compile import compile_pipeline

    return compile_pipeline("dcgan", tmp_path_factory.mktemp("pkg") / "dcgan.yaml")


@pytest.fixture
def env(monkeypatch, tmp_path):
    """No endpoint or token from the machine; the token comes from a service-account token file."""
    for name in ("KFP_HOST", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_TOKEN", "KF_PIPELINES_UI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token_file))
    monkeypatch.setenv("GANFORGE_GIT_SHA", "abc1234")
    return monkeypatch


@pytest.fixture
def kfp_api(env):
    with KFPStandin(token=TOKEN) as standin:
        env.setenv("KFP_HOST", standin.url)
        yield standin


def closed_port_url() -> str:
    from pipelines.stack import free_port

    return f"http://127.0.0.1:{free_port()}"


def test_submit_sends_the_compiled_spec_parameters_experiment_run_name_and_token(kfp_api, package):
    params = {"epochs": 3, "source": "s3://data/fmnist", "promotion_margin": 0.5}
    result = remote.submit(package, "dcgan", params)

    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in kfp_api.requests)
    (create_experiment,) = kfp_api.calls("POST", "/apis/v2beta1/experiments")
    assert create_experiment.body["display_name"] == "ganforge-dcgan"
    (experiment,) = kfp_api.state.experiments.values()
    (create_run,) = kfp_api.calls("POST", "/apis/v2beta1/runs")
    run = create_run.body
    spec = run["pipeline_spec"]["pipeline_spec"]  # beside it: "platform_spec", the Kubernetes settings
    assert spec["pipelineInfo"]["name"] == "ganforge-dcgan"
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == PIPELINE_PARAMETERS
    assert run["runtime_config"]["parameters"] == params
    assert run["experiment_id"] == experiment["experiment_id"]
    assert re.fullmatch(r"ganforge-dcgan-abc1234-\d{8}T\d{6}Z", run["display_name"])
    (run_id,) = kfp_api.state.runs
    assert result == {
        "run_id": run_id,
        "run_url": f"{kfp_api.url}/#/runs/details/{run_id}",
        "experiment": "ganforge-dcgan",
    }


def test_submit_reuses_the_experiment_of_the_pipeline(kfp_api, package):
    remote.submit(package, "dcgan", {})
    remote.submit(package, "dcgan", {}, experiment="sweeps")
    remote.submit(package, "dcgan", {})
    assert [r.body["display_name"] for r in kfp_api.calls("POST", "/apis/v2beta1/experiments")] == [
        "ganforge-dcgan",
        "sweeps",
    ]
    experiment_of_run = [r.body["experiment_id"] for r in kfp_api.calls("POST", "/apis/v2beta1/runs")]
    assert experiment_of_run[0] == experiment_of_run[2] != experiment_of_run[1]


def test_submit_rejects_a_parameter_the_pipeline_does_not_take(kfp_api, package):
    with pytest.raises(SubmitError, match=r"unknown pipeline parameter.*'epoch'.*fid_samples"):
        remote.submit(package, "dcgan", {"epoch": 3})
    assert kfp_api.requests == []


def test_schedule_sends_cron_no_overlap_no_catchup_and_no_caching(kfp_api, package):
    result = remote.schedule(package, "dcgan", {"epochs": 2}, "0 0 3 * * 0")

    (create,) = kfp_api.calls("POST", "/apis/v2beta1/recurringruns")
    body = create.body
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 0"}}
    assert int(body["max_concurrency"]) == 1 and body["no_catchup"] is True and body["mode"] == "ENABLE"
    assert body["display_name"] == "ganforge-dcgan-retrain"
    assert body["runtime_config"]["parameters"] == {"epochs": 2}
    assert body["experiment_id"] == next(iter(kfp_api.state.experiments))
    spec = body["pipeline_spec"]["pipeline_spec"]
    # every task of every DAG: the root's (exit handler, end-run) and the exit handler's body
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    tasks = {name: t for dag in dags for name, t in dag["tasks"].items()}
    assert body["service_account"] == "ganforge-pipeline-runner"
    assert {"start-run", "train", "register", "end-run"} <= set(tasks)
    assert not any(t.get("cachingOptions", {}).get("enableCache") for t in tasks.values())
    assert result == {
        "recurring_run_id": next(iter(kfp_api.state.recurring_runs)),
        "job_name": "ganforge-dcgan-retrain",
        "cron": "0 0 3 * * 0",
    }


def test_schedule_refuses_a_second_schedule_with_the_same_name(kfp_api, package):
    remote.schedule(package, "dcgan", {}, "0 0 3 * * 0")
    with pytest.raises(SubmitError, match="already exists.*--delete"):
        remote.schedule(package, "dcgan", {}, "0 0 4 * * 0")
    assert len(kfp_api.state.recurring_runs) == 1


def test_disable_and_delete_find_the_schedule_by_name_or_id_across_pages(kfp_api, package):
    for job in ("nightly", "weekly-a", "weekly-b"):  # the stand-in pages by 2: "weekly-b" is on page 2
        remote.schedule(package, "dcgan", {}, "0 0 3 * * 0", job_name=job)
    ids = {r["display_name"]: i for i, r in kfp_api.state.recurring_runs.items()}

    assert remote.disable_schedule("weekly-b", "dcgan")["recurring_run_id"] == ids["weekly-b"]
    assert kfp_api.state.recurring_runs[ids["weekly-b"]]["status"] == "DISABLED"
    assert kfp_api.calls("POST", rf"/apis/v2beta1/recurringruns/{ids['weekly-b']}:disable")

    assert remote.delete_schedule(ids["nightly"], "dcgan")["job_name"] == "nightly"
    assert kfp_api.calls("DELETE", rf"/apis/v2beta1/recurringruns/{ids['nightly']}")
    assert set(kfp_api.state.recurring_runs) == {ids["weekly-a"], ids["weekly-b"]}


def test_unknown_schedule_or_experiment_is_a_clear_error(kfp_api, package):
    with pytest.raises(SubmitError, match="no experiment 'ganforge-gan'.*python -m pipelines schedule gan"):
        remote.disable_schedule("ganforge-gan-retrain", "gan")
    remote.schedule(package, "dcgan", {}, "0 0 3 * * 0")
    with pytest.raises(SubmitError, match="no recurring run 'hourly'.*existing: ganforge-dcgan-retrain"):
        remote.delete_schedule("hourly", "dcgan")


@pytest.mark.parametrize(
    "expr",
    ["0 0 3 * * 0", "0 */15 * * * ?", "0 0 9 ? * MON-FRI", "30 5 3 1,15 jan-jun *", "0 0/30 8-18 * * 1-5", "@weekly"],
)
def test_validate_cron_accepts_six_field_expressions(expr):
    assert remote.validate_cron(expr) == expr


def test_validate_cron_rejects_five_fields_with_the_seconds_first_suggestion():
    with pytest.raises(SubmitError) as e:
        remote.validate_cron("0 3 * * 0")
    assert "6 fields, seconds first" in str(e.value) and "'0 0 3 * * 0'" in str(e.value)


@pytest.mark.parametrize(
    "expr, problem",
    [
        ("60 0 3 * * 0", "seconds value 60 is out of range 0-59"),
        ("0 60 3 * * 0", "minutes value 60 is out of range 0-59"),
        ("0 0 24 * * 0", "hours value 24 is out of range 0-23"),
        ("0 0 3 0 * *", "day-of-month value 0 is out of range 1-31"),
        ("0 0 3 * 13 *", "month value 13 is out of range 1-12"),
        ("0 0 3 * * 7", "day-of-week value 7 is out of range 0-6"),
        ("0 0 3 * * FUN", "day-of-week value 'FUN' is not a number"),
        ("0 */0 * * * *", "minutes step '0'"),
        ("0 0 5-3 * * *", "hours range '5-3' runs backwards"),
        ("? 0 3 * * *", "seconds cannot be '?'"),
        ("0 0 3 1,,2 * *", "empty list item"),
        ("0 0 3 * * 0 2026", "has 7 fields; KFP needs 6"),
    ],
)
def test_validate_cron_rejects_out_of_range_fields(expr, problem):
    with pytest.raises(SubmitError, match=re.escape(problem)):
        remote.validate_cron(expr)


def test_schedule_validates_cron_before_contacting_kfp(kfp_api, package):
    with pytest.raises(SubmitError, match="seconds first"):
        remote.schedule(package, "dcgan", {}, "0 3 * * 0")
    assert kfp_api.requests == []


def test_no_host_configured_says_how_to_set_one(env, package):
    with pytest.raises(SubmitError, match=r"no KFP endpoint configured: set KFP_HOST=.*make submit PIPELINE=dcgan"):
        remote.submit(package, "dcgan", {})


def test_resolve_host_and_token_precedence(env, tmp_path):
    env.setenv("KF_PIPELINES_ENDPOINT", "http://b:8888/")
    assert remote.resolve_host() == "http://b:8888"
    env.setenv("KFP_HOST", "http://a")
    assert remote.resolve_host() == "http://a"
    assert remote.resolve_host("https://c/pipeline") == "https://c/pipeline"
    with pytest.raises(SubmitError, match="no scheme"):
        remote.resolve_host("kfp.example.com")

    assert remote.resolve_token() == TOKEN
    env.setenv("KF_PIPELINES_TOKEN", "from-env")
    assert remote.resolve_token() == "from-env"
    assert remote.resolve_token("explicit") == "explicit"
    env.delenv("KF_PIPELINES_TOKEN")
    env.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "missing"))
    assert remote.resolve_token() is None


def test_refused_connection_names_the_host_and_the_port_forward(env, package):
    host = closed_port_url()
    with pytest.raises(SubmitError) as e:
        remote.submit(package, "dcgan", {}, host=host)
    assert host in str(e.value) and "kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80" in str(e.value)


def test_unauthorized_says_to_check_the_token_without_kfp_retrying(env, package):
    with KFPStandin(token="the-right-one") as standin:
        started = time.monotonic()
        with pytest.raises(SubmitError) as e:
            remote.submit(package, "dcgan", {}, host=standin.url)
        # kfp.Client's own health check would retry a 401 five times, 5 s apart
        assert time.monotonic() - started < 10
    message = str(e.value)
    assert standin.url in message and "HTTP 401" in message and "KF_PIPELINES_TOKEN" in message
    assert "Unauthenticated" in message  # the server's own words come through


def test_missing_path_prefix_points_at_pipeline_prefix(env, package):
    with KFPStandin(token=TOKEN, prefix="/pipeline") as standin:
        with pytest.raises(SubmitError, match=r"HTTP 404.*path prefix.*/pipeline"):
            remote.submit(package, "dcgan", {}, host=standin.url)
        result = remote.submit(package, "dcgan", {}, host=standin.url + "/pipeline")
        assert result["run_url"].startswith(standin.url + "/pipeline/#/runs/details/")


def test_login_page_instead_of_api_is_explained(env, package):
    with KFPStandin(login_page=True) as standin:
        with pytest.raises(SubmitError, match="HTML page.*login"):
            remote.submit(package, "dcgan", {}, host=standin.url)


def test_param_arguments_are_typed_by_the_compiled_pipeline(package):
    types = remote.pipeline_parameters(package)
    parsed = remote.parse_param_args(["epochs=5", "promotion_margin=0.25", "source=s3://b/x=y"], types)
    assert parsed == {"epochs": 5, "promotion_margin": 0.25, "source": "s3://b/x=y"}
    with pytest.raises(SubmitError, match="epochs is NUMBER_INTEGER, 'five' is not"):
        remote.parse_param_args(["epochs=five"], types)
    with pytest.raises(SubmitError, match="KEY=VALUE"):
        remote.parse_param_args(["epochs"], types)


def test_cli_schedule_then_unschedule(kfp_api, package, capsys):
    assert (
        remote.main_schedule(["dcgan", "--package", str(package), "--cron", "0 0 3 * * 0", "--param", "epochs=4"]) == 0
    )
    created = json.loads(capsys.readouterr().out)  # kfp.Client's printed links go to stderr
    (body,) = [r.body for r in kfp_api.calls("POST", "/apis/v2beta1/recurringruns")]
    assert body["runtime_config"]["parameters"] == {"epochs": 4}
    assert remote.main_schedule(["dcgan", "--disable"]) == 0
    assert kfp_api.state.recurring_runs[created["recurring_run_id"]]["status"] == "DISABLED"
    assert remote.main_unschedule(["dcgan", "--delete"]) == 0
    assert kfp_api.state.recurring_runs == {}
    with pytest.raises(SystemExit):
        remote.main_schedule(["dcgan", "--package", str(package)])  # neither --cron nor --disable/--delete


def test_cli_submit_compiles_the_named_pipeline(kfp_api, tmp_path, env, capsys):
    env.chdir(tmp_path)
    assert remote.main_submit(["dcgan", "--profile", "tiny", "--param", "epochs=1"]) == 0
    assert (tmp_path / "build" / "dcgan.yaml").is_file()
    printed = json.loads(capsys.readouterr().out)
    (run,) = [r.body for r in kfp_api.calls("POST", "/apis/v2beta1/runs")]
    assert printed["run_id"] == next(iter(kfp_api.state.runs))
    # With Kubernetes settings the client sends {"pipeline_spec": IR, "platform_spec": kubernetes settings}.
    spec, platform = run["pipeline_spec"]["pipeline_spec"], run["pipeline_spec"]["platform_spec"]
    assert spec["pipelineInfo"]["name"] == "ganforge-dcgan"
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == PIPELINE_PARAMETERS
    assert "exec-train" in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert run["runtime_config"]["parameters"] == {"epochs": 1}
    assert run["service_account"] == "ganforge-pipeline-runner"


def test_cli_submit_and_schedule_send_set_as_the_overrides_parameter(kfp_api, package, capsys):
    sets = ["--set", "train.epochs=2", "--set", "eval.n_samples=200"]
    assert remote.main_submit(["dcgan", "--package", str(package), "--param", "epochs=7", *sets]) == 0
    assert remote.main_schedule(["dcgan", "--package", str(package), "--cron", "0 0 3 * * 0", *sets]) == 0
    (run,) = [r.body for r in kfp_api.calls("POST", "/apis/v2beta1/runs")]
    (recurring,) = [r.body for r in kfp_api.calls("POST", "/apis/v2beta1/recurringruns")]
    overrides = json.dumps(["train.epochs=2", "eval.n_samples=200"])
    assert run["runtime_config"]["parameters"] == {"epochs": 7, "overrides": overrides}
    assert recurring["runtime_config"]["parameters"] == {"overrides": overrides}


@pytest.mark.parametrize("command", [["submit", "dcgan"], ["schedule", "dcgan", "--cron", "0 0 3 * * 0"]])
def test_cli_refuses_a_bad_set_before_compiling_or_contacting_kfp(kfp_api, tmp_path, command):
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", *command, "--set", "train.channels_last=yes"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: train.channels_last='yes': train.channels_last is a boolean, write true, false, 1 or 0"
    ], done.stderr
    assert kfp_api.requests == [] and not (tmp_path / "build").exists()


def test_command_line_without_host_prints_the_fix_not_a_traceback(env):
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "submit", "dcgan"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        timeout=120,
    )
    assert done.returncode == 2
    assert "no KFP endpoint configured: set KFP_HOST" in done.stderr and "Traceback" not in done.stderr


LOCAL_IMAGE = "localhost:5001/ganforge/ganforge-gpu:0.1.0"


@pytest.mark.parametrize(
    "host, image, refused",
    [
        ("https://kfp.example.com", LOCAL_IMAGE, True),
        ("https://kfp.example.com", "localhost/ganforge-cpu:dev", True),
        ("https://kfp.example.com", "127.0.0.1:5001/ganforge/ganforge-gpu:0.1.0", True),
        ("https://kfp.example.com", "[::1]:5001/ganforge/ganforge-gpu:0.1.0", True),
        ("https://kfp.example.com", "registry.example.com/ganforge/ganforge-gpu:0.1.0", False),
        ("https://kfp.example.com", "localhostregistry.example.com/ganforge:1", False),
        ("http://localhost:8080", LOCAL_IMAGE, False),
        ("http://127.0.0.1:8080", LOCAL_IMAGE, False),
        ("http://[::1]:8080", LOCAL_IMAGE, False),
    ],
)
def test_localhost_image_is_refused_only_for_a_remote_kfp_host(host, image, refused):
    if refused:
        with pytest.raises(
            SubmitError,
            match=rf"image {re.escape(image)} is on this machine's registry, which the "
            rf"KFP cluster at {re.escape(host)} cannot pull from: .*IMAGE_REGISTRY="
            r".*--force-image \(make: FORCE_IMAGE=1\)",
        ):
            remote.check_images(host, [image])
        remote.check_images(host, [image], force=True)
    else:
        remote.check_images(host, [image])


def test_compiled_package_images_are_the_tasks_images(package):
    assert remote.package_images(package) == [LOCAL_IMAGE]  # the default of components/image.py


@pytest.mark.parametrize("command", [["submit", "dcgan"], ["schedule", "dcgan", "--cron", "0 0 3 * * 0"]])
def test_cli_refuses_a_localhost_image_for_a_remote_host_in_one_line(kfp_api, package, command):
    env = {k: v for k, v in os.environ.items() if k != "GANFORGE_IMAGE"}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", *command, "--package", str(package)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        timeout=120,
        env={**env, "KFP_HOST": "https://kfp.example.com"},
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(
        f"error: image {LOCAL_IMAGE} is on this machine's registry, which the KFP cluster at "
        "https://kfp.example.com cannot pull from"
    ), line
    assert "IMAGE_REGISTRY=" in line and "--force-image" in line
    assert kfp_api.requests == []


def test_force_image_sends_a_localhost_image_to_a_remote_host(kfp_api, package, env, capsys):
    """A host name that is not localhost but reaches the stand-in: this machine's own name."""
    import socket

    name = socket.gethostname()
    try:
        addresses = {a[4][0] for a in socket.getaddrinfo(name, None, socket.AF_INET)}
    except OSError:
        addresses = set()
    if "127.0.0.1" not in addresses or remote.is_local_name(name):
        pytest.skip(f"this machine's name {name!r} does not resolve to 127.0.0.1")
    host = kfp_api.url.replace("127.0.0.1", name)
    with pytest.raises(SubmitError, match="cannot pull from"):
        remote.main_submit(["dcgan", "--package", str(package), "--host", host])
    assert kfp_api.requests == []
    assert remote.main_submit(["dcgan", "--package", str(package), "--host", host, "--force-image"]) == 0
    assert len(kfp_api.calls("POST", "/apis/v2beta1/runs")) == 1
    assert (
        remote.main_schedule(
            ["dcgan", "--package", str(package), "--host", host, "--force-image", "--cron", "0 0 3 * * 0"]
        )
        == 0
    )
    assert len(kfp_api.calls("POST", "/apis/v2beta1/recurringruns")) == 1


def test_make_passes_force_image_to_submit_and_schedule():
    for target, extra in (("submit", []), ("schedule", ["CRON=0 0 3 * * 0"])):
        for force, expected in (([], False), (["FORCE_IMAGE=1"], True)):
            done = subprocess.run(
                ["make", "-n", target, "PIPELINE=dcgan", *extra, *force],
                cwd=Path(__file__).parents[1],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            (line,) = [ln for ln in done.stdout.splitlines() if f"-m pipelines {target} dcgan" in ln]
            assert ("--force-image" in line.split()) == expected, line


def test_pipelines_entry_lists_submit_and_turns_only_ganforge_errors_into_one_line(capsys, monkeypatch):
    from pipelines import __main__ as entry

    assert entry.main([]) == 2
    usage = capsys.readouterr().err
    assert all(command in usage for command in ("run", "submit", "schedule", "unschedule")), usage
    assert entry.main(["run", "dcgan", "--runner", "bogus"]) == 2  # ConfigError: one line, exit 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: unknown runner 'bogus': choose one of subprocess, docker (e.g. RUNNER=docker)"
    ]

    def bug(argv):
        raise ValueError("a bug")

    monkeypatch.setattr(entry, "main_compile", bug)
    with pytest.raises(ValueError, match="a bug"):  # not a GanforgeError: the traceback stays
        entry.main(["compile", "dcgan"])
