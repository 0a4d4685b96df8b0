"""A faster serving precision of a registered fp32 version, registered as its own version once it passed the gate
(``bert_core.precision_gate``):

    register_precision_version(gate, "bert-sst2", "4", model_dir, family, example_rows, card_body, description)
    -> "5"   # models:/bert-sst2/5 serves v4's weights in int8

The new version's logged model holds the same fp32 files as the fp32 version's (MLflow copies a model's artifacts
into it) with its precision as the pyfunc's ``model_config``, so loading or serving it predicts in that precision.
It takes no alias: ``champion`` and ``challenger`` stay on fp32 versions, chosen by the registry's policy, and
a person or a deployment picks ``models:/bert-<task>/<N>``. Tags: ``precision``, ``derived_from_version`` and the
gate's figures (``gate.*``) on it; ``serving.<precision>`` = its number on the fp32 version. Its model card is the
fp32 version's body with a section on the precision, the gate and both dev scores.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from bert_core.precision_gate import GateResult
from tracking.model_card import model_card
from tracking.packaging import log_model
from tracking.registry import retract_version

ENGINES = {
    "bf16": "bf16 matmuls (autocast; LayerNorm, softmax and the rest in fp32)",
    "int8": "dynamic int8 quantization of every linear layer (int8 weights, activations quantized per batch; "
            "torch.ao.quantization.quantize_dynamic), applied when the model is loaded",
}


def register_precision_version(gate: GateResult, name: str, fp32_version: str, model_dir: str | Path, family: str,
                               example_rows: list[dict], card_body: str, description: str) -> str:
    """Log ``model_dir`` in the active run to be served in ``gate.precision``, register it as a new version of
    ``name`` derived from ``fp32_version``, write its card; returns its version. Refuses a gate that did not pass."""
    if not gate.passed:
        raise ValueError(f"{gate.precision} did not pass the gate, so it is not registered: {gate.reason}")
    with _quiet_model_config_param():
        info = log_model(model_dir, family, example_rows, precision=gate.precision, name=f"model-{gate.precision}")
    tags = {"precision": gate.precision, "derived_from_version": str(fp32_version), "primary_metric": gate.metric,
            f"metric.{gate.metric}": repr(gate.candidate_score), **gate.tags()}
    version = str(mlflow.register_model(info.model_uri, name, tags=tags).version)
    client = MlflowClient()
    try:
        card = model_card(card_body, name, version, gate.precision, gate.reason, description,
                          precision_section(gate, fp32_version))
        client.update_model_version(name, version, description=card)
        client.set_model_version_tag(name, fp32_version, f"serving.{gate.precision}", version)
    except BaseException:
        retract_version(client, name, version, best_effort=True)  # no half-registered version stays behind
        raise
    return version


@contextlib.contextmanager
def _quiet_model_config_param() -> Iterator[None]:
    """MLflow logs a model's model_config as its run's params; the run's own model logged `serving_precision`
    (fp32) already, so logging this one's warns that a param cannot change. Expected here: that warning is dropped."""
    logger = logging.getLogger("mlflow.models.model")
    drop = _DropMessage("Failed to log model config as params")
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def precision_section(gate: GateResult, fp32_version: str) -> str:
    """The card's part on the serving precision: what it is, the gate's verdict and each precision's dev score."""
    engine = ENGINES.get(gate.precision, gate.precision)
    return "\n".join([
        f"**Serving precision**: {gate.precision}: {engine}. The weights are v{fp32_version}'s, stored in fp32; "
        f"the precision is applied at load (`bertflow serve --precision` or `bertflow score --precision` override "
        "it).",
        "",
        f"**Gate**: registered because the {gate.confidence:.0%} paired-bootstrap interval of ({gate.precision} - "
        f"fp32) on {gate.n_rows} dev rows, [{gate.low:+.4f}, {gate.high:+.4f}], starts at or above {-gate.margin:+g} "
        "(the margin).",
        "",
        f"| precision | dev {gate.metric} |",
        "|---|---|",
        f"| fp32 (v{fp32_version}) | {gate.fp32_score:.4f} |",
        f"| {gate.precision} (this version) | {gate.candidate_score:.4f} |",
    ])
