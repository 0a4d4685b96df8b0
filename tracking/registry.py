"""The model registry side of a fine-tune: one registered model per task (``bert-<task>``), a new version
per run, and the ``champion`` alias on the version with the best primary dev metric.

Promotion rule (``policy="better"``): a new version becomes ``champion`` only when its primary metric
beats the current champion's (strictly; no champion yet -> champion); otherwise it gets ``challenger``.
``policy="always"`` promotes every new version, ``policy="never"`` leaves promotion to a person.
Aliases only: registry stages are deprecated in MLflow and never used here.

``policy="significant"``: the paired bootstrap (``bert_core.bootstrap.paired_bootstrap``) of
delta = metric(new) - metric(champion), both recomputed on the same resampled dev rows, decides. The new
version is promoted iff the whole two-sided ``confidence`` percentile interval of delta lies on the
better side of 0: its lower end > 0 (its upper end < 0 when lower is better). At ``confidence=0.95``
that is a one-sided test at the 2.5% level: roughly, the new version scored higher in more than
(1 + confidence) / 2 = 97.5% of the resamples (``p_candidate_better``, reported, not used to decide).
A tie (e.g. the same model registered twice: delta = 0 on every resample) is never promoted.
Both models' dev predictions come from their runs (``evaluation/predictions_eval.jsonl``, written by
the evaluate task) and are paired by each row's ``_source``; when the two runs were not scored on the
same dev rows, or the champion's run has no predictions, the new version stays ``challenger`` and the
reason says why (a person decides).

Version tags (so the registry alone tells the story, without opening runs):
``metric.<name>`` for every dev metric, ``primary_metric``, ``data_fingerprint``, ``run_id``, and the
decision: ``decision`` (champion / challenger), ``became_champion``, ``new_score``, ``champion_score``,
``champion_version``, ``decision_reason``, ``policy``; with ``significant`` also the evidence:
``significance.delta``, ``significance.low``, ``significance.high``, ``significance.p_candidate_better``,
``significance.confidence``, ``significance.rows`` (or ``significance.note`` when there is none).

Failure: anything that fails after ``register_model`` created the version retracts it
(``retract_version``: deleted, and a ``champion`` alias it took goes back to the version it displaced), so
a failed run leaves no half-registered version. When the failure is a lost tracking server the
retraction cannot reach it either; the flow run's retry does it (``tasks.lost_attempts``).

Concurrency: two flows finishing at once must not both read "champion = v1", both promote, and leave
the alias on whichever wrote last. Read-compare-set therefore runs under one lock per store. The
bootstrap behind ``significant`` can take a while on a big dev set, so it runs before the lock against
the champion seen then; under the lock the champion is read again, and if another flow moved it
meanwhile, the comparison is redone against the new champion (so the alias ends on the better one).
Locks (``promotion_lock``):
- local stores (``sqlite:///...``, ``file:...``): a file lock (``bert_core/file_lock.py``) on
  ``<db>.promotion.lock`` next to the database; exact, and released by the OS if the process dies;
- tracking servers: MLflow's API offers no atomic test-and-set, so two locks. A file lock under
  ``$BERTFLOW_HOME/locks`` serialises this machine exactly (a suite's parallel fine-tunes, a worker's
  flow runs). Other machines are serialised by a lease on the registered model itself, the tag
  ``bertflow.promotion`` taken with Fischer's timed mutual exclusion: wait until the tag is absent, write
  a token (time, host, pid), wait ``LEASE_SETTLE_S``, hold the lease if the token is still there; give it
  back by deleting the tag. A lease whose holder is gone is broken: at once when it was taken on this
  machine by a dead process (or by this one, which lost the server before giving it back), else once
  older than ``STALE_LOCK_S``. Limits: it assumes every write lands within ``LEASE_SETTLE_S`` of the
  read before it, and that host names tell machines apart; a request stalled longer (e.g. inside
  MLflow's client retries), or a holder on another machine still promoting after ``STALE_LOCK_S``, can
  let two promotions overlap, and the alias then ends on whichever wrote last (each version's tags keep
  its own decision). The lease costs ``LEASE_SETTLE_S`` per promotion, and the tag shows on the model
  in the MLflow UI while a promotion runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bert_core.bootstrap import PairedComparison, paired_bootstrap
from bert_core.file_lock import acquire
from bert_core.home import bertflow_home
from tracking.store import local_store_path

CHAMPION, CHALLENGER = "champion", "challenger"
POLICIES = ("better", "significant", "always", "never")
PREDICTIONS_ARTIFACT = "evaluation/predictions_eval.jsonl"  # the evaluate task's dev predictions
N_RESAMPLES = 1000
LOCK_TIMEOUT_S = 300
STALE_LOCK_S = 300  # promotion takes well under a second; a lease this old belongs to a dead process
LEASE_TAG = "bertflow.promotion"  # the registered model's tag a promotion holds on a tracking server
LEASE_SETTLE_S = 1.0  # Fischer's delay: longer than any write takes to land after the read before it
_LOST_WRITE = ("BAD_REQUEST", "TEMPORARILY_UNAVAILABLE")  # a SQL store's unique key, or sqlite busy


@dataclasses.dataclass
class RegistryDecision:
    name: str
    version: str
    alias: str  # "champion" or "challenger"
    became_champion: bool
    new_score: float
    champion_score: float | None  # the previous champion's; None when there was none
    champion_version: str | None
    reason: str
    primary_metric: str = ""
    policy: str = "better"
    evidence: dict | None = None  # policy "significant": the PairedComparison (new - champion) as a dict


def model_name(task: str) -> str:
    return f"bert-{task}"


def register_version(
    model_uri: str, name: str, run_id: str, metrics: dict, primary_metric: str, data_fingerprint: str,
    higher_is_better: bool = True, policy: str = "better", confidence: float = 0.95, family: str | None = None,
    label_names: list[str] | None = None, n_resamples: int = N_RESAMPLES, settings: dict | None = None,
    tags: dict[str, str] | None = None,
) -> RegistryDecision:
    """Register ``model_uri`` (``models:/<model_id>`` or ``runs:/<run>/<name>``) as a new version of
    ``name``, tag it, and give it ``champion`` or ``challenger`` (see the module docstring). ``tags``: more
    tags of the new version, set when it is created (e.g. what it was trained on: tracking/retrain.py).

    Policy ``significant`` only: ``confidence`` of the interval that must clear 0; ``family`` (default: the
    run's ``family`` tag), ``label_names`` (default: read from the predictions) and ``settings`` (the task's,
    e.g. its tag scheme) recompute the metric.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown promotion policy {policy!r}; expected one of {POLICIES}")
    if primary_metric not in metrics:
        raise ValueError(f"primary metric {primary_metric!r} is not among the run's metrics {sorted(metrics)}")
    new_score = float(metrics[primary_metric])
    client = MlflowClient()
    evidence_args = None
    if policy == "significant":  # checked before registering, so a misuse leaves no orphan version behind
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must lie between 0 and 1, got {confidence}")
        family = family or client.get_run(run_id).data.tags.get("family")
        if not family:
            raise ValueError(f"policy 'significant' needs the task family to recompute {primary_metric!r}: "
                             f"pass family= or tag run {run_id} with 'family'")
        evidence_args = dict(candidate=run_predictions(run_id), family=family, metric=primary_metric,
                             label_names=label_names, confidence=confidence, n_resamples=n_resamples,
                             settings=settings)
    tags = {**(tags or {}), **{f"metric.{k}": _number(v) for k, v in metrics.items()}}
    tags |= {"primary_metric": primary_metric, "data_fingerprint": str(data_fingerprint), "run_id": run_id}
    # register_model creates the registered model when absent (tolerating a concurrent creator) and
    # resolves both runs:/ URIs and MLflow 3's models:/<model_id> URIs to the logged model.
    version = str(mlflow.register_model(model_uri, name, tags=tags).version)
    try:
        return _promote(client, name, version, new_score, primary_metric, data_fingerprint, higher_is_better,
                        policy, evidence_args)
    except BaseException:
        retract_version(client, name, version, best_effort=True)  # no half-registered version stays behind
        raise


def _promote(client: MlflowClient, name: str, version: str, new_score: float, primary_metric: str,
             data_fingerprint: str, higher_is_better: bool, policy: str, evidence_args: dict | None,
             ) -> RegistryDecision:
    """Wait for ``version`` to be READY, give it champion or challenger, and tag it with the decision."""
    _wait_until_ready(client, name, version)

    compared_with, evidence, note = None, None, ""
    while True:
        if evidence_args is not None:  # the slow part, outside the lock, against the champion seen now
            compared_with = _champion(client, name, primary_metric)[0]
            evidence, note = _evidence(client, name, compared_with, **evidence_args)
        with promotion_lock(client, name):
            champion_version, champion_score, champion_fp = _champion(client, name, primary_metric)
            if evidence_args is not None and champion_version != compared_with:
                continue  # another flow moved the champion meanwhile: compare with the new one
            if evidence_args is None:
                promote, reason = _decide(policy, primary_metric, new_score, champion_version, champion_score,
                                          higher_is_better)
            else:
                promote, reason = _decide_significant(primary_metric, new_score, champion_version, evidence, note,
                                                      higher_is_better)
            if champion_fp and champion_fp != str(data_fingerprint):
                reason += " (note: the champion was scored on different dev data)"
            # Recorded before the alias moves, so retract_version can hand the alias back if we die here.
            client.set_model_version_tag(name, version, "champion_version", champion_version or "none")
            client.set_registered_model_alias(name, CHAMPION if promote else CHALLENGER, version)
            break
    decision = RegistryDecision(
        name=name, version=str(version), alias=CHAMPION if promote else CHALLENGER, became_champion=promote,
        new_score=new_score, champion_score=champion_score, champion_version=champion_version, reason=reason,
        primary_metric=primary_metric, policy=policy, evidence=dataclasses.asdict(evidence) if evidence else None,
    )
    version_tags = {
        "decision": decision.alias, "became_champion": str(promote).lower(), "new_score": _number(new_score),
        "champion_score": _number(champion_score), "champion_version": champion_version or "none",
        "decision_reason": reason, "policy": policy,
    }
    if evidence is not None:
        version_tags |= {
            "significance.delta": _number(evidence.delta), "significance.low": _number(evidence.low),
            "significance.high": _number(evidence.high), "significance.confidence": _number(evidence.confidence),
            "significance.p_candidate_better": _number(evidence.p_candidate_better),
            "significance.rows": str(evidence.n_rows),
        }
    elif note:
        version_tags["significance.note"] = note
    for key, value in version_tags.items():
        client.set_model_version_tag(name, version, key, value)
    return decision


def _decide(policy, primary_metric, new_score, champion_version, champion_score, higher_is_better) -> tuple[bool, str]:
    better = "higher" if higher_is_better else "lower"
    if policy == "always":
        return True, "policy 'always' promotes every new version"
    if policy == "never":
        return False, "policy 'never': promotion is left to a person"
    if not math.isfinite(new_score):
        return False, f"score {new_score} is not a number; never promoted"
    if champion_version is None:
        return True, "first version with a score: no champion yet"
    if champion_score is None or not math.isfinite(champion_score):
        # Someone promoted it by hand, or the task's metric changed: a person should make this call.
        return False, f"champion v{champion_version} has no {primary_metric!r} score to compare; promote by hand"
    beats = new_score > champion_score if higher_is_better else new_score < champion_score
    verb = "beats" if beats else "does not beat"
    return beats, f"{new_score:.4f} {verb} champion v{champion_version}'s {champion_score:.4f} ({better} is better)"


def _decide_significant(primary_metric, new_score, champion_version, evidence: PairedComparison | None, note: str,
                        higher_is_better) -> tuple[bool, str]:
    """Promote iff the ``confidence`` interval of delta = new - champion lies wholly on the better side of 0."""
    if not math.isfinite(new_score):
        return False, f"score {new_score} is not a number; never promoted"
    if champion_version is None:
        return True, "first version with a score: no champion yet"
    if evidence is None:
        return False, f"{note}; promote by hand"
    e = evidence
    significant = e.low > 0 if higher_is_better else e.high < 0
    side = "above" if higher_is_better else "below"
    verdict = (f"significant: the interval lies {side} 0" if significant
               else f"not significant at {e.confidence:.0%}: the interval does not lie wholly {side} 0")
    return significant, (f"paired bootstrap on {e.n_rows} dev rows: {primary_metric} {e.delta:+.4f} vs champion "
                         f"v{champion_version}, {e.confidence:.0%} interval [{e.low:+.4f}, {e.high:+.4f}], "
                         f"higher in {e.p_candidate_better:.1%} of resamples; {verdict}")


def _evidence(client: MlflowClient, name: str, champion_version: str | None, candidate: list[dict] | None,
              family: str, metric: str, label_names, confidence: float,
              n_resamples: int, settings: dict | None) -> tuple[PairedComparison | None, str]:
    """The paired bootstrap of the new version against ``champion_version``, or (None, why there is none)."""
    if champion_version is None:
        return None, ""
    if candidate is None:
        return None, f"the new version's run logged no dev predictions ({PREDICTIONS_ARTIFACT})"
    champion_run = client.get_model_version(name, champion_version).run_id
    baseline = run_predictions(champion_run) if champion_run else None
    if baseline is None:
        return None, f"champion v{champion_version}'s run logged no dev predictions ({PREDICTIONS_ARTIFACT})"
    paired = pair_on_rows(candidate, baseline)
    if paired is None:
        return None, f"not comparable with champion v{champion_version}: different dev rows"
    rows, new, old = paired
    return paired_bootstrap(family, new, old, rows, metric, label_names, n_resamples=n_resamples,
                            confidence=confidence, settings=settings), ""


# ---- dev predictions of a run, paired on the same rows ---------------------------------------------------
def run_predictions(run_id: str, artifact_path: str = PREDICTIONS_ARTIFACT) -> list[dict] | None:
    """The lines the evaluate task logged for run ``run_id``: one dict per dev row, the row's fields (with
    ``_source``) plus ``prediction``. None when the run has no such artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=tmp)
        except (MlflowException, OSError):
            return None
        with open(local, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]


def pair_on_rows(candidate: list[dict], baseline: list[dict]) -> tuple[list[dict], list[dict], list[dict]] | None:
    """(rows, candidate predictions, baseline predictions) aligned on the same dev rows, in the baseline's
    order; None unless both hold the same set of rows (matched by ``_source``, gold fields equal).

    Lines without distinct ``_source`` values are matched by position instead."""
    new, old = _keyed(candidate), _keyed(baseline)
    if new.keys() != old.keys() or any(new[k][0] != row for k, (row, _) in old.items()):
        return None
    return [old[k][0] for k in old], [new[k][1] for k in old], [old[k][1] for k in old]


def _keyed(lines: list[dict]) -> dict[str, tuple[dict, dict]]:
    """``_source`` (or ``#<position>``) -> (the row without its prediction, the prediction)."""
    sources = [line.get("_source") for line in lines]
    unique = None not in sources and len(set(sources)) == len(sources)
    return {(source if unique else f"#{i}"): ({k: v for k, v in line.items() if k != "prediction"}, line["prediction"])
            for i, (source, line) in enumerate(zip(sources, lines, strict=True))}


def _champion(client: MlflowClient, name: str, primary_metric: str) -> tuple[str | None, float | None, str | None]:
    """(version, score on ``primary_metric``, data fingerprint) of the current champion, or Nones."""
    # Read the alias map rather than catching "alias not found", whose error code differs across stores.
    version = client.get_registered_model(name).aliases.get(CHAMPION)
    if version is None:
        return None, None, None
    mv = client.get_model_version(name, str(version))
    score = _float(mv.tags.get(f"metric.{primary_metric}"))
    if score is None and mv.run_id:  # a version registered by hand: its run may still hold the metric
        score = client.get_run(mv.run_id).data.metrics.get(primary_metric)
    return str(mv.version), score, mv.tags.get("data_fingerprint")


def retract_version(client: MlflowClient, name: str, version: str, best_effort: bool = False) -> None:
    """Delete a version whose registration did not finish (its run failed or was lost). A champion alias
    it took goes back to the version it displaced (tag ``champion_version``). ``best_effort``: an
    unreachable server is not an error here (the flow's retry cleans up, see tasks.lost_attempts)."""
    try:
        mv = client.get_model_version(name, version)
        displaced = mv.tags.get("champion_version")
        if CHAMPION in (mv.aliases or []) and displaced not in (None, "none"):
            client.set_registered_model_alias(name, CHAMPION, displaced)
        client.delete_model_version(name, version)
    except Exception:
        if not best_effort:
            raise


def _wait_until_ready(client: MlflowClient, name: str, version: str, timeout_s: float = 600) -> None:
    """Aliases must point at usable versions: wait out PENDING_REGISTRATION (remote artifact copies)."""
    deadline = time.monotonic() + timeout_s
    while True:
        mv = client.get_model_version(name, version)
        if mv.status == "READY":
            return
        if mv.status == "FAILED_REGISTRATION":
            raise RuntimeError(f"{name} v{version}: registration failed: {mv.status_message}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} v{version} still {mv.status} after {timeout_s:.0f} s")
        time.sleep(1)


def _number(value) -> str:
    return "none" if value is None else repr(float(value))


# ---- the promotion lock --------------------------------------------------------------------------------
@contextlib.contextmanager
def promotion_lock(client: MlflowClient, name: str, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Serialise the champion's read-compare-set: per local store, or per registered model on a tracking
    server (the module docstring says how, and the limits)."""
    uri = mlflow.get_registry_uri()
    store = local_store_path(uri)
    if store is not None:
        path = store.with_name(store.name + ".promotion.lock") if store.suffix else store / ".promotion.lock"
    else:
        path = bertflow_home() / "locks" / f"promotion-{hashlib.sha256(f'{uri} {name}'.encode()).hexdigest()[:16]}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lease = contextlib.nullcontext() if store is not None else _model_lease(client, name, time.monotonic() + timeout_s)
    with acquire(path, timeout_s), lease:
        yield


@contextlib.contextmanager
def _model_lease(client: MlflowClient, name: str, deadline: float) -> Iterator[None]:
    """Hold the tag ``LEASE_TAG`` of registered model ``name`` (Fischer's algorithm, see the module docstring)."""
    token = f"{datetime.now(UTC).isoformat(timespec='seconds')} {_HOST} pid {os.getpid()} {uuid.uuid4().hex[:8]}"
    _WRITTEN.add(token)
    try:
        _take_lease(client, name, token, deadline)
        yield
    finally:
        with contextlib.suppress(MlflowException):  # server lost: the lease is broken once its holder is gone
            if client.get_registered_model(name).tags.get(LEASE_TAG) == token:
                client.delete_registered_model_tag(name, LEASE_TAG)
        _WRITTEN.discard(token)


def _take_lease(client: MlflowClient, name: str, token: str, deadline: float) -> None:
    while True:
        held = client.get_registered_model(name).tags.get(LEASE_TAG)
        if held is not None and _holder_is_gone(held):
            with contextlib.suppress(MlflowException):
                client.delete_registered_model_tag(name, LEASE_TAG)
            continue
        if held is None:
            try:
                client.set_registered_model_tag(name, LEASE_TAG, token)
            except MlflowException as err:  # a SQL store refuses the second of two concurrent first writes
                if err.error_code not in _LOST_WRITE:
                    raise
                held = "a concurrent writer"
            if held is None:  # every contender that read "absent" has written by now: the last one holds it
                time.sleep(LEASE_SETTLE_S)
                if client.get_registered_model(name).tags.get(LEASE_TAG) == token:
                    return
        if time.monotonic() > deadline:
            raise TimeoutError(f"registered model {name!r}: its promotion lease (tag {LEASE_TAG!r}) is still held "
                               f"by {held or token}")
        time.sleep(0.1 + random.random() * 0.2)  # jitter, so waiters do not retry in lockstep


_HOST = socket.gethostname()
_WRITTEN: set[str] = set()  # lease tokens this process wrote and still holds or waits with


def _holder_is_gone(token: str) -> bool:
    """Whether nobody holds the lease ``token`` any more: it is older than ``STALE_LOCK_S``, or was taken on
    this machine by a process that has died, or by this process, which no longer holds it (an attempt that
    lost the server before it could give the lease back). A tag value bertflow did not write holds nothing."""
    try:
        taken, host, _, pid, _ = token.split()
        age_s, pid = (datetime.now(UTC) - datetime.fromisoformat(taken)).total_seconds(), int(pid)
    except ValueError:
        return True
    if age_s > STALE_LOCK_S:
        return True
    if host != _HOST:
        return False
    if pid == os.getpid():
        return token not in _WRITTEN
    try:
        os.kill(pid, 0)  # signal 0: is it alive?
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


# ---- reading the registry back -------------------------------------------------------------------------
def describe_versions(name: str) -> list[dict]:
    """Every version of ``name``, oldest first: version, run_id, aliases, metrics (from the version tags),
    primary metric and score, data fingerprint, decision, created (ISO 8601, UTC). [] if ``name`` is unknown."""
    client = MlflowClient()
    try:
        registered = client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    aliases: dict[str, list[str]] = {}
    for alias, version in registered.aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    quoted = name.replace("'", "\\'")
    versions, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{quoted}'", page_token=token)
        versions.extend(page)
        token = page.token
        if not token:
            break
    rows = []
    for mv in sorted(versions, key=lambda v: int(v.version)):
        tags = mv.tags
        metrics = {k.removeprefix("metric."): _float(v) for k, v in tags.items() if k.startswith("metric.")}
        primary = tags.get("primary_metric")
        rows.append({
            "version": str(mv.version), "run_id": mv.run_id, "aliases": sorted(aliases.get(str(mv.version), [])),
            "metrics": metrics, "primary_metric": primary, "primary_score": metrics.get(primary),
            "data_fingerprint": tags.get("data_fingerprint"), "decision": tags.get("decision"),
            "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC).isoformat(timespec="seconds"),
        })
    return rows


def _float(text: str | None) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):  # absent, or "none" for a metric that had no value
        return None


def decision_markdown(decision: RegistryDecision) -> str:
    """A short report for a Prefect markdown artifact."""
    def fmt(x):
        return "—" if x is None else f"{x:.4f}"

    verdict = "**is the new champion**" if decision.became_champion else f"is a **{decision.alias}**"
    metric = decision.primary_metric or "primary metric"
    previous = f"v{decision.champion_version}" if decision.champion_version else "none"
    lines = [
        f"### {decision.name} v{decision.version} {verdict}",
        "",
        f"| | version | {metric} |",
        "|---|---|---|",
        f"| new | v{decision.version} | {fmt(decision.new_score)} |",
        f"| champion before | {previous} | {fmt(decision.champion_score)} |",
    ]
    if decision.evidence:  # policy "significant"
        e = decision.evidence
        lines.append(f"| new - champion, paired on {e['n_rows']} dev rows | | {e['delta']:+.4f} "
                     f"({e['confidence']:.0%} interval {e['low']:+.4f} to {e['high']:+.4f}; new higher in "
                     f"{e['p_candidate_better']:.1%} of resamples) |")
    return "\n".join([
        *lines,
        "",
        f"Policy: `{decision.policy}`. Reason: {decision.reason}",
        "",
        f"Serve it: `mlflow models serve -m models:/{decision.name}@{decision.alias} --env-manager local`",
    ])
