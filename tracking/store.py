"""Where MLflow records go, and logging to it without leaking secrets.

- ``default_tracking_uri()`` / ``configure_tracking(uri)``: an explicit URI beats ``MLFLOW_TRACKING_URI``,
  which beats ``sqlite:///$BERTFLOW_HOME/mlflow.db`` (BERTFLOW_HOME defaults to ``~/.bertflow``).
- ``experiment_for(task, uri)``: the experiment ``bertflow-<task>``, artifacts beside a local database.
- ``check_tracking(uri)``: fails in seconds, before any training, when the store is unreachable.
- ``mask_secrets(text)`` / ``log_params_safely(params)``: nothing secret reaches a log line or a param.
- ``code_version()``: the git commit (``+dirty`` with uncommitted changes) or the package version.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlsplit

import mlflow
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

from bert_core.file_lock import acquire
from bert_core.home import bertflow_home

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SECRET_NAME_PARTS = ("TOKEN", "SECRET", "PASSWORD", "KEY")
# Env values that are flags or numbers, not secrets: replacing every "true" or "1" in a text would garble it.
_NOT_SECRETS = {"", "true", "false", "yes", "no", "on", "off", "none", "null"}
_URI_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/:@\s]*:)[^@/\s]+@")
_QUERY_SECRET = re.compile(r"(?i)(?P<head>[?&;](?:password|passwd|pwd|token|access_token|secret|api_?key)=)[^&\s]+")


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking store cannot be reached or written; raised before any training starts."""


class TrackingRefusedError(TrackingUnavailableError):
    """The store is there but refuses us (credentials) or cannot be written: waiting will not help."""


def default_tracking_uri(uri: str | None = None) -> str:
    """``uri`` if given, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///$BERTFLOW_HOME/mlflow.db``."""
    if uri:
        return str(uri)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    home = bertflow_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def configure_tracking(uri: str | None = None) -> str:
    """Point MLflow tracking *and* the model registry at one store; returns the URI in use.

    An http(s) URI's ``user:password@`` moves to ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``
    (where MLflow's client reads basic-auth credentials) and MLflow gets the URI without it: MLflow prints
    the tracking URI in "View run ... at: <uri>" lines, and would put the userinfo in every request URL.
    """
    uri, user, password = split_credentials(default_tracking_uri(uri))
    if user is not None:
        os.environ["MLFLOW_TRACKING_USERNAME"] = user
    if password is not None:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``http://user:pw@host:5000/x`` -> ``("http://host:5000/x", "user", "pw")``. Only http(s): a database
    URI keeps its password, which SQLAlchemy reads from the URI itself."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri, None, None
    host = parts.netloc.rpartition("@")[2]
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return parts._replace(netloc=host).geturl(), user, password


def experiment_name(task_name: str) -> str:
    """The MLflow experiment a task's runs go to."""
    return f"bertflow-{task_name}"


def experiment_for(task_name: str, uri: str) -> str:
    """The MLflow experiment `bertflow-<task>`, created on first use. With a local store its artifacts go
    next to the database (MLflow's default, ./mlruns, would follow the current directory)."""
    name = experiment_name(task_name)
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    store = local_store_path(uri)
    location = None
    if store is not None and uri.startswith("sqlite:"):
        location = f"{artifact_root(store)}/{name}"
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by a concurrent flow run
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def local_store_path(uri: str) -> Path | None:
    """The file behind a ``sqlite:///`` URI or the folder behind a ``file:`` / plain-path URI; None if remote."""
    if uri.startswith("sqlite:"):
        path = uri.removeprefix("sqlite:///").split("?")[0]  # sqlite:////abs/x.db keeps its leading "/"
        return None if path in ("", ":memory:") else Path(path)
    if uri.startswith("file:"):
        return Path(unquote(urlsplit(uri).path))
    if "://" not in uri:
        return Path(uri)
    return None


def check_tracking(uri: str | None = None, timeout_s: float = 10) -> str:
    """Make sure the tracking store answers (or, for a local store, can be written); returns the URI.

    http(s): GET ``<uri>/health`` (the API's experiments search as a fallback for servers behind a
    proxy that hides /health). Database servers (postgresql://, mysql://, ...): a TCP connect to their
    host and port. sqlite / file stores: the folder must exist or be creatable, and be writable.
    Raises ``TrackingUnavailableError`` naming the URI with its password masked.
    """
    uri = default_tracking_uri(uri)
    shown = mask_secrets(uri)
    path = local_store_path(uri)
    if path is not None:
        folder = path.parent if uri.startswith("sqlite:") else path
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrackingRefusedError(f"MLflow tracking store {shown}: cannot create {folder}: {err}") from err
        if not os.access(folder, os.W_OK):
            raise TrackingRefusedError(f"MLflow tracking store {shown}: folder {folder} is not writable")
        if uri.startswith("sqlite:"):
            _create_sqlite_store_once(uri, path)
        return uri
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        _check_http(uri, shown, timeout_s)
    elif parts.hostname:  # a database server behind SQLAlchemy; MLflow would otherwise retry for minutes
        port = parts.port or {"postgresql": 5432, "mysql": 3306, "mssql": 1433}.get(parts.scheme.split("+")[0])
        if port:
            try:
                socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
            except OSError as err:
                raise TrackingUnavailableError(
                    f"MLflow tracking store {shown} is unreachable ({parts.hostname}:{port}: {err})") from err
    return uri


def artifact_root(store: Path) -> str:
    """Where a local sqlite store keeps artifacts: `mlartifacts/` beside the database (file URI)."""
    return (store.parent.resolve() / "mlartifacts").as_uri()


def _create_sqlite_store_once(uri: str, path: Path) -> None:
    """Open the sqlite store under a file lock. Two processes opening a new store at once (a suite's
    parallel fine-tunes on a fresh machine) would both run MLflow's schema migrations, and one fails
    ("Online migration expected to match one row ..."); the first holder creates it, the rest find it.
    A new store's Default experiment keeps its artifacts beside the database too: MLflow's own default,
    ./mlruns, would land in whatever folder the first command ran in."""
    with acquire(path.with_name(path.name + ".init.lock")):
        SqlAlchemyStore(uri, artifact_root(path))  # creates the tables (and Default) when the file is new


def _check_http(uri: str, shown: str, timeout_s: float) -> None:
    base = split_credentials(uri)[0].rstrip("/")  # urllib would take "user:pw@host" for the host name
    headers = _auth_headers(uri)
    last: Exception | None = None
    # The API first: MLflow's basic-auth app leaves /health open, so only the API tells whether the
    # credentials work; /health is the fallback for proxies that answer nothing else.
    for path in ("/api/2.0/mlflow/experiments/search?max_results=1", "/health"):
        request = urllib.request.Request(base + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s):
                return
        except urllib.error.HTTPError as err:
            if err.code in (401, 403):
                raise TrackingRefusedError(
                    f"MLflow tracking server {shown} refused the credentials (HTTP {err.code}); set "
                    "MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD") from err
            last = err  # e.g. a proxy without /health: try the API itself
        except (urllib.error.URLError, OSError) as err:  # refused, DNS, timeout: no point trying another path
            raise TrackingUnavailableError(
                f"MLflow tracking server {shown} is unreachable ({_reason(err)}); start it "
                "(`mlflow server ...`) or point MLFLOW_TRACKING_URI at a running one") from err
    raise TrackingUnavailableError(f"MLflow tracking server {shown} answered with an error: {last}")


def _reason(err: Exception) -> str:
    return str(getattr(err, "reason", None) or err)


def _auth_headers(uri: str) -> dict[str, str]:
    parts = urlsplit(uri)
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"}
    user = parts.username or os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = parts.password or os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    return {}


def mask_secrets(text: str) -> str:
    """Hide URI passwords (``scheme://user:***@host``), secret query values, and the values of env vars
    whose name contains TOKEN, SECRET, PASSWORD or KEY."""
    text = _URI_PASSWORD.sub(r"\g<head>***@", str(text))
    text = _QUERY_SECRET.sub(r"\g<head>***", text)
    # Longest first, so a secret that contains another one is replaced whole.
    for value in sorted(_secret_env_values(), key=len, reverse=True):
        text = text.replace(value, "***")
    return text


def _secret_env_values() -> set[str]:
    # Names first, then .get: MLflow's telemetry thread sets and unsets env vars while we read them.
    values = (os.environ.get(name) for name in list(os.environ) if any(p in name.upper() for p in SECRET_NAME_PARTS))
    return {v for v in values if v and len(v) >= 4 and v.lower() not in _NOT_SECRETS and not v.isdigit()}


def flatten_params(params: Mapping, prefix: str = "") -> dict[str, object]:
    """``{"optim": {"lr": 1e-4}}`` -> ``{"optim.lr": 1e-4}``."""
    flat: dict[str, object] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, name + "."))
        else:
            flat[name] = value
    return flat


def log_params_safely(params: Mapping, run_id: str | None = None) -> dict[str, str]:
    """Log nested params as dotted keys, secrets masked, values cut to MLflow's limit; returns what was logged.

    Logs into run ``run_id``, else the active run (one is started by ``mlflow.log_params`` if none is).
    """
    logged: dict[str, str] = {}
    for key, value in flatten_params(params).items():
        text = mask_secrets("None" if value is None else str(value))
        if len(text) > MAX_PARAM_VAL_LENGTH:
            marker = "...[truncated]"
            text = text[: MAX_PARAM_VAL_LENGTH - len(marker)] + marker
        logged[str(key)[:MAX_ENTITY_KEY_LENGTH]] = text
    items = list(logged.items())
    for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
        batch = dict(items[start : start + MAX_PARAMS_TAGS_PER_BATCH])
        if run_id:
            mlflow.tracking.MlflowClient().log_batch(run_id, params=[Param(k, v) for k, v in batch.items()])
        else:
            mlflow.log_params(batch)
    return logged


def code_version() -> str:
    """``git rev-parse HEAD`` of the checkout bertflow runs from (``+dirty`` when tracked files changed),
    else the installed package version (a wheel install, or a checkout without commits)."""
    git = ["git", "-C", str(PROJECT_ROOT)]
    # Generous timeouts: on a loaded machine git can take seconds, and a fallback here changes the run's identity
    # (a retrain-on-change check would then see new code). Only a hung filesystem should reach the fallback.
    try:
        top = subprocess.run([*git, "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=60)
        # Only our own repo counts: site-packages inside some other checkout must not lend us its commit.
        if top.returncode == 0 and Path(top.stdout.strip()).resolve() == PROJECT_ROOT:
            head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=60)
            if head.returncode == 0:
                status = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                                        capture_output=True, text=True, timeout=120)
                return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        pass  # no git binary, or a hung filesystem: the package version still identifies the code
    try:
        return metadata.version("bertflow")
    except metadata.PackageNotFoundError:
        return "unknown"
