"""A fine-tuned bertflow model as an MLflow pyfunc, so ``mlflow models serve -m models:/bert-<task>@champion``
answers JSON requests for any of the four families.

The logged model holds the ``save_finetuned`` folder as the artifact ``model_dir`` (safetensors weights,
config.json, tokenizer.json) and ``bert_core`` + ``tracking`` as code. It is logged "from code"
(``tracking/model_code.py`` builds a ``BertPyfunc``), so nothing is pickled: logging writes no
``python_model.pkl`` and loading unpickles nothing. Weights load through ``bert_core.predict``; the family
comes from the model folder's own config. (Versions logged before this held a ``python_model.pkl`` of
the family name; MLflow still loads them, and refuses them with a clear message where
``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``.)

Input columns (one request row per DataFrame row; positions in error messages are 0-based), and after them the
column names the model's training spec read each field from (SST-2's ``sentence``; ``tracking.request_check``):

| family | input columns | output columns |
|---|---|---|
| single_classification | ``text`` (or ``text_a``) | ``label`` (display name), ``label_value``, ``score`` (its probability) |
| pair_classification | ``text_a``, ``text_b`` (or ``text``, ``text_pair``) | ``label``, ``label_value``, ``score`` |
| pair_regression | ``text_a``, ``text_b`` (or ``text``, ``text_pair``) | ``score`` |
| token_tagging | ``tokens`` (list of words) or ``text`` (split on whitespace) | ``tags`` (one per word) |
| extractive_qa | ``question``, ``context`` (``id`` optional) | ``answer``, ``start``, ``end``, ``score`` |

A missing column, a non-string or empty value, or a text over the model's limit (``MAX_TEXT_CHARS``, or
``MAX_LONG_TEXT_CHARS`` for a model trained with ``long_text``: the checks of ``tracking.request_check``, the ones
batch scoring makes) raises ``MlflowException(INVALID_PARAMETER_VALUE)``
naming the column (and row), which the scoring server turns into HTTP 400 instead of a crash.
"""

from __future__ import annotations

import re
import warnings
from importlib import metadata
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModelContext
from mlflow.types.schema import ColSpec, Schema

import bert_core
from bert_core.families import get_family
from tracking.request_check import (
    DEFAULT_LIMIT,
    BadValue,
    TextLimit,
    check_value,
    is_missing,
    request_columns,
    text_limit,
)

EXAMPLE_ROWS = 3
PRECISION_KEY = "serving_precision"  # the pyfunc's model_config key: auto, fp32, bf16 or int8
# What `bert_core.predict` imports at serving time (not Prefect, not matplotlib), pinned to this machine's.
SERVING_REQUIREMENTS = (
    "mlflow", "torch", "tokenizers", "safetensors", "numpy", "pandas", "datasets", "huggingface_hub",
    "scikit-learn", "scipy", "seqeval", "pydantic", "pyyaml", "tqdm", "psutil",
)


def invalid(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


class BertPyfunc(mlflow.pyfunc.PythonModel):
    """Serves a ``save_finetuned`` folder; empty until ``load_context`` reads it (family, weights, tokenizer,
    the request columns it takes: its family's names, then its training spec's, and its text limit)."""

    def __init__(self):
        self.family, self.predictor, self.columns, self.limit = None, None, None, DEFAULT_LIMIT
        self.model_dir = None  # the logged save_finetuned folder (scoring reads its input profile: bert_core.drift)

    def load_context(self, context: PythonModelContext) -> None:
        from bert_core.predict import Predictor  # torch is imported only when a model is really loaded

        self.model_dir = context.artifacts["model_dir"]
        # The precision logged with the model (`log_model(precision=)`), or a load's override: MLflow's
        # `load_model(model_config=)` or $MLFLOW_PYFUNC_INFERENCE_CONFIG (`bertflow serve --precision`).
        precision = (context.model_config or {}).get(PRECISION_KEY, "fp32")
        self.predictor = Predictor(self.model_dir, precision=precision)
        self.family = self.predictor.family_name
        # Models saved before their meta kept the spec's column names take the family's names alone.
        self.columns = request_columns(get_family(self.family), self.predictor.meta.get("spec_columns"))
        self.limit = text_limit(get_family(self.family), self.predictor.settings)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if self.predictor is None:
            raise MlflowException("BertPyfunc.predict before load_context: load it with mlflow.pyfunc.load_model")
        rows = frame_to_rows(self.family, model_input, self.columns, self.limit)
        predictions = self.predictor.predict(rows)
        columns = get_family(self.family).predictions.response
        return pd.DataFrame([{column: p[key] for column, key in columns.items()} for p in predictions],
                            columns=list(columns))


def frame_to_rows(family: str, frame: pd.DataFrame, columns: dict[str, tuple[str, ...]],
                  limit: TextLimit = DEFAULT_LIMIT) -> list[dict]:
    """Request DataFrame -> canonical rows for ``Predictor``, every value checked on the way
    (``tracking.request_check``). ``columns``: request field -> the column names that may carry it; ``limit``: the
    model's text limit."""
    if not isinstance(frame, pd.DataFrame):
        raise invalid(f"expected a DataFrame (columns {_expected(columns)}), got {type(frame).__name__}")
    present = {}
    for field, names in columns.items():
        present[field] = [n for n in names if n in frame.columns]
        if not present[field]:  # (the schema check has already dropped columns the signature does not know)
            raise invalid(f"missing input column {names[0]!r}; a {family} model expects columns {_expected(columns)}")
    keyed = "id" in get_family(family).rows.fields  # QA predictions come back keyed by it
    rows = []
    for i, values in enumerate(frame.itertuples(index=False)):
        record = dict(zip(frame.columns, values, strict=True))
        row = {}
        for field, names in present.items():
            # JSON records may mix names ({"text_a": ..} and {"text": ..}); pandas fills the gaps with NaN.
            column = next((c for c in names if not is_missing(record[c])), names[0])
            try:
                row[field] = check_value(field, record[column], column, limit)
            except BadValue as bad:
                raise invalid(bad.request_error(i)) from None
        if keyed:
            row["id"] = str(i) if is_missing(record.get("id")) else str(record["id"])
        rows.append(row)
    return rows


def _expected(columns: dict[str, tuple[str, ...]]) -> str:
    return ", ".join(" or ".join(repr(n) for n in names) for names in columns.values())


def rows_to_frame(family: str, rows: list[dict]) -> pd.DataFrame:
    """Canonical rows (gold labels and ``_source`` are dropped) -> a request DataFrame in the preferred
    column names: the input example logged with the model."""
    data = {}
    for field, names in get_family(family).rows.request.items():
        data[names[0]] = [list(r[field]) if field == "tokens" else r[field] for r in rows]
    return pd.DataFrame(data)


def load_pyfunc(model_uri: str, precision: str | None = None) -> mlflow.pyfunc.PyFuncModel:
    """The logged model at ``model_uri``, predicting in ``precision`` (auto, fp32, bf16, int8) in place of the one
    logged with it; None keeps that one."""
    return mlflow.pyfunc.load_model(model_uri, model_config={PRECISION_KEY: precision} if precision else None)


# ---- logging ---------------------------------------------------------------------------------------
def log_model(model_dir: str | Path, family: str, input_example_rows: list[dict],
              registered_model_name: str | None = None, precision: str = "fp32", name: str = "model") -> ModelInfo:
    """Log ``model_dir`` as a pyfunc named ``name`` in the active run; returns its ``ModelInfo``
    (``model_info.model_uri`` is what ``tracking.registry.register_version`` takes). ``precision``: the one it is
    served in (``bert_core.serving_precision``), kept as its ``model_config`` so a load may override it; the fp32
    weights are logged either way."""
    model_dir = str(Path(model_dir).resolve())
    example = rows_to_frame(family, list(input_example_rows)[:EXAMPLE_ROWS])
    python_model = BertPyfunc()
    python_model.load_context(PythonModelContext(artifacts={"model_dir": model_dir}, model_config={}))
    if python_model.family != family:
        raise ValueError(f"{model_dir} holds a {python_model.family} model, not {family}")
    with warnings.catch_warnings():
        # MLflow's hint that integer columns cannot hold missing values is about outputs here (QA's start/end,
        # tagging's positions), which are never missing; it printed on every QA and tagging run.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column", category=UserWarning)
        return _log_model(python_model, family, example, model_dir, registered_model_name, precision, name)


def _log_model(python_model, family: str, example, model_dir: str, registered_model_name: str | None,
               precision: str, name: str) -> ModelInfo:
    signature = infer_signature(example, python_model.predict(None, example))
    signature.inputs = _accepted_inputs(family, python_model.columns, signature.inputs)
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(Path(__file__).with_name("model_code.py")),  # models from code: nothing pickled
        artifacts={"model_dir": model_dir},
        # The served model imports bert_core and this package from the logged copy: works outside this checkout.
        code_paths=[str(Path(bert_core.__file__).parent), str(Path(__file__).parent)],
        pip_requirements=serving_requirements(),
        signature=signature,
        input_example=example,
        registered_model_name=registered_model_name,
        model_config={PRECISION_KEY: precision},  # MLflow logs it as a run param too
    )


def _accepted_inputs(family: str, columns: dict[str, tuple[str, ...]], inferred: Schema) -> Schema:
    """The inferred columns plus their alternative names, all optional: the schema check must let
    ``text``/``text_pair`` and the spec's names through, and ``frame_to_rows`` names what is really missing,
    row by row. A spec's name takes the type of its field's preferred column (``tokens``: a list of words)."""
    types = {c.name: c.type for c in inferred.inputs}
    own = get_family(family).rows.request

    def column_type(field: str, name: str):
        if name in types or name in own[field]:  # the family's other names are texts (a tagger's `text` too)
            return types.get(name, "string")
        return types.get(own[field][0], "string")

    specs = [ColSpec(column_type(field, n), n, required=False) for field, names in columns.items() for n in names]
    if "id" in get_family(family).rows.fields:
        specs.append(ColSpec("string", "id", required=False))
    return Schema(specs)


def serving_requirements() -> list[str]:
    """``name==version`` of what serving imports, as installed here (torch without its +cpu/+cu local tag,
    so the serving machine picks its own build)."""
    pins = []
    for name in SERVING_REQUIREMENTS:
        try:
            version = re.sub(r"\+.*$", "", metadata.version(name))
        except metadata.PackageNotFoundError:
            pins.append(name)
            continue
        pins.append(f"{name}=={version}")
    return pins
