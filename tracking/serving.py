"""The MLflow side of `bertflow predict` and `bertflow serve`: predictions of a logged or registered model for a
few rows here, and the check and environment for MLflow's scoring server.

    predict_rows("models:/bert-sst2@champion", [{"text": "a gripping film"}])  # -> DataFrame, a row per request
    serving_environment("models:/bert-sst2@champion")   # -> (store URI, env of `mlflow models serve`)
"""

from __future__ import annotations

import json
import os

import pandas as pd

from tracking.packaging import PRECISION_KEY, load_pyfunc
from tracking.pinning import pin_model
from tracking.store import check_tracking, configure_tracking


def predict_rows(model_uri: str, rows: list[dict], tracking_uri: str | None = None,
                 precision: str | None = None) -> pd.DataFrame:
    """The model's predictions of `rows` (request columns, e.g. text / text_a, text_b / tokens / question,
    context), one row each, in order; the store: `tracking_uri`, else MLflow's default of bertflow's.
    `precision` (auto, fp32, bf16, int8) replaces the one logged with the model; None keeps it."""
    configure_tracking(tracking_uri)
    return load_pyfunc(model_uri, precision).predict(pd.DataFrame(rows))


def serving_environment(model_uri: str, tracking_uri: str | None = None,
                        precision: str | None = None) -> tuple[str, dict[str, str]]:
    """The store's URI (checked reachable) and the environment `mlflow models serve -m model_uri` needs to find
    the model there. A registered model is looked up first, so a wrong name or alias fails here, naming the
    store and the models it has, rather than deep inside the server. `precision` (auto, fp32, bf16, int8) replaces
    the one logged with the model, through MLflow's $MLFLOW_PYFUNC_INFERENCE_CONFIG (its `model_config` at load:
    tracking.packaging.BertPyfunc); None keeps it."""
    uri = configure_tracking(check_tracking(tracking_uri))
    if model_uri.startswith("models:/"):
        try:
            pin_model(model_uri)
        except ValueError as err:
            raise ValueError(f"{err}. Fine-tune one with `bertflow run`, or point --tracking-uri / "
                             "MLFLOW_TRACKING_URI at the store that holds it") from None
    # Pickled models run arbitrary code when loaded: refused unless the environment asks for them.
    pickle = os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": pickle}
    if precision is not None:
        env["MLFLOW_PYFUNC_INFERENCE_CONFIG"] = json.dumps({PRECISION_KEY: precision})
    return uri, env
