"""What a cluster administrator would refuse in k8s/: placeholder secrets and addresses reaching a
cluster, checkov findings nobody justified, images by tag, internet-wide egress, MLflow on the
Postgres superuser. Rendered with the real kubectl kustomize, checkov and PostgreSQL where they run."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import skip_or_fail_in_ci

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
import k8s_check  # noqa: E402
import k8s_deploy  # noqa: E402
import k8s_hardening  # noqa: E402


@pytest.fixture(scope="module")
def renders() -> dict[str, list[dict]]:
    if not (shutil.which("kubectl") or shutil.which("kustomize")):
        skip_or_fail_in_ci("needs kubectl (or kustomize) on PATH to render k8s/")
    return {r.target: r.objects for r in k8s_check.render_all()}


def find(objects: list[dict], kind: str, name: str) -> dict:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


@pytest.fixture
def k8s_copy(tmp_path) -> Path:
    if not (shutil.which("kubectl") or shutil.which("kustomize")):
        skip_or_fail_in_ci("needs kubectl (or kustomize) on PATH to render k8s/")
    copy_dir = tmp_path / "k8s"
    shutil.copytree(REPO_ROOT / "k8s", copy_dir, ignore=shutil.ignore_patterns("*.env"))
    return copy_dir


def test_checkov_findings_are_each_justified_and_an_unjustified_one_fails(renders):
    try:
        binary = k8s_hardening.checkov_binary()
    except k8s_hardening.CheckovMissing as exc:
        skip_or_fail_in_ci(str(exc))
    skips = k8s_hardening.load_skips()
    assert k8s_hardening.skip_file_problems(skips) == []
    # One finding checkov reports that nothing justifies (host network), in a copy of the base render.
    objects = copy.deepcopy(renders["base"])
    find(objects, "Deployment", "mlflow")["spec"]["template"]["spec"]["hostNetwork"] = True
    findings = k8s_hardening.checkov_findings(objects, binary)
    problems = " | ".join(k8s_hardening.checkov_problems("base", findings, skips))
    assert "checkov CKV_K8S_19" in problems and "Deployment.ganforge.mlflow" in problems, problems
    assert "CKV_K8S_35" not in problems  # justified in the skip list
    # A justification covers only the resources it lists.
    narrowed = [
        {**s, "resources": [r for r in s["resources"] if r != "Deployment.ganforge.mlflow"]}
        if s["id"] == "CKV_K8S_35"
        else s
        for s in skips
    ]
    assert "checkov CKV_K8S_35" in " | ".join(k8s_hardening.checkov_problems("base", findings, narrowed))
    # The digest finding is justified for local-kind, never for the cluster overlay.
    digest = [f for f in findings if f[0] == "CKV_K8S_43"]
    assert digest and not k8s_hardening.checkov_problems("overlays/local-kind", digest, skips)
    assert k8s_hardening.checkov_problems("overlays/gpu-cluster", digest, skips)
    assert "needs a one-line why" in " ".join(k8s_hardening.skip_file_problems([{**skips[0], "why": ""}]))


def test_make_checkov_installs_it_in_its_own_venv_during_setup():
    dry = subprocess.run(
        ["make", "-n", "setup"], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=120
    ).stdout
    lines = [ln for ln in dry.splitlines() if "checkov" in ln]
    if (REPO_ROOT / ".venv-checkov").is_dir() and not lines:
        return  # already installed: make has nothing to do
    assert any("-m venv .venv-checkov" in ln for ln in lines), dry
    assert any("pip install -q 'checkov==" in ln for ln in lines), dry


def test_placeholder_secrets_reach_no_cluster_overlay_but_local_kind(k8s_copy, capsys):
    # No secrets written yet: the fix is named.
    assert k8s_deploy.main(["--k8s-dir", str(k8s_copy), "render", "gpu-cluster"]) == 2
    assert "run make k8s-secrets-init" in capsys.readouterr().err
    # The committed examples as they are (what the old copy-only k8s-secrets-init left behind).
    for example in (k8s_copy / "base" / "secrets").glob("*.env.example"):
        shutil.copyfile(example, example.with_name(example.name[: -len(".example")]))
    assert k8s_deploy.main(["--k8s-dir", str(k8s_copy), "render", "gpu-cluster"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for phrase in (
        "overlays/gpu-cluster refuses placeholders",
        "Secret postgres key POSTGRES_PASSWORD is a placeholder",
        "Secret mlflow-auth key MLFLOW_AUTH_ADMIN_PASSWORD is a placeholder",
        "image registry.example.com/ganforge/ganforge-mlflow-server:0.1.0 has the all-zero digest",
        "NetworkPolicy kube-apiserver-egress egress ipBlock 192.0.2.1/32 is a documentation address",
        "Fix: make k8s-secrets-init",
    ):
        assert phrase in err, err
    # k8s-check names the same keys and the fix, for the cluster overlay only.
    problems = k8s_hardening.real_secret_problems(k8s_copy, ["base", "overlays/local-kind", "overlays/gpu-cluster"])
    assert len(problems) == 1 and problems[0].startswith("overlays/gpu-cluster: secrets still hold placeholders")
    assert "k8s/base/secrets/postgres.env: POSTGRES_PASSWORD" in problems[0] and "make k8s-secrets-init" in problems[0]
    # A laptop's kind cluster may run them.
    assert k8s_deploy.main(["--k8s-dir", str(k8s_copy), "render", "local-kind"]) == 0
    assert "kind: Secret" in capsys.readouterr().out


def test_secrets_init_generates_every_placeholder_and_keeps_real_values(k8s_copy, capsys):
    secrets_dir = k8s_copy / "base" / "secrets"
    (secrets_dir / "postgres.env").write_text("POSTGRES_USER=REPLACE_ME\nPOSTGRES_PASSWORD=kept-password-01\n")
    assert k8s_deploy.main(["--k8s-dir", str(k8s_copy), "secrets-init"]) == 0
    assert "generated" in capsys.readouterr().out
    values = {f.name: k8s_deploy.read_env(f) for f in secrets_dir.glob("*.env")}
    assert set(values) == {e.name[: -len(".example")] for e in secrets_dir.glob("*.env.example")}
    assert values["postgres.env"]["POSTGRES_PASSWORD"] == "kept-password-01"  # a real value stays
    for name, env in values.items():
        assert env and not any(k8s_deploy.is_placeholder(v) for v in env.values()), name
        assert (secrets_dir / name).stat().st_mode & 0o077 == 0, f"{name} is readable by others"
    assert len(values["mlflow-auth.env"]["MLFLOW_AUTH_ADMIN_PASSWORD"]) >= 12  # MLflow's minimum
    assert values["ganforge-s3.env"]["AWS_ACCESS_KEY_ID"] != values["mlflow-s3.env"]["AWS_ACCESS_KEY_ID"]
    assert k8s_hardening.real_secret_problems(k8s_copy, ["overlays/gpu-cluster"]) == []
    # Secrets done; the overlay's own placeholders (digest, API server address) still stop it...
    with pytest.raises(k8s_deploy.DeployError) as refused:
        k8s_deploy.render("gpu-cluster", k8s_copy)
    assert "Secret" not in str(refused.value) and "all-zero digest" in str(refused.value)
    # ...until they are set.
    overlay = k8s_copy / "overlays" / "gpu-cluster"
    kustomization = overlay / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("0" * 64, "ab" * 32))
    api = overlay / "api-server.yaml"
    api.write_text(api.read_text().replace("cidr: 192.0.2.1/32", "cidr: 10.20.0.5/32"))
    rendered = list(yaml.safe_load_all(k8s_deploy.render("gpu-cluster", k8s_copy)))
    assert k8s_deploy.placeholder_problems([o for o in rendered if o]) == []


def test_cluster_overlay_pins_images_by_digest_and_egress_names_the_api_server(renders):
    gpu = renders["overlays/gpu-cluster"]
    for obj in gpu:
        spec = k8s_check.pod_spec(obj)
        for container in k8s_check.containers_of(spec) if spec else ():
            assert "@sha256:" in container["image"], container["image"]
    check = k8s_hardening.image_digest_problems
    assert check("overlays/gpu-cluster", gpu, k8s_check.pod_spec, k8s_check.containers_of) == []
    broken = copy.deepcopy(gpu)
    container = find(broken, "StatefulSet", "postgres")["spec"]["template"]["spec"]["containers"][0]
    container["image"] = "postgres:17.6-bookworm"
    assert "pinned by tag only" in " ".join(
        check("overlays/gpu-cluster", broken, k8s_check.pod_spec, k8s_check.containers_of)
    )
    assert check("overlays/local-kind", broken, k8s_check.pod_spec, k8s_check.containers_of) == []
    for target, objects in renders.items():
        assert k8s_hardening.egress_block_problems(objects) == [], target
        blocks = [
            peer["ipBlock"]["cidr"]
            for o in objects
            if o["kind"] == "NetworkPolicy"
            for rule in o["spec"].get("egress") or []
            for peer in rule.get("to") or []
            if "ipBlock" in peer
        ]
        assert blocks == [{"overlays/local-kind": "172.18.0.0/16"}.get(target, "192.0.2.1/32")], target
    wide = copy.deepcopy(renders["base"])
    find(wide, "NetworkPolicy", "kube-apiserver-egress")["spec"]["egress"][0]["to"][0]["ipBlock"]["cidr"] = "0.0.0.0/0"
    assert "egress ipBlock 0.0.0.0/0 is wider than a cluster service" in " ".join(
        k8s_hardening.egress_block_problems(wide)
    )
    # The network evaluator: task pods reach the API server's address and nothing else outside.
    assert "NetworkPolicies allow kfp-task -> internet:443/TCP" in " ".join(
        k8s_check.network_problems(wide, k8s_check.Runtime.build().jobs)
    )


def test_mlflow_never_holds_the_postgres_superuser(renders):
    objects = renders["base"]
    assert k8s_hardening.database_role_problems(objects, k8s_check.pod_spec, k8s_check.referenced_keys) == []
    container = find(objects, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    assert "postgres" not in secrets and "mlflow-db" in secrets
    broken = copy.deepcopy(objects)
    env = find(broken, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["env"]
    next(e for e in env if e["name"] == "PGPASSWORD")["valueFrom"]["secretKeyRef"] = {
        "name": "postgres",
        "key": "POSTGRES_PASSWORD",
    }
    broken.remove(find(broken, "Job", "postgres-roles-init"))
    problems = " | ".join(k8s_hardening.database_role_problems(broken, k8s_check.pod_spec, k8s_check.referenced_keys))
    assert "Deployment/mlflow: reads Secret postgres (the Postgres superuser)" in problems
    assert "Job postgres-roles-init is missing" in problems


@pytest.mark.slow  # a real PostgreSQL (initdb + start, ~5-10 s)
def test_postgres_roles_init_sql_makes_a_non_superuser_owner_on_real_postgres(renders, tmp_path):
    if not shutil.which("psql"):
        skip_or_fail_in_ci("needs PostgreSQL (apt-get install postgresql)")
    from pipelines import stack

    sql = find(renders["base"], "ConfigMap", "postgres-roles-init")["data"]["roles.sql"]
    script = tmp_path / "roles.sql"
    script.write_text(sql)
    superuser_password = "superuser-password-1"
    port, data = stack.start_postgres(tmp_path / "home", superuser_password, tmp_path)
    env = {
        **os.environ,
        "PGHOST": "127.0.0.1",
        "PGPORT": str(port),
        "PGUSER": stack.PG_USER,
        "PGPASSWORD": superuser_password,
        "MLFLOW_DB_USER": "mlflow_role",
        "MLFLOW_DB_PASSWORD": "role-password-01",
        "MLFLOW_DB_NAME": stack.PG_DB,  # exists already, owned by the superuser, like an older deployment's
    }

    def psql(sql_text: str, user=None, password=None, database=stack.PG_DB):
        login = {"PGUSER": user, "PGPASSWORD": password} if user else {}
        return subprocess.run(
            ["psql", "-X", "-tA", "-v", "ON_ERROR_STOP=1", "-d", database, "-c", sql_text],
            env={**env, **login},
            capture_output=True,
            text=True,
            timeout=60,
        )

    try:
        assert psql("CREATE TABLE runs (id int)").returncode == 0  # a table the superuser made earlier
        for attempt in (1, 2):  # idempotent
            run = subprocess.run(
                ["psql", "-X", "-q", "-d", "postgres", "-f", str(script)],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert run.returncode == 0 and "owns database" in run.stdout, (attempt, run.stdout + run.stderr)
        role = ("mlflow_role", "role-password-01")
        flags = psql(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls FROM pg_roles "
            "WHERE rolname = current_user",
            *role,
        )
        assert flags.returncode == 0 and flags.stdout.strip() == "f|f|f|f|f", flags.stdout + flags.stderr
        # It owns its database and what MLflow had created there, so migrations can alter it...
        owned = psql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()", *role)
        assert owned.stdout.strip() == "mlflow_role"
        altered = psql("ALTER TABLE runs ADD COLUMN name text; CREATE TABLE experiments (id int)", *role)
        assert altered.returncode == 0, altered.stderr
        # ...and reaches nothing else.
        denied = psql("SELECT 1", *role, database="postgres")
        assert denied.returncode != 0 and "permission denied for database" in denied.stderr
        assert psql("CREATE DATABASE other", *role).returncode != 0
        assert psql("CREATE ROLE other", *role).returncode != 0
    finally:
        stack.stop_postgres(data)


def test_k8s_readme_deploys_only_through_the_placeholder_gate():
    readme = (REPO_ROOT / "k8s" / "README.md").read_text()
    block = readme.split("Deploy:\n```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make k8s-secrets-init", "make k8s-apply OVERLAY=local-kind"]
    assert "kubectl apply -k" not in block
    expected = {
        "make k8s-secrets-init": "scripts/k8s_deploy.py secrets-init",
        "make k8s-apply OVERLAY=local-kind": "scripts/k8s_deploy.py render local-kind) && printf",
    }
    for command in commands:
        dry = subprocess.run(
            ["bash", "-c", command.replace("make ", "make -n ", 1)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert dry.returncode == 0 and expected[command] in dry.stdout, (command, dry.stdout, dry.stderr)
