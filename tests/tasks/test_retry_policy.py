"""Which failures a retry may heal (tasks/retry_policy.py): the input's errors never, the world's always."""

from __future__ import annotations

import errno

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST
from pydantic import ValidationError

from bert_core.spec import SpecError
from bert_core.training import TrainConfig, TrainingDiverged
from bert_core.validation import DataError, SourceUnavailable
from tasks.retry_policy import is_transient
from tracking.store import TrackingRefusedError, TrackingUnavailableError


def _validation_error() -> ValidationError:
    try:
        TrainConfig(epochs=-1)
    except ValidationError as err:
        return err
    raise AssertionError("epochs=-1 validated")


@pytest.mark.parametrize("error", [
    DataError("data/train.tsv:6: field 'label': got '7'"),
    SpecError("spec.yaml: invalid task spec"),
    _validation_error(),
    ValueError("metrics ['f1'] ... use f1_macro"),
    TrainingDiverged("loss is nan at step 3"),
    KeyError("checkpoint has keys that are not a BERT encoder's"),
    FileNotFoundError("pretrained checkpoint './nowhere': not a folder"),
    TrackingRefusedError("MLflow tracking server http://h refused the credentials (HTTP 401)"),
    MlflowException("Run with id=cf71e604 not found", error_code=RESOURCE_DOES_NOT_EXIST),
    MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE),
], ids=lambda e: type(e).__name__)
def test_errors_of_the_input_are_never_retried(error):
    assert not is_transient(error)


@pytest.mark.parametrize("error", [
    TrackingUnavailableError("MLflow tracking server http://h is unreachable (Connection refused)"),
    SourceUnavailable("sst2: cannot load nyu-mll/glue from the Hugging Face hub: unreachable"),
    MlflowException("API request failed: Max retries exceeded", error_code=INTERNAL_ERROR),
    ConnectionResetError("connection reset by peer"),
    TimeoutError("timed out"),
    OSError(errno.EIO, "Input/output error"),
    RuntimeError("a crash of unknown cause"),
], ids=lambda e: type(e).__name__)
def test_what_may_heal_is_retried(error):
    assert is_transient(error)
