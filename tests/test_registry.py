"""Model registry and the FID-gated promotion rule, on sqlite and on a real `mlflow server`."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from ganforge.config import build_config
from ganforge.platform import registry, tracking
from ganforge.platform.registry import Candidate
from ganforge.platform.settings import git_commit
from servers import shared_mlflow_server

NZ = 4

LOAD_CHAMPION = textwrap.dedent("""
    import json, sys, torch
    from ganforge.platform import registry
    G = registry.load_registered_generator(sys.argv[1])
    with torch.no_grad():
        out = G(torch.linspace(-1, 1, 3 * {nz}).reshape(3, {nz}))
    print(json.dumps({{"type": type(G).__name__, "shape": list(out.shape), "values": out.flatten().tolist()}}))
""").format(nz=NZ)


@pytest.fixture(scope="module")
def sqlite_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ganforge-home")


def use_sqlite(home: Path, monkeypatch) -> str:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("GANFORGE_HOME", str(home))
    return tracking.configure()


@pytest.fixture
def sqlite_store(sqlite_home, monkeypatch) -> str:
    return use_sqlite(sqlite_home, monkeypatch)


@pytest.fixture(params=["sqlite", pytest.param("server", marks=pytest.mark.slow)])
def store(request, sqlite_home, monkeypatch) -> str:
    """This process and its subprocesses (through the env) on one real store."""
    if request.param == "sqlite":
        return use_sqlite(sqlite_home, monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_mlflow_server())
    return tracking.configure()


def tiny_generator(seed: int) -> torch.nn.Module:
    """(B, NZ) → (B, 1, 4, 4) in [-1, 1]; torch classes only, so any process can unpickle it."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(NZ, 16), torch.nn.Tanh(), torch.nn.Unflatten(1, (1, 4, 4)))


class Model:
    """A fresh registered-model name with one pipeline run to register versions from."""

    def __init__(self):
        self.cfg = build_config(
            "dcgan", "tiny", {"model": {"nz": NZ}, "registry": {"model_name": f"g-{uuid.uuid4().hex[:8]}"}}
        )
        self.name = self.cfg.model_name
        self.run_id = tracking.start_pipeline_run(self.cfg)

    def register(self, fid=None, seed: int = 0, margin: float = 0.0) -> int:
        """A new version, registered as a run whose ``registry.promotion_margin`` is ``margin``."""
        metrics = {} if fid is None else {"fid": fid, "kid_mean": fid / 1000, "kid_std": 0.001, "checkpoint": "c.pt"}
        cfg = build_config(
            "dcgan", "tiny", {"model": {"nz": NZ}, "registry": {"model_name": self.name, "promotion_margin": margin}}
        )
        return registry.register_generator(
            self.run_id, tiny_generator(seed), cfg, metrics, tags={"dataset_sha256": "d" * 64, "kfp_run_id": ""}
        )

    def aliases(self) -> dict[str, int]:
        return {a: int(v) for a, v in MlflowClient().get_registered_model(self.name).aliases.items()}


def test_choose_champion_rule():
    c50, a30, b40, a49 = Candidate(1, 50.0), Candidate(2, 30.0), Candidate(3, 40.0), Candidate(4, 49.0)
    assert registry.choose_champion(None, []) is None
    assert registry.choose_champion(None, [Candidate(3, 40.0, 5.0)]) == Candidate(3, 40.0, 5.0)
    assert registry.choose_champion(c50, [a30, b40]) == a30
    assert registry.choose_champion(c50, [a49]) == a49
    assert registry.choose_champion(c50, [Candidate(4, 49.0, 1.0)]) == c50  # 49 is not < 50 - 1
    assert registry.choose_champion(c50, [Candidate(5, 60.0)]) == c50
    assert registry.choose_champion(Candidate(1, None), [Candidate(5, 60.0)]) == Candidate(5, 60.0)
    assert registry.choose_champion(None, [Candidate(7, 30.0), Candidate(6, 30.0)]) == Candidate(6, 30.0)
    # Each rival is judged with its own margin, never with another version's.
    strict, lenient = Candidate(8, 46.0, 5.0), Candidate(9, 47.0, 0.0)
    assert registry.choose_champion(c50, [strict, lenient]) == lenient  # 46 is not < 50 - 5; 47 < 50 - 0
    assert registry.choose_champion(c50, [Candidate(8, 44.0, 5.0), lenient]) == Candidate(8, 44.0, 5.0)
    assert registry.choose_champion(c50, [strict]) == c50
    # Stable: once the rule's choice is champion, the same rivals never move it again; and the
    # champion's fid never goes up.
    for rivals in (
        [a30, b40],
        [a49, b40],
        [Candidate(5, 60.0)],
        [strict, lenient],
        [Candidate(8, 44.0, 5.0), Candidate(9, 47.0, 0.0), Candidate(10, 43.0, 8.0)],
    ):
        chosen = registry.choose_champion(c50, rivals)
        assert chosen.fid <= c50.fid
        assert registry.choose_champion(chosen, rivals) == chosen


def test_promotion_sequence_with_margin(store):
    m = Model()
    v1 = m.register(fid=50.0)
    first = registry.promote(m.name, v1, margin=2.0)
    assert first == {"alias": "champion", "version": v1, "previous_champion": None, "fid": 50.0, "champion_fid": None}

    v2 = m.register(fid=60.0)
    assert registry.promote(m.name, v2, margin=2.0)["alias"] == "challenger"
    assert m.aliases() == {"champion": v1, "challenger": v2}

    v3 = m.register(fid=40.0)
    third = registry.promote(m.name, v3, margin=2.0)
    assert third == {"alias": "champion", "version": v3, "previous_champion": v1, "fid": 40.0, "champion_fid": 50.0}

    v4 = m.register(fid=39.0)  # better, but not by more than the margin
    assert registry.promote(m.name, v4, margin=2.0)["alias"] == "challenger"
    assert m.aliases() == {"champion": v3, "challenger": v4}

    rows = registry.show(m.name)
    assert [r["version"] for r in rows] == [v4, v3, v2, v1]
    assert [r["fid"] for r in rows] == [39.0, 40.0, 60.0, 50.0]
    assert rows[1]["aliases"] == ["champion"] and rows[0]["aliases"] == ["challenger"]
    table = registry.format_table(rows)
    assert table.splitlines()[0].split()[:5] == ["version", "fid", "kid_mean", "kid_std", "aliases"]
    assert "champion" in table.splitlines()[2]

    tags = MlflowClient().get_model_version(m.name, str(v3)).tags
    assert tags["fid"] == "40.0" and tags["dataset_sha256"] == "d" * 64 and tags["checkpoint"] == "c.pt"
    assert tags["pipeline"] == "dcgan" and tags["profile"] == "tiny"
    assert tags["git_commit"] and tags[registry.MARGIN_TAG] == "2.0" and len(tags[registry.ARTIFACT_SHA256_TAG]) == 64


def test_scores_are_metrics_of_the_logged_model(store):
    """Issue 14.4: FID/KID are metrics of the LoggedModel (sortable), reachable from the version;
    the run carries MLflow's standard commit tag beside ganforge's."""
    m = Model()
    tracking.log_metrics(m.run_id, {"fid": 42.0, "kid_mean": 0.042}, step=9)  # what the evaluate step logs
    better, worse = m.register(fid=42.0), m.register(fid=61.0)
    c = MlflowClient()
    versions = [c.get_model_version(m.name, str(v)) for v in (better, worse)]
    model_ids = [registry.logged_model_id(v) for v in versions]
    linked = [registry.version_metrics(c, v) for v in versions]
    assert linked == [
        {"fid": 42.0, "kid_mean": 0.042, "kid_std": 0.001},
        {"fid": 61.0, "kid_mean": 0.061, "kid_std": 0.001},
    ]
    # The evaluate step's entry is linked, not repeated: the run's history holds each value once.
    assert tracking.metric_histories(m.run_id)["fid"] == [(0, 61.0), (9, 42.0)]
    experiment = c.get_logged_model(model_ids[0]).experiment_id
    for ascending in (True, False):
        ranked = mlflow.search_logged_models(
            experiment_ids=[experiment],
            output_format="list",
            order_by=[{"field_name": "metrics.fid", "ascending": ascending}],
        )
        assert [x.model_id for x in ranked if x.model_id in model_ids] == (model_ids if ascending else model_ids[::-1])

    commit = git_commit()
    run_tags = c.get_run(m.run_id).data.tags
    assert run_tags["mlflow.source.git.commit"] == commit == run_tags["ganforge.git_commit"]
    assert c.get_logged_model(model_ids[0]).tags["mlflow.source.git.commit"] == commit
    assert c.get_model_version(m.name, str(better)).tags["git_commit"] == commit


@pytest.fixture
def server_store(monkeypatch) -> str:
    """A real `mlflow server`: no file lock exists there, so promotions meet only through the server."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_mlflow_server())
    uri = tracking.configure()
    assert tracking.sqlite_path(mlflow.get_registry_uri()) is None  # promotion_lock is a no-op here
    return uri


@pytest.mark.slow  # a real `mlflow server` process (shared by the module)
@pytest.mark.parametrize("paused", ["good", "better"])
def test_two_promoters_interleaved_on_a_server_end_on_the_best(server_store, monkeypatch, paused):
    """Two whole ``promote()`` calls against a real server, interleaved step by step, not by timing:
    one promoter is held at its first champion write (it has announced and read the store), the
    other runs to the end, then the held one writes what it read. Holding the worse one makes its
    write stale (it puts the worse version over the better); its own re-read must repair it."""
    m = Model()
    base, better, good = m.register(fid=50.0), m.register(fid=30.0), m.register(fid=40.0)
    registry.promote_manual(m.name, base)
    held = {"good": good, "better": better}[paused]
    other = better if held == good else good
    real_make_champion = registry.make_champion
    reached, release = threading.Event(), threading.Event()
    writes: list[tuple[str, int]] = []  # (promoter, version it made champion), in order

    def make_champion(c, model_name, version):
        name = threading.current_thread().name
        if name == "held" and not reached.is_set():
            reached.set()
            assert release.wait(timeout=120), "never released"
        writes.append((name, version))
        real_make_champion(c, model_name, version)

    monkeypatch.setattr(registry.promotion, "make_champion", make_champion)  # what promote calls
    results, errors = {}, []

    def promote(version: int) -> None:
        try:
            results[version] = registry.promote(m.name, version, margin=0.0)
        except Exception as e:  # reported by the assertions below
            errors.append(e)

    held_thread = threading.Thread(target=promote, args=(held,), name="held", daemon=True)
    held_thread.start()
    assert reached.wait(timeout=120), errors  # announced, read the store, about to write
    other_thread = threading.Thread(target=promote, args=(other,), name="other", daemon=True)
    other_thread.start()
    other_thread.join(timeout=120)
    assert not other_thread.is_alive(), "the second promoter waited for the held one: serialised, not concurrent"
    release.set()
    held_thread.join(timeout=120)
    assert not held_thread.is_alive() and not errors, errors

    assert m.aliases()["champion"] == better
    assert results[better]["alias"] == "champion" and results[good]["alias"] == "challenger"
    if paused == "good":  # the other wrote better; the held one's stale write put good over it; it repaired that
        assert writes == [("other", better), ("held", good), ("held", better)]
    else:  # the other saw better's announcement and wrote better for it
        assert writes == [("other", better), ("held", better)]


def test_a_stale_champion_write_is_repaired(sqlite_store):
    """The race the protocol exists for: B read the old champion before A announced, A
    became champion, then B's stale write put the worse B there. B's own re-read repairs it."""
    m = Model()
    base, better, good = m.register(fid=50.0), m.register(fid=30.0), m.register(fid=40.0)
    registry.promote(m.name, base, margin=0.0)
    c = MlflowClient()
    c.set_model_version_tag(m.name, str(better), registry.PROMOTION_REQUESTED_TAG, repr(time.time()))
    c.set_registered_model_alias(m.name, registry.CHAMPION, str(better))
    c.set_model_version_tag(m.name, str(good), registry.PROMOTION_REQUESTED_TAG, repr(time.time()))
    c.set_registered_model_alias(m.name, registry.CHAMPION, str(good))  # the stale write

    champion = registry.converge_champion(c, m.name, Candidate(good, 40.0))
    assert champion == Candidate(better, 30.0)
    assert m.aliases()["champion"] == better


def test_each_version_is_judged_with_its_own_margin(sqlite_store):
    """Issue 13.4, as reported: margins 0/5/0. v2's own margin (5) keeps it challenger; a later
    promoter with margin 0 for a bad v3 must not apply its 0 to v2 and move champion there."""
    m = Model()
    v1 = m.register(fid=100.0, margin=0.0)
    assert registry.promote(m.name, v1)["alias"] == "champion"
    v2 = m.register(fid=97.0, margin=5.0)
    assert registry.promote(m.name, v2)["alias"] == "challenger"  # 97 is not < 100 - 5
    v3 = m.register(fid=500.0, margin=0.0)
    assert registry.promote(m.name, v3, margin=0.0)["alias"] == "challenger"
    assert m.aliases() == {"champion": v1, "challenger": v3}
    tags = {v: MlflowClient().get_model_version(m.name, str(v)).tags[registry.MARGIN_TAG] for v in (v1, v2, v3)}
    assert tags == {v1: "0.0", v2: "5.0", v3: "0.0"}


def test_interleaved_promoters_with_different_margins_end_as_the_rule_says(sqlite_store):
    """Promoters' steps (announce, converge) interleaved explicitly against a real store, in
    every order: whoever converges, each candidate is judged with its own margin."""
    m = Model()
    c = MlflowClient()
    base = m.register(fid=100.0)
    strict_good = m.register(fid=94.0, margin=5.0)  # beats 100 by its margin 5 (94 < 95)
    lenient = m.register(fid=96.0, margin=0.0)  # beats 100 by its margin 0, but not 94
    strict_bad = m.register(fid=97.0, margin=5.0)  # 97 is not < 95: never champion
    awful = m.register(fid=500.0, margin=0.0)
    promoters = [strict_good, lenient, strict_bad, awful]
    fid = {strict_good: 94.0, lenient: 96.0, strict_bad: 97.0, awful: 500.0}

    def reset() -> None:
        registry.promote_manual(m.name, base)  # a human decision: earlier announcements stop counting
        time.sleep(0.01)

    # Everyone announces, then the promoters converge one after another, in every order.
    for order in itertools.permutations(promoters):
        reset()
        me = {v: registry.announce(c, m.name, v, None) for v in promoters}
        assert me[strict_good].margin == 5.0 and me[lenient].margin == 0.0
        for v in order:
            assert registry.converge_champion(c, m.name, me[v]).version == strict_good, order
        assert m.aliases()["champion"] == strict_good, order

    # strict_good's promoter made it champion; then a stale promoter, which had read the store
    # before strict_good announced, wrote lenient over it. The next read undoes that: a version
    # made champion is never replaced by a worse one (here lenient no longer has to beat 94).
    for repairer in (lenient, strict_bad, awful):
        reset()
        me = {v: registry.announce(c, m.name, v, None) for v in promoters}
        assert registry.converge_champion(c, m.name, me[strict_good]).version == strict_good
        registry.make_champion(c, m.name, lenient)  # the stale write
        assert registry.converge_champion(c, m.name, me[repairer]).version == strict_good
        assert m.aliases()["champion"] == strict_good

    # The same stale write before strict_good's promoter converged is "lenient first": strict_good
    # then has to beat 96 by its margin 5, which it does not.
    reset()
    me = {v: registry.announce(c, m.name, v, None) for v in promoters}
    registry.make_champion(c, m.name, lenient)
    assert {registry.converge_champion(c, m.name, me[v]).version for v in promoters} == {lenient}

    # One after another (each announces after the previous converged): lenient first wins, and
    # strict_good then has to beat 96 by its margin 5, which it does not; the bad ones never move it.
    reset()
    for v in (lenient, strict_good, strict_bad, awful):
        registry.converge_champion(c, m.name, registry.announce(c, m.name, v, None))
    assert m.aliases()["champion"] == lenient
    # The champion's fid never went up in any of this.
    assert all(fid[lenient] <= fid[v] for v in (strict_bad, awful))


def test_promote_manual_needs_fid_or_force_and_survives_the_next_run(sqlite_store):
    m = Model()
    unevaluated = m.register(fid=None)
    with pytest.raises(registry.RegistryError, match="--force"):
        registry.promote(m.name, unevaluated, margin=0.0)
    with pytest.raises(registry.RegistryError, match="no fid tag.*--force"):
        registry.promote_manual(m.name, unevaluated)
    assert registry.promote_manual(m.name, unevaluated, force=True)["alias"] == "champion"
    assert m.aliases() == {"champion": unevaluated}

    best, older = m.register(fid=30.0), m.register(fid=50.0)
    assert registry.promote(m.name, best, margin=0.0)["alias"] == "champion"  # beats an unevaluated champion
    registry.promote_manual(m.name, older)  # a human rollback
    newer = m.register(fid=45.0)
    # The next run is judged against the human's choice; the rolled-back version does not return.
    assert registry.promote(m.name, newer, margin=0.0)["alias"] == "champion"
    assert m.aliases() == {"champion": newer}

    with pytest.raises(registry.RegistryError, match=r"has no version 99; versions: \[1, 2, 3, 4\]"):
        registry.promote_manual(m.name, 99)
    with pytest.raises(registry.RegistryError, match="no registered model named 'no-such-model'"):
        registry.promote_manual("no-such-model", 1)


def test_register_refuses_a_generator_of_the_wrong_latent_size(sqlite_store):
    m = Model()
    wrong = torch.nn.Sequential(torch.nn.Linear(NZ + 1, 16))
    with pytest.raises(registry.RegistryError, match=r"latent batch of shape \(2, 4\)"):
        registry.register_generator(m.run_id, wrong, m.cfg, {"fid": 1.0}, {})
    with pytest.raises(registry.RegistryError, match="fid=nan is not a finite number"):
        registry.register_generator(m.run_id, tiny_generator(0), m.cfg, {"fid": float("nan")}, {})


def test_a_negative_or_non_finite_score_is_refused_and_never_becomes_champion(sqlite_store):
    m = Model()
    honest = m.register(fid=50.0)
    assert registry.promote(m.name, honest, margin=0.0)["alias"] == "champion"
    for metrics, message in (
        ({"fid": -1e9, "kid_mean": 0.01, "kid_std": 0.001}, "fid=-1000000000.0 is not a finite number >= 0"),
        ({"fid": 10.0, "kid_mean": float("inf"), "kid_std": 0.001}, "kid_mean=inf is not a finite number"),
        ({"fid": 10.0, "kid_mean": 0.01, "kid_std": float("nan")}, "kid_std=nan is not a finite number"),
    ):
        with pytest.raises(registry.RegistryError, match=message):
            registry.register_generator(m.run_id, tiny_generator(1), m.cfg, metrics, {})
    assert [int(v.version) for v in MlflowClient().search_model_versions(f"name = '{m.name}'")] == [honest]
    # A version whose fid tag was written negative by other means is no score: the gate will not crown it.
    forged = m.register(fid=60.0)
    MlflowClient().set_model_version_tag(m.name, str(forged), "fid", "-1e9")
    with pytest.raises(registry.RegistryError, match="no fid tag"):
        registry.promote(m.name, forged, margin=0.0)
    assert m.aliases() == {"champion": honest}


def test_champion_loads_in_a_fresh_process(store):
    m = Model()
    version = m.register(fid=20.0, seed=7)
    registry.promote(m.name, version, margin=0.0)
    uri = f"models:/{m.name}@champion"
    out = subprocess.run(
        [sys.executable, "-c", LOAD_CHAMPION, uri], env=dict(os.environ), capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    expected = tiny_generator(7)(torch.linspace(-1, 1, 3 * NZ).reshape(3, NZ)).detach()
    assert loaded["type"] == "ExportedGenerator" and loaded["shape"] == [3, 1, 4, 4]
    assert torch.allclose(torch.tensor(loaded["values"]), expected.flatten(), atol=1e-6)

    with pytest.raises(registry.RegistryError, match="has no alias 'production'"):
        registry.load_registered_generator(f"models:/{m.name}@production")
