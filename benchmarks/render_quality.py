"""Render WaveGAN's quality runs, as MLflow recorded them, into docs/quality.md between its two markers.

    python benchmarks/render_quality.py [--doc docs/quality.md] [--profile quality]

The runs are those `make quality PIPELINE=wavegan` trained and scored (one per seed, the latest where a seed
was run again), read from the MLflow store that GANFORGE_HOME or MLFLOW_TRACKING_URI names: the numbers in
the table are the logged metrics, never copied by hand. Only the text between the markers changes. No scored
run, or a page without the markers, is one line naming it and the fix, exit status 2, and the page is left
as it was.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from ganforge.fileio import atomic_write_text

BEGIN = "<!-- wavegan-quality:begin -->"
END = "<!-- wavegan-quality:end -->"
PIPELINE = "wavegan"
SEED_COMMANDS = {
    0: "make quality PIPELINE=wavegan",
    1: 'make quality PIPELINE=wavegan SET="train.seed=1" QUALITY_RUN=$GANFORGE_HOME/quality/wavegan-quality-seed1',
}
"""The command of each seed's run, as the Makefile's quality target takes it."""
SCORES = (
    "inception_score",
    "inception_score_std",
    "fid",
    "real_inception_score",
    "real_inception_score_std",
    "real_fid_ceiling",
    "real_fid_ceiling_n",
    "classifier_accuracy",
    "n",
)
NOT_DIGITS = 0.25
"""Generated IS below 1 + NOT_DIGITS·(real IS − 1): the classifier hears no digit classes in the samples."""


class NoRuns(Exception):
    """No scored quality run in the store."""


def quality_runs(client, profile: str = "quality") -> list[dict]:
    """One record per seed: the latest FINISHED wavegan run of ``profile``, with no override but the seed,
    that has the evaluation's scores."""
    experiment = client.get_experiment_by_name(PIPELINE)
    if experiment is None:
        raise NoRuns(f"no MLflow experiment {PIPELINE!r}")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`ganforge.pipeline` = '{PIPELINE}' and tags.`ganforge.profile` = '{profile}'",
        order_by=["attributes.start_time DESC"],
    )
    by_seed: dict[int, dict] = {}
    for run in runs:
        metrics, params = run.data.metrics, run.data.params
        if run.info.status != "FINISHED" or not all(k in metrics for k in SCORES):
            continue
        seed = int(params["train.seed"])
        if seed in by_seed or not is_the_profile(params, profile, seed):
            continue  # runs come newest first; a run with other overrides (SET=…) is not the profile's row
        (last,) = client.get_metric_history(run.info.run_id, "inception_score")[-1:]
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "eval_audio") if not a.is_dir]
        wavs = client.list_artifacts(run.info.run_id, "eval_audio/wavs")
        by_seed[seed] = {
            "seed": seed,
            "run_id": run.info.run_id,
            "g_steps": last.step,
            "n_critic": int(params["train.n_critic"]),
            "minutes": metrics.get("train_wall_s", float("nan")) / 60,
            "epochs": params["train.epochs"],
            "artifacts": sorted(Path(a).name for a in artifacts) + [f"{len(wavs)} WAVs"],
            **{k: metrics[k] for k in SCORES},
        }
    if not by_seed:
        raise NoRuns(f"no finished, scored {PIPELINE}/{profile} run")
    return [by_seed[s] for s in sorted(by_seed)]


def is_the_profile(params: dict[str, str], profile: str, seed: int) -> bool:
    """Whether a run's logged params are exactly the profile's config at ``seed`` (no other override)."""
    from ganforge.config import build_config
    from ganforge.platform.tracking import param_value

    expected = build_config(PIPELINE, profile, [f"train.seed={seed}"]).flat()
    return all(params.get(k) == param_value(v) for k, v in expected.items())


def verdict(r: dict) -> str:
    if r["inception_score"] < 1 + NOT_DIGITS * (r["real_inception_score"] - 1):
        return "not digits to the classifier"
    return "digit-like to the classifier"


def render(records: list[dict]) -> str:
    """The table: one row per seed, then the mean over seeds."""
    lines = [
        f"Rendered by `make quality-docs` from the MLflow runs of `make quality PIPELINE={PIPELINE}`. IS and FD: the",
        "SC09-style digit classifier of the training clips; the real data's own IS and FD are its held-out clips'.",
        "",
        "| seed | training | IS generated (real) | FD generated (real vs real, N) | classifier accuracy "
        "| reading | MLflow run: artifacts | command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        command = SEED_COMMANDS.get(r["seed"], f'make quality PIPELINE=wavegan SET="train.seed={r["seed"]}" …')
        lines.append(
            f"| {r['seed']} | {r['epochs']} epochs, {r['g_steps']} G steps ({r['g_steps'] * r['n_critic']} critic), "
            f"{r['minutes']:.0f} min "
            f"| {r['inception_score']:.2f} ± {r['inception_score_std']:.2f} "
            f"({r['real_inception_score']:.2f} ± {r['real_inception_score_std']:.2f}) "
            f"| {r['fid']:.1f} ({r['real_fid_ceiling']:.1f}, N = {r['real_fid_ceiling_n']:.0f}; "
            f"generated N = {r['n']:.0f}) "
            f"| {r['classifier_accuracy']:.2f} | {verdict(r)} "
            f"| `{r['run_id'][:8]}`: eval_audio/ {', '.join(r['artifacts'])} | `{command}` |"
        )
    if len(records) > 1:
        mean_is = statistics.mean(r["inception_score"] for r in records)
        mean_fd = statistics.mean(r["fid"] for r in records)
        lines.append(f"\nMean over {len(records)} seeds: IS {mean_is:.2f}, FD {mean_fd:.1f}.")
    else:
        lines.append("\nOne seed scored so far; the second seed's command is in the Makefile's quality target.")
    return "\n".join(lines)


def splice(page: str, body: str) -> str:
    """``page`` with the text between its markers replaced by ``body``; ValueError when a marker is missing."""
    if page.count(BEGIN) != 1 or page.count(END) != 1 or page.index(BEGIN) > page.index(END):
        raise ValueError(f"needs exactly one {BEGIN} followed by one {END}")
    head, rest = page.split(BEGIN)
    return f"{head}{BEGIN}\n{body}\n{END}{rest.split(END, 1)[1]}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--doc", type=Path, default=Path("docs/quality.md"), help="the page to render into")
    p.add_argument("--profile", default="quality", help="the profile whose runs to render (tests: tiny)")
    a = p.parse_args(argv)
    from ganforge.platform import tracking

    uri = tracking.configure()
    try:
        records = quality_runs(tracking.client(), a.profile)
    except NoRuns as e:
        print(f"{uri}: {e}; run `{SEED_COMMANDS[0]}` first (GANFORGE_HOME picks the store)", file=sys.stderr)
        return 2
    try:
        page = splice(a.doc.read_text(), render(records))
    except (OSError, ValueError) as e:
        print(f"{a.doc}: {e}; restore the markers from git (git checkout -- {a.doc})", file=sys.stderr)
        return 2
    atomic_write_text(a.doc, page)
    print(f"{a.doc}: rendered {len(records)} {PIPELINE}/{a.profile} run(s) from {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
