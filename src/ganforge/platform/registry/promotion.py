"""The promotion protocol: the FID gate (``beats``, ``choose_champion``), its lock-free convergence
over concurrent promoters (``promote``), a human decision (``promote_manual``), and ``show``."""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

import mlflow
from mlflow import MlflowClient

from ganforge.platform import tracking

from .common import (
    CHALLENGER,
    CHAMPION,
    FID_TAG,
    LOCK_TIMEOUT_S,
    MANUAL_PROMOTION_TAG,
    MARGIN_TAG,
    MAX_CONVERGE_ROUNDS,
    PROMOTED_TAG,
    PROMOTION_REQUESTED_TAG,
    QUALITY_TAGS,
    RIVAL_WINDOW_S,
    Candidate,
    RegistryError,
    model_version,
    parse_score,
    registered_model,
)


@dataclass(frozen=True)
class RegistryState:
    """One read of a registered model: its aliases, the last human decision, every version's tags."""

    aliases: dict[str, int]
    manual_promotion_at: float
    version_tags: dict[int, dict[str, str]]

    def candidate(self, version: int) -> Candidate:
        return candidate_from_tags(version, self.version_tags.get(version, {}))

    def champion(self) -> Candidate | None:
        version = self.aliases.get(CHAMPION)
        return None if version is None else self.candidate(version)

    def in_flight(self, now: float, tag: str = PROMOTION_REQUESTED_TAG) -> list[Candidate]:
        """Versions ``promote`` announced (``tag``: or made champion) within the rival window
        and after the last human decision, that have an fid."""
        since = max(now - RIVAL_WINDOW_S, self.manual_promotion_at)
        announced = [v for v, tags in self.version_tags.items() if float(tags.get(tag, "-inf")) > since]
        return [c for c in map(self.candidate, announced) if c.fid is not None]


def read_state(c: MlflowClient, model_name: str) -> RegistryState:
    """Aliases first, then versions: a promoter's announcement made before this read is seen."""
    model = registered_model(c, model_name)
    versions = c.search_model_versions(f"name = '{model_name}'")
    return RegistryState(
        aliases={alias: int(v) for alias, v in model.aliases.items()},
        manual_promotion_at=float(model.tags.get(MANUAL_PROMOTION_TAG, "-inf")),
        version_tags={int(v.version): dict(v.tags) for v in versions},
    )


def candidate_from_tags(version: int, tags: Mapping[str, str]) -> Candidate:
    """A version's fid and its own margin (0 for a version registered before margins were tagged)."""
    margin, fid = parse_score(tags.get(MARGIN_TAG)), parse_score(tags.get(FID_TAG))
    return Candidate(
        int(version),
        fid if fid is not None and fid >= 0 else None,  # a negative fid is no score (see numeric_metrics)
        margin if margin is not None and margin >= 0 else 0.0,
    )


def candidate(c: MlflowClient, model_name: str, version: int) -> Candidate:
    return candidate_from_tags(version, model_version(c, model_name, version).tags)


def beats(rival: Candidate, champion: Candidate | None) -> bool:
    """The promotion rule for one version: it takes over if there is no champion, the champion
    was never evaluated, or its fid < champion fid - *its own* margin."""
    if champion is None or champion.fid is None:
        return True
    return rival.fid is not None and rival.fid < champion.fid - rival.margin


def choose_champion(champion: Candidate | None, rivals: Iterable[Candidate]) -> Candidate | None:
    """The rule over a set: of the rivals that beat the champion (``beats``, each with its own
    margin), the best (lowest fid, then lowest version) takes over; none: the champion stays.

    Stable: applied again with the same rivals it keeps its choice (a rival that beats the
    new champion by its margin would have beaten the old one too, with a lower fid). The
    champion's fid only goes down: a worse model is never promoted.
    """
    best = min(
        (r for r in rivals if r.fid is not None and beats(r, champion)), key=lambda r: (r.fid, r.version), default=None
    )
    return champion if best is None else best


@contextlib.contextmanager
def promotion_lock(model_name: str) -> Iterator[None]:
    """A file lock beside a local sqlite store; nothing for a server (no lock exists there)."""
    db = tracking.sqlite_path(mlflow.get_registry_uri())
    if db is None:
        yield
        return
    from filelock import FileLock, Timeout

    safe_name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model_name)
    lock = FileLock(str(db.parent / f".{db.name}.promote-{safe_name}.lock"))
    try:
        lock.acquire(timeout=LOCK_TIMEOUT_S)
    except Timeout:
        raise RegistryError(
            f"another promotion of {model_name!r} holds {lock.lock_file} for over "
            f"{LOCK_TIMEOUT_S:.0f}s; if no ganforge process is running, delete that file"
        ) from None
    try:
        yield
    finally:
        lock.release()


def converge_champion(c: MlflowClient, model_name: str, me: Candidate) -> Candidate | None:
    """Move ``champion`` until a fresh read finds it where the rule says; return it.

    Each round re-reads the champion and the in-flight candidates, applies
    ``choose_champion`` and writes only if the alias is elsewhere. The loop ends only on a
    read that found the alias consistent, and every write is followed by such a read.

    With each version's own margin the rule depends on order (a lenient version promoted
    first can keep out a better but strict one), so a stale write could replace a better
    champion by a worse one that no longer has to beat it. Hence the floor: a version some
    promoter made champion in this window (``PROMOTED_TAG``) is never replaced by a worse
    one, so the champion's fid never goes up and the end state is that of the promotions run
    one after another in some order.
    """
    for _ in range(MAX_CONVERGE_ROUNDS):
        state = read_state(c, model_name)
        champion = state.champion()
        now = time.time()
        rivals = {r.version: r for r in state.in_flight(now)}
        rivals.setdefault(me.version, me)  # even if clock skew hid my own announcement
        target = choose_champion(champion, rivals.values())
        floor = min(state.in_flight(now, PROMOTED_TAG), key=lambda r: (r.fid, r.version), default=None)
        if floor is not None and target is not None and target.fid is not None and floor.fid < target.fid:
            target = floor
        if target is None or (champion is not None and target.version == champion.version):
            return champion
        make_champion(c, model_name, target.version)
        # Spread rounds apart so concurrent promoters read each other's writes.
        time.sleep(random.uniform(0.0, 0.05))
    raise RegistryError(
        f"the champion of {model_name!r} kept moving for {MAX_CONVERGE_ROUNDS} rounds; "
        "retry the promotion (are many promotions running at once?)"
    )


def make_champion(c: MlflowClient, model_name: str, version: int) -> None:
    """A promoter's write: tag the version as promoted, then move the alias to it."""
    c.set_model_version_tag(model_name, str(version), PROMOTED_TAG, repr(time.time()))
    c.set_registered_model_alias(model_name, CHAMPION, str(version))


def announce(c: MlflowClient, model_name: str, version: int, margin: float | None) -> Candidate:
    """Step 1 of ``promote``: record the version's margin (when given), then announce it as a
    candidate. The margin is written first, so whoever sees the announcement sees the margin."""
    me = candidate(c, model_name, version)
    if me.fid is None:
        raise RegistryError(
            f"version {version} of {model_name!r} has no fid tag, so the FID gate cannot judge it; "
            f"evaluate it, or decide by hand: ganforge promote {model_name} {version} --force"
        )
    if margin is not None:
        if not (math.isfinite(margin) and margin >= 0):
            raise RegistryError(
                f"promotion margin {margin!r} for version {version} of {model_name!r} must be a "
                "finite number >= 0 (registry.promotion_margin)"
            )
        c.set_model_version_tag(model_name, str(version), MARGIN_TAG, repr(float(margin)))
        me = Candidate(me.version, me.fid, float(margin))
    c.set_model_version_tag(model_name, str(version), PROMOTION_REQUESTED_TAG, repr(time.time()))
    return me


def promote(model_name: str, version: int, margin: float | None = None) -> dict:
    """Apply the FID gate: ``champion`` moves to ``version`` only if there is no champion or
    its fid < champion fid - margin; otherwise ``version`` becomes ``challenger``.

    ``margin`` is the version's own: registration records its run's
    ``registry.promotion_margin`` as the version tag ``ganforge.promotion_margin``; a margin
    given here replaces it (None: keep the recorded one). Every promoter judges every
    version with that version's margin, so one run's lenient margin cannot promote a version
    another run's margin kept as challenger.

    Concurrency. Two pipeline runs can finish at once, and MLflow has no compare-and-set on
    aliases, so "read champion, compare, set alias" alone can leave the worse of two new
    versions as champion (both read the old champion; the better one writes first, the worse
    one overwrites it and never learns). The protocol:

    1. Announce (``announce``): tag the version's margin, then
       ``ganforge.promotion_requested_at = now``, *before* reading.
    2. Converge (``converge_champion``): repeatedly read the champion and every announced
       candidate of the last ``RIVAL_WINDOW_S`` seconds, compute the rule over all of them
       (each candidate against the champion with its own margin), write the alias if it is elsewhere,
       and stop only when a read finds it already right.

    Why this suffices without a lock: take the last write to ``champion``. Its writer then
    read the alias (still its own value) and all candidates announced so far, and found the
    alias right; any promoter that announced later reads after that and finds it right too
    (or it would write, contradicting "last"). So the final champion is the rule's choice
    over every concurrent candidate: no in-flight version beats it by more than its own margin.
    A stale writer that put a worse version there is repaired by its own re-read.

    On a local sqlite store a file lock also serialises promotions on this machine (cheap,
    and it keeps sqlite writers from contending); on a server the protocol alone applies.
    A human decision (``promote_manual``) starts a new epoch: earlier announcements no
    longer count, so a rollback is not undone by the next run.
    """
    c = tracking.client()
    with promotion_lock(model_name):
        previous = read_state(c, model_name).champion()
        me = announce(c, model_name, version, margin)
        champion = converge_champion(c, model_name, me)
        won = champion is not None and champion.version == me.version
        if not won:
            c.set_registered_model_alias(model_name, CHALLENGER, str(version))
        elif read_state(c, model_name).aliases.get(CHALLENGER) == me.version:
            c.delete_registered_model_alias(model_name, CHALLENGER)
    return {
        "alias": CHAMPION if won else CHALLENGER,
        "version": me.version,
        "previous_champion": previous.version if previous else None,
        "fid": me.fid,
        "champion_fid": previous.fid if previous else None,
    }


def promote_manual(model_name: str, version: int, force: bool = False) -> dict:
    """A human decision: make ``version`` champion regardless of the FID gate.

    Refuses a version that was never evaluated (no fid tag) unless ``force``.
    """
    c = tracking.client()
    me = candidate(c, model_name, version)
    if me.fid is None and not force:
        raise RegistryError(
            f"version {version} of {model_name!r} has no fid tag (it was never evaluated); "
            f"evaluate it first, or pass --force to make it champion anyway"
        )
    with promotion_lock(model_name):
        previous = read_state(c, model_name).champion()
        c.set_registered_model_tag(model_name, MANUAL_PROMOTION_TAG, repr(time.time()))
        c.set_registered_model_alias(model_name, CHAMPION, str(me.version))
        if read_state(c, model_name).aliases.get(CHALLENGER) == me.version:
            c.delete_registered_model_alias(model_name, CHALLENGER)
    return {
        "alias": CHAMPION,
        "version": me.version,
        "previous_champion": previous.version if previous else None,
        "fid": me.fid,
        "champion_fid": previous.fid if previous else None,
    }


def show(model_name: str) -> list[dict]:
    """Every version of the model, newest first, with its scores and aliases."""
    c = tracking.client()
    aliases_by_version: dict[str, list[str]] = {}
    for alias, v in registered_model(c, model_name).aliases.items():
        aliases_by_version.setdefault(str(v), []).append(alias)
    rows = []
    for v in c.search_model_versions(f"name = '{model_name}'"):
        rows.append(
            {
                "version": int(v.version),
                **{score: parse_score(v.tags.get(score)) for score in QUALITY_TAGS},
                "aliases": sorted(aliases_by_version.get(str(v.version), [])),
                "created": datetime.fromtimestamp(v.creation_timestamp / 1000, tz=timezone.utc).strftime(
                    "%Y-%m-%d %H:%M:%S UTC"
                ),
                "run_id": v.run_id,
                "profile": v.tags.get("profile", ""),
            }
        )
    return sorted(rows, key=lambda r: -r["version"])
