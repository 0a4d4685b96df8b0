"""Registry comparison: every version side by side with bootstrap intervals, and the `significant` policy.

Two tiers: fast tests on hand-made dev predictions with known gaps (a temporary sqlite store, no
training), and an integration test with two real sst2 fine-tunes whose difference is known (50 vs 800
training rows) run by the finetune flow, compared by the compare flow.
"""

from __future__ import annotations

import json
import time

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from prefect.artifacts import Artifact

from bert_core.training import TrainConfig
from tests.mlflow_store import sqlite_store
from tracking.compare import NOT_COMPARABLE, compare_versions, display_rows, run_comparison
from tracking.registry import PREDICTIONS_ARTIFACT, register_version
from tracking.store import experiment_for

LABELS = ["0", "1"]
DEV = [{"text_a": f"dev sentence {i}", "text_b": None, "label": LABELS[i % 2], "_source": f"SST-2/dev.tsv:{i + 2}"}
       for i in range(400)]


# ---- fast: hand-made predictions ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The experiment id of a temporary sqlite tracking + registry store for this module; global MLflow URIs
    reset afterwards."""
    for uri in sqlite_store(tmp_path_factory, "compare-test"):
        yield experiment_for("compare-test", uri)  # the store's experiment, made by sqlite_store


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def _dev_predictions(accuracy: float, rows: list[dict] = DEV) -> list[dict]:
    """Evaluate-task lines whose first round(accuracy * n) rows are right (nested: a known, one-sided gap)."""
    right = round(accuracy * len(rows))
    lines = []
    for i, row in enumerate(rows):
        label = row["label"] if i < right else LABELS[1 - LABELS.index(row["label"])]
        probabilities = {name: 0.9 if name == label else 0.1 for name in LABELS}
        lines.append({**row, "prediction": {"label": label, "score": 0.9, "probabilities": probabilities}})
    return lines


def _version(experiment_id: str, name: str, accuracy: float, predictions: list[dict] | None, policy: str = "never",
             max_train_samples: int = 800):
    """A run shaped like a finetune run (params, tags, metrics, dev predictions) registered under `name`."""
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.set_tags({"family": "single_classification", "pretrained": "/models/all-MiniLM-L6-v2",
                         "data_fingerprint": "fp-sst2"})
        mlflow.log_params({"training.learning_rate": 1e-4, "training.batch_size": 16, "training.epochs": 2.0,
                           "training.max_train_samples": max_train_samples})
        mlflow.log_metrics({"eval_accuracy": accuracy, "train_seconds": 12.5, "examples_per_second": 64.0})
        if predictions is not None:
            mlflow.log_text("".join(json.dumps(line) + "\n" for line in predictions), PREDICTIONS_ARTIFACT)
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=["mlflow"],
                                       input_example=pd.DataFrame({"x": [1.0]}))
    return register_version(info.model_uri, name, run.info.run_id, {"accuracy": accuracy}, "accuracy",
                            "fp-sst2|eval[:400]", policy=policy)


def test_versions_side_by_side_with_intervals(store, tmp_path):
    name = "bert-sst2-side-by-side"
    assert _version(store, name, 0.70, _dev_predictions(0.70), policy="better").became_champion  # v1
    _version(store, name, 0.85, _dev_predictions(0.85))  # v2: 60 more rows right than the champion
    _version(store, name, 0.705, _dev_predictions(0.705))  # v3: 2 more rows right
    other_rows = [{**row, "_source": f"SST-2/other.tsv:{i}"} for i, row in enumerate(DEV)]
    _version(store, name, 0.9, _dev_predictions(0.9, other_rows))  # v4: other dev rows
    _version(store, name, 0.5, None, max_train_samples=50)  # v5: no predictions logged

    rows = compare_versions("sst2", n_resamples=300, name=name)
    by_version = {r["version"]: r for r in rows}
    assert [r["version"] for r in rows] == ["4", "2", "3", "1", "5"]  # best first
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]

    champion, gain, tie, moved, silent = (by_version[v] for v in "12345")
    assert champion["aliases"] == ["champion"] and champion["note"] == "champion"
    for r in (champion, gain, tie, moved):
        assert r["low"] < r["score"] < r["high"] and r["dev_rows"] == 400
    # Binomial standard error at 0.7 on 400 rows is 0.023: a 95% interval about 0.09 wide.
    assert 0.06 < champion["high"] - champion["low"] < 0.12
    assert gain["vs_champion"] == pytest.approx(0.15) and gain["vs_champion_low"] > 0.1 and gain["p_better"] == 1.0
    assert gain["note"] == "better than champion v1 (95%)"
    assert tie["vs_champion"] == pytest.approx(0.005) and tie["vs_champion_low"] <= 0
    assert tie["note"].startswith("no significant difference")
    assert moved["note"] == NOT_COMPARABLE and moved["vs_champion"] is None and moved["score"] == pytest.approx(0.9)
    assert silent["note"] == "no dev predictions logged" and silent["low"] is None and silent["score"] == 0.5

    # What produced each version comes from its run.
    assert gain["pretrained"] == "/models/all-MiniLM-L6-v2" and gain["data_fingerprint"] == "fp-sst2"
    assert (gain["learning_rate"], gain["batch_size"], gain["epochs"], gain["max_train_samples"]) == (1e-4, 16, 2.0, 800)
    assert silent["max_train_samples"] == 50 and gain["train_seconds"] == 12.5 and gain["examples_per_second"] == 64
    cells = display_rows(rows)
    assert cells[1]["vs champion"].startswith("+0.1500 [+0.1") and cells[1]["pretrained"] == "all-MiniLM-L6-v2"
    assert len({tuple(c) for c in cells}) == 1  # same columns in every row: one table

    result = run_comparison("sst2", n_resamples=100, run_root=str(tmp_path), name=name)
    assert result.chart.endswith("comparison.png") and open(result.chart, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "| v2 | " in result.markdown and "not comparable: different dev rows" in result.markdown
    client = MlflowClient()
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("compare-")
    assert run.data.tags["run_kind"] == "compare" and run.data.tags["champion_version"] == "1"
    logged = {a.path for a in client.list_artifacts(result.mlflow_run_id, "compare")}
    assert logged == {"compare/comparison.png", "compare/comparison.md", "compare/comparison.csv"}


def test_unknown_model_is_named(store):
    with pytest.raises(LookupError, match="bert-sst2-nothing"):
        compare_versions("sst2", name="bert-sst2-nothing")


# ---- integration: two real fine-tunes, 50 vs 800 training rows -------------------------------------------
# MiniLM-L6 on sst2, the same 400 dev rows for both. Measured here: about 0.55 vs 0.80 accuracy.
BUDGET = {"max_eval_samples": 400, "epochs": 2, "learning_rate": 1e-4, "batch_size": 16, "max_seq_length": 128,
          "progress_bar": False}


@pytest.fixture(scope="module")
def flow_env(real_data_flow_root):
    """Prefect test server + MLflow sqlite store, BERTFLOW_HOME and feature cache, all temporary."""
    return real_data_flow_root


@pytest.fixture(scope="module")
def small_and_big(flow_env) -> tuple[dict, dict]:
    """The finetune flow's summaries of sst2 trained on 50 rows (v1) and on 800 rows (v2)."""
    from flows.finetune import finetune
    from flows.params import FinetuneParams

    summaries = []
    for rows in (50, 800):
        wall, cpu = time.perf_counter(), time.process_time()
        s = finetune(FinetuneParams(task="sst2", training=TrainConfig(max_train_samples=rows, **BUDGET)))
        print(f"\nsst2 {rows} rows: accuracy {s['score']:.3f}, {time.perf_counter() - wall:.0f} s wall, "
              f"{time.process_time() - cpu:.0f} s CPU")
        summaries.append(s)
    return summaries[0], summaries[1]


@pytest.mark.integration
def test_compare_flow_ranks_the_bigger_run_first(small_and_big):
    from flows.compare import compare
    from flows.params import CompareParams

    small, big = small_and_big
    result = compare(CompareParams(task="sst2", n_resamples=500))
    rows = result["rows"]
    for r in rows:
        print(f"v{r['version']} {r['aliases']}: {r['score']:.3f} [{r['low']:.3f}, {r['high']:.3f}] {r['note']}")
    assert [r["version"] for r in rows] == [big["model_version"], small["model_version"]]
    top, bottom = rows
    assert top["score"] == pytest.approx(big["score"]) and bottom["score"] == pytest.approx(small["score"])
    assert top["max_train_samples"] == 800 and bottom["max_train_samples"] == 50
    assert top["dev_rows"] == bottom["dev_rows"] == 400 and top["data_fingerprint"] == bottom["data_fingerprint"]
    assert top["train_seconds"] > 0 and top["examples_per_second"] > 0 and top["pretrained"]
    # The gap (~0.25) is several interval widths (~0.09): the bigger run's interval lies wholly above.
    assert top["low"] > bottom["high"]
    # v2 took the alias under "better"; v1 pairs with it on the same 400 rows and is clearly worse.
    assert "champion" in top["aliases"] and bottom["note"] == f"worse than champion v{top['version']} (95%)"
    assert bottom["vs_champion_high"] < 0

    client = MlflowClient()
    logged = {a.path for a in client.list_artifacts(result["mlflow_run_id"], "compare")}
    assert "compare/comparison.png" in logged and open(result["chart"], "rb").read(4) == b"\x89PNG"
    table = Artifact.get("bert-sst2-comparison")
    assert table is not None and table.type == "table" and "v" + big["model_version"] in str(table.data)
    assert Artifact.get("bert-sst2-comparison-report").type == "markdown"


@pytest.mark.integration
def test_significant_policy_on_real_runs(small_and_big):
    """Registered again under a model of its own, with policy "significant": the small run first (no
    champion yet), then the big one (promoted on the evidence), then the big one again (a copy: refused)."""
    client = MlflowClient()
    name = "bert-sst2-significant"

    def register(summary: dict):
        source = client.get_model_version(summary["model_name"], summary["model_version"]).source
        return register_version(source, name, summary["mlflow_run_id"], {"accuracy": summary["score"]}, "accuracy",
                                "fp", policy="significant")

    small, big = small_and_big
    first, better, copy = register(small), register(big), register(big)
    print(f"\n{better.reason}\n{copy.reason}")
    assert first.became_champion and first.evidence is None
    assert better.became_champion and better.champion_version == first.version
    assert better.evidence["n_rows"] == 400 and better.evidence["low"] > 0
    assert better.evidence["delta"] == pytest.approx(big["score"] - small["score"])
    assert copy.alias == "challenger" and copy.evidence["delta"] == 0 and copy.evidence["high"] == 0
    assert str(client.get_model_version_by_alias(name, "champion").version) == better.version
    assert client.get_model_version(name, better.version).tags["significance.rows"] == "400"
