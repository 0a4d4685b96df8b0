"""What an MLflow error says about asking again: a request the store understood and refused gets the same answer
next time; anything else (a server that did not answer, an internal error) may heal."""

from __future__ import annotations

from mlflow.exceptions import MlflowException

# MLflow error codes of a request that was understood and refused: asking again gets the same answer.
REFUSED = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "PERMISSION_DENIED",
           "UNAUTHENTICATED", "BAD_REQUEST", "INVALID_STATE", "FEATURE_DISABLED", "ENDPOINT_NOT_FOUND"}


def mlflow_error_may_heal(err: BaseException) -> bool | None:
    """For an MLflow error: whether asking again later may succeed; None for any other error."""
    if not isinstance(err, MlflowException):
        return None
    return err.error_code not in REFUSED
