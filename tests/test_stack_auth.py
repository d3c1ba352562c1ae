"""The local stack's MLflow runs basic-auth like the cluster's: what ``pipelines.stack`` configures,
against a real ``mlflow server --app-name basic-auth`` process on 127.0.0.1 (sqlite instead of the
stack's PostgreSQL, a host process instead of its container: the same config, env and user setup)."""

from __future__ import annotations

import json
import stat
from dataclasses import asdict

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipelines import stack
from servers import http_status, mlflow_server

pytestmark = pytest.mark.slow  # a real `mlflow server --app-name basic-auth` process (~15-30 s to start)


def post(url: str, body: dict, auth: tuple[str, str] | None = None) -> int:
    return http_status(url, "POST", auth, body)


def test_the_stack_server_refuses_anonymous_writes_and_serves_the_pipeline_user(tmp_path, monkeypatch):
    home = tmp_path / "home"
    auth = stack.new_auth(home)
    assert stat.S_IMODE((stack.stack_dir(home) / stack.AUTH_FILE).stat().st_mode) == 0o600
    assert stack.read_auth(home) == auth and auth["username"] != auth["admin_username"]
    config = stack.write_auth_config(home, f"sqlite:///{tmp_path / 'auth.db'}")
    server_env = stack.auth_server_env(auth, str(config / "basic_auth.ini"))
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)

    with mlflow_server(tmp_path / "server", env=server_env, args=stack.AUTH_SERVER_ARGS) as uri:
        stack.create_pipeline_user(uri, auth)
        running = stack.Stack(str(home), uri, "", "", 0, "", 0, "c", "")
        (stack.stack_dir(home) / "stack.json").write_text(json.dumps(asdict(running)))
        client_env = stack.read(home).env()  # what `python -m pipelines stack env` prints
        assert client_env == {
            "MLFLOW_TRACKING_URI": uri,
            "MLFLOW_TRACKING_USERNAME": auth["username"],
            "MLFLOW_TRACKING_PASSWORD": auth["password"],
        }
        for key, value in client_env.items():
            monkeypatch.setenv(key, value)
        c = MlflowClient(uri)
        c.create_registered_model("dcgan")
        c.set_registered_model_tag("dcgan", "ganforge.owner", "pipeline")
        run = c.create_run(c.create_experiment("dcgan"))
        version = c.create_model_version("dcgan", f"runs:/{run.info.run_id}/model", run.info.run_id)
        c.set_model_version_tag("dcgan", version.version, "ganforge.artifact_sha256", "a" * 64)

        # Anonymous: the tag write that used to pass is refused, and nothing changed.
        set_tag = f"{uri}/api/2.0/mlflow/model-versions/set-tag"
        body = {"name": "dcgan", "version": version.version, "key": "ganforge.artifact_sha256", "value": "b" * 64}
        assert post(set_tag, body) == 401
        assert post(set_tag, body, (auth["username"], "wrong")) == 401
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
        with pytest.raises(MlflowException, match="401"):
            MlflowClient(uri).set_model_version_tag("dcgan", version.version, "ganforge.artifact_sha256", "b" * 64)
        for key, value in client_env.items():
            monkeypatch.setenv(key, value)
        assert c.get_model_version("dcgan", version.version).tags["ganforge.artifact_sha256"] == "a" * 64
        # The pipeline's user is not an admin: it cannot create users.
        users = f"{uri}/api/2.0/mlflow/users/create"
        assert post(users, {"username": "x", "password": "y"}, (auth["username"], auth["password"])) == 403
