"""Registry promotion on a real (temporary sqlite) MLflow store: champion/challenger, tags, races."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.mlflow_store import sqlite_store
from tracking import registry
from tracking.registry import RegistryDecision, decision_markdown, describe_versions, register_version


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite tracking + registry store shared by this module (creating one takes seconds); each test
    registers under its own model name. The global MLflow URIs are reset afterwards."""
    yield from sqlite_store(tmp_path_factory, "registry")


@pytest.fixture
def name(store, request):
    """A registered model name of this test's own."""
    return "bert-" + request.node.name.replace("[", "-").rstrip("]")


class Echo(mlflow.pyfunc.PythonModel):
    """The smallest real pyfunc: the registry never looks inside the model."""

    def predict(self, context, model_input, params=None):
        return model_input


def _logged_model(score: float, metric: str = "mcc", predictions: list[dict] | None = None) -> tuple[str, str, dict]:
    """(model URI, run id, metrics) of a run that logged a trivial model and a dev score; with `predictions`
    also the evaluate task's dev predictions and the `family` tag, as the finetune flow does."""
    with mlflow.start_run() as run:
        mlflow.log_metric(metric, score)
        if predictions is not None:
            mlflow.set_tag("family", "single_classification")
            mlflow.log_text("".join(json.dumps(line) + "\n" for line in predictions), registry.PREDICTIONS_ARTIFACT)
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=["mlflow"],
                                       input_example=pd.DataFrame({"x": [1.0]}))
    return info.model_uri, run.info.run_id, {"accuracy": 0.5, metric: score}


def _register(name: str, score: float, **kwargs) -> RegistryDecision:
    uri, run_id, metrics = _logged_model(score)
    return register_version(uri, name, run_id, metrics, "mcc", data_fingerprint="fp-1", **kwargs)


def test_champion_moves_only_to_a_better_version(name):
    first, second, third = _register(name, 0.8), _register(name, 0.7), _register(name, 0.9)

    assert (first.version, first.alias, first.became_champion) == ("1", "champion", True)
    assert first.champion_score is None and first.champion_version is None
    assert (second.alias, second.became_champion, second.champion_version) == ("challenger", False, "1")
    assert second.new_score == 0.7 and second.champion_score == 0.8
    assert (third.alias, third.champion_version, third.champion_score) == ("champion", "1", 0.8)

    client = MlflowClient()
    assert str(client.get_model_version_by_alias(name, "champion").version) == "3"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"


def test_a_tie_with_the_champion_does_not_promote(name):
    first, tie = _register(name, 0.8), _register(name, 0.8)
    assert (first.alias, tie.alias, tie.became_champion) == ("champion", "challenger", False)
    assert "does not beat" in tie.reason
    assert str(MlflowClient().get_model_version_by_alias(name, "champion").version) == first.version


def test_retracting_a_champion_hands_the_alias_back(name):
    """What a failed or lost run's version gets: deleted, and the champion it displaced is champion again."""
    _register(name, 0.8)
    displaced_by = _register(name, 0.9)
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(name, "champion").version) == displaced_by.version == "2"
    registry.retract_version(client, name, "2")
    assert [str(v.version) for v in client.search_model_versions(f"name = '{name}'")] == ["1"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    registry.retract_version(client, name, "1")  # the first champion displaced nobody: no champion is left
    assert client.get_registered_model(name).aliases == {}


def test_a_failure_after_registering_leaves_no_version(name, monkeypatch):
    _register(name, 0.8)

    def lost(*args, **kwargs):
        raise ConnectionError("tracking server lost")

    monkeypatch.setattr(registry, "promotion_lock", lost)
    with pytest.raises(ConnectionError):
        _register(name, 0.9)
    client = MlflowClient()
    assert [str(v.version) for v in client.search_model_versions(f"name = '{name}'")] == ["1"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"


def test_versions_carry_metrics_and_the_decision(name):
    _register(name, 0.8)
    decision = _register(name, 0.7)
    tags = MlflowClient().get_model_version(name, decision.version).tags
    assert float(tags["metric.mcc"]) == 0.7 and float(tags["metric.accuracy"]) == 0.5
    assert tags["primary_metric"] == "mcc" and tags["data_fingerprint"] == "fp-1"
    assert tags["run_id"] == MlflowClient().get_model_version(name, decision.version).run_id
    assert tags["decision"] == "challenger" and tags["became_champion"] == "false"
    assert float(tags["new_score"]) == 0.7 and float(tags["champion_score"]) == 0.8
    assert tags["champion_version"] == "1" and "does not beat" in tags["decision_reason"]


def test_lower_is_better_and_policies(name):
    assert _register(name, 0.5, higher_is_better=False).became_champion
    assert _register(name, 0.3, higher_is_better=False).became_champion
    assert not _register(name, 0.4, higher_is_better=False).became_champion
    assert _register(name, 0.1, policy="always").became_champion
    assert not _register(name, 0.99, policy="never").became_champion
    with pytest.raises(ValueError, match="policy"):
        _register(name, 0.5, policy="sometimes")


def test_missing_primary_metric_is_named(name):
    uri, run_id, metrics = _logged_model(0.8)
    with pytest.raises(ValueError, match="f1"):
        register_version(uri, name, run_id, metrics, "f1", "fp-1")


def test_describe_versions_for_compare(name):
    _register(name, 0.8)
    _register(name, 0.7)
    rows = describe_versions(name)
    assert [r["version"] for r in rows] == ["1", "2"]
    assert rows[0]["aliases"] == ["champion"] and rows[1]["aliases"] == ["challenger"]
    assert rows[1]["metrics"] == {"mcc": 0.7, "accuracy": 0.5} and rows[1]["primary_score"] == 0.7
    assert rows[0]["data_fingerprint"] == "fp-1" and rows[0]["run_id"] and rows[0]["created"].endswith("+00:00")
    assert describe_versions("bert-never-registered") == []


def test_decision_markdown_names_versions_and_scores():
    decision = RegistryDecision("bert-cola", "3", "champion", True, 0.61, 0.55, "2", "0.61 beats 0.55", "mcc")
    text = decision_markdown(decision)
    assert "bert-cola v3" in text and "new champion" in text and "0.6100" in text and "v2" in text
    assert "models:/bert-cola@champion" in text


@pytest.mark.parametrize("lock", ["file", "server"])
def test_concurrent_registrations_end_with_the_better_champion(name, lock, monkeypatch, tmp_path):
    """Both flows read "no champion" unless promotion is serialised; the alias must end on 0.9."""
    leases = []
    if lock == "server":  # the tracking-server locks (this machine's lock file, the model's lease) on sqlite
        monkeypatch.setattr(registry, "local_store_path", lambda uri: None)
        monkeypatch.setenv("BERTFLOW_HOME", str(tmp_path))
        real_lease = registry._model_lease
        monkeypatch.setattr(registry, "_model_lease", lambda *args: leases.append(args[1]) or real_lease(*args))
    models = [_logged_model(score) for score in (0.9, 0.6, 0.75, 0.85)]
    barrier = threading.Barrier(len(models))
    real_champion = registry._champion

    def slow_champion(*args):  # widen the read-compare-set window so an unlocked version would race
        result = real_champion(*args)
        threading.Event().wait(0.2)
        return result

    monkeypatch.setattr(registry, "_champion", slow_champion)
    decisions, errors = [], []

    def run(uri, run_id, metrics):
        try:
            barrier.wait()
            decisions.append(register_version(uri, name, run_id, metrics, "mcc", "fp-1"))
        except Exception as err:  # surfaced below: an exception in a thread would otherwise vanish
            errors.append(err)

    threads = [threading.Thread(target=run, args=m) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    champion = MlflowClient().get_model_version_by_alias(name, "champion")
    assert float(champion.tags["metric.mcc"]) == 0.9
    assert sum(d.became_champion and d.new_score == 0.9 for d in decisions) == 1
    assert "promotion-lock" not in str([m.name for m in MlflowClient().search_registered_models()])
    assert registry.LEASE_TAG not in MlflowClient().get_registered_model(name).tags, "every lease was given back"
    assert leases == ([name] * len(models) if lock == "server" else [])


def test_the_model_lease_excludes_promotions_on_other_machines(name, monkeypatch):
    """Without this machine's lock file (as from several machines), the lease on the registered model alone
    lets one holder in at a time, and is given back."""
    monkeypatch.setattr(registry, "LEASE_SETTLE_S", 0.5)  # still far above a local sqlite write
    client = MlflowClient()
    client.create_registered_model(name)
    inside, most, errors = [], [], []
    barrier = threading.Barrier(3)

    def promote():
        try:
            barrier.wait()
            with registry._model_lease(MlflowClient(), name, time.monotonic() + 60):
                inside.append(1)
                most.append(len(inside))
                threading.Event().wait(0.3)
                inside.pop()
        except Exception as err:  # surfaced below: an exception in a thread would otherwise vanish
            errors.append(err)

    threads = [threading.Thread(target=promote) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert most == [1, 1, 1]
    assert registry.LEASE_TAG not in client.get_registered_model(name).tags


def test_a_lease_whose_holder_is_gone_is_broken_and_a_live_one_is_not(name):
    client = MlflowClient()
    client.create_registered_model(name)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = ["2020-01-01T00:00:00+00:00 other-host pid 1 00000000",  # older than STALE_LOCK_S
            f"{now} {socket.gethostname()} pid {dead.stdout.strip()} 00000000",  # a dead process of this machine
            f"{now} {socket.gethostname()} pid {os.getpid()} 00000000",  # this process, which lost it
            "set by hand"]
    for token in gone:
        client.set_registered_model_tag(name, registry.LEASE_TAG, token)
        with registry._model_lease(client, name, time.monotonic() + 10):
            held = client.get_registered_model(name).tags[registry.LEASE_TAG]
            assert held != token and f" pid {os.getpid()} " in held, (token, held)
        assert registry.LEASE_TAG not in client.get_registered_model(name).tags
    alive = f"{now} another-machine pid {os.getpid()} 00000000"
    client.set_registered_model_tag(name, registry.LEASE_TAG, alive)
    with pytest.raises(TimeoutError, match="another-machine"), registry._model_lease(client, name, time.monotonic() + 1):
        pass
    assert client.get_registered_model(name).tags[registry.LEASE_TAG] == alive


# ---- policy "significant": a paired bootstrap against the champion's dev predictions -------------------
LABELS = ["0", "1"]
DEV = [{"text_a": f"dev sentence {i}", "text_b": None, "label": LABELS[i % 2], "_source": f"SST-2/dev.tsv:{i + 2}"}
       for i in range(400)]


def _dev_predictions(accuracy: float, rows: list[dict] = DEV) -> list[dict]:
    """Evaluate-task lines whose first round(accuracy * n) rows are right: nested, so a more accurate set
    fixes exactly the other's first mistakes (a known, one-sided gap)."""
    right = round(accuracy * len(rows))
    lines = []
    for i, row in enumerate(rows):
        label = row["label"] if i < right else LABELS[1 - LABELS.index(row["label"])]
        probabilities = {name: 0.9 if name == label else 0.1 for name in LABELS}  # label order, as postprocess
        lines.append({**row, "prediction": {"label": label, "score": 0.9, "probabilities": probabilities}})
    return lines


def _register_significant(name: str, accuracy: float, predictions: list[dict] | None = None,
                          **kwargs) -> RegistryDecision:
    lines = _dev_predictions(accuracy) if predictions is None else predictions
    uri, run_id, metrics = _logged_model(accuracy, "accuracy", lines or None)
    return register_version(uri, name, run_id, metrics, "accuracy", "fp-1", policy="significant",
                            n_resamples=300, **kwargs)


def test_significant_promotes_a_clear_gain_only(name):
    first = _register_significant(name, 0.70)
    assert first.became_champion and first.evidence is None and "no champion yet" in first.reason

    # +2 rows of 400: "better" would promote it; the interval of the gap reaches down to 0.
    slight = _register_significant(name, 0.705)
    assert slight.alias == "challenger" and not slight.became_champion
    assert slight.evidence["delta"] == pytest.approx(0.005) and slight.evidence["low"] <= 0
    assert "not significant at 95%" in slight.reason

    # +40 rows: every resample favours it.
    clear = _register_significant(name, 0.80)
    assert clear.became_champion and clear.champion_version == "1"
    assert clear.evidence["delta"] == pytest.approx(0.10) and clear.evidence["low"] > 0.05
    assert clear.evidence["p_candidate_better"] == 1.0 and clear.evidence["n_rows"] == 400
    tags = MlflowClient().get_model_version(name, clear.version).tags
    assert tags["policy"] == "significant" and tags["decision"] == "champion"
    assert float(tags["significance.delta"]) == pytest.approx(0.10) and float(tags["significance.low"]) > 0.05
    assert float(tags["significance.high"]) >= 0.10 and tags["significance.rows"] == "400"
    assert float(tags["significance.confidence"]) == 0.95 and float(tags["significance.p_candidate_better"]) == 1.0
    assert "significant: the interval lies above 0" in tags["decision_reason"]
    markdown = decision_markdown(clear)
    assert "paired on 400 dev rows" in markdown and "+0.1000" in markdown and "`significant`" in markdown

    # The same predictions again (a near-copy of the champion): delta 0 on every resample.
    copy = _register_significant(name, 0.80)
    assert copy.alias == "challenger" and copy.champion_version == clear.version
    assert copy.evidence["delta"] == 0 and copy.evidence["p_candidate_better"] == 0.0
    assert str(MlflowClient().get_model_version_by_alias(name, "champion").version) == clear.version


def test_significant_confidence_is_a_parameter(name):
    _register_significant(name, 0.70)
    # +2 rows of 400: about e^-2 = 13% of resamples draw neither of them (delta 0), so the 95% interval
    # starts at 0 (refused, as above) but the 50% interval, from the 25% quantile, lies above it.
    lenient = _register_significant(name, 0.705, confidence=0.5)
    assert lenient.became_champion and 0 < lenient.evidence["low"] and lenient.evidence["confidence"] == 0.5
    assert "significant: the interval lies above 0" in lenient.reason
    with pytest.raises(ValueError, match="confidence"):
        _register_significant(name, 0.9, confidence=95)


def test_significant_refuses_what_it_cannot_pair(name):
    _register_significant(name, 0.70)
    other_rows = [{**row, "_source": f"SST-2/other.tsv:{i}"} for i, row in enumerate(DEV)]
    moved = _register_significant(name, 0.95, _dev_predictions(0.95, other_rows))
    assert moved.alias == "challenger" and moved.evidence is None
    assert "not comparable with champion v1: different dev rows" in moved.reason
    tags = MlflowClient().get_model_version(name, moved.version).tags
    assert tags["significance.note"] == "not comparable with champion v1: different dev rows"

    fewer = _register_significant(name, 0.95, _dev_predictions(0.95)[:300])
    assert not fewer.became_champion and "different dev rows" in fewer.reason
    relabelled = [{**line, "label": "1"} for line in _dev_predictions(0.95)]  # same sources, other gold
    assert "different dev rows" in _register_significant(name, 0.95, relabelled).reason

    # A run that logged no predictions: no evidence, so a person decides.
    silent = _register_significant(name, 0.99, [], family="single_classification")
    assert not silent.became_champion and "logged no dev predictions" in silent.reason


def test_significant_needs_the_family(name):
    uri, run_id, metrics = _logged_model(0.9, "accuracy")  # no `family` tag
    with pytest.raises(ValueError, match="family"):
        register_version(uri, name, run_id, metrics, "accuracy", "fp-1", policy="significant")
    assert describe_versions(name) == []  # refused before registering anything


def test_concurrent_significant_registrations_compare_with_the_latest_champion(name, monkeypatch):
    """Each challenger bootstraps against the champion it saw; one that finds the champion moved by the
    time it holds the lock must compare again, so no two versions get promoted over the same champion."""
    _register_significant(name, 0.60)
    models = [_logged_model(a, "accuracy", _dev_predictions(a)) for a in (0.9, 0.65, 0.8, 0.85)]
    barrier, compared = threading.Barrier(len(models)), threading.Barrier(len(models))
    decisions, errors, evidence_for = [], [], []
    real_evidence = registry._evidence

    def evidence_then_wait(client, name, champion_version, **kwargs):
        # Hold every first comparison until all four have bootstrapped against v1: then all but the first
        # to take the lock find the champion moved.
        result = real_evidence(client, name, champion_version, **kwargs)
        first = champion_version == "1" and len(evidence_for) < len(models)
        evidence_for.append(champion_version)
        if first:
            compared.wait(60)
        return result

    monkeypatch.setattr(registry, "_evidence", evidence_then_wait)

    def run(uri, run_id, metrics):
        try:
            barrier.wait()
            decisions.append(register_version(uri, name, run_id, metrics, "accuracy", "fp-1", policy="significant",
                                              n_resamples=200))
        except Exception as err:  # surfaced below: an exception in a thread would otherwise vanish
            errors.append(err)

    threads = [threading.Thread(target=run, args=m) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert float(MlflowClient().get_model_version_by_alias(name, "champion").tags["metric.accuracy"]) == 0.9
    assert evidence_for[:4] == ["1"] * 4 and len(evidence_for) >= 7  # three compared again, at least
    promoted = [d for d in decisions if d.became_champion]
    assert len({d.champion_version for d in promoted}) == len(promoted), [d.reason for d in promoted]
    for d in decisions:  # every decision's evidence is against the champion it names
        assert d.evidence["delta"] == pytest.approx(d.new_score - d.champion_score)
