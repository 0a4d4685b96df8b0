"""Load a task's train/eval splits into canonical rows (docs/design.md) as `datasets.Dataset`s.

Local files under a data root win when they are all there (BERTFLOW_DATA_DIR or `data_dir`);
otherwise the spec's hub dataset is used. The format readers are in `bert_core/readers.py`; each keeps
the line (or JSON path) of every row in `_source`, so validation errors point at the exact spot.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import datasets
from datasets import Dataset

from bert_core.families import get_family
from bert_core.readers import READERS, Problems
from bert_core.spec import ROW_INDEX, CarveRule, TaskSpec, load_spec
from bert_core.validation import DataError, SourceUnavailable, validate_rows

ENV_DATA_DIR = "BERTFLOW_DATA_DIR"
HUB_PROBE_TIMEOUT_S = 3.0


@dataclass
class TaskData:
    """A task's data, ready for feature building; everything a run should log about where it came from."""

    splits: dict[str, Dataset]  # "train", "eval", plus extra eval splits; canonical rows
    label_names: list[str] | None  # labels (tags for tagging) in index order; None: regression, QA
    fingerprint: str  # changes whenever the rows could change: file bytes + settings, or hub id
    source: str  # "local:<data dir>" or "hub:<path>"
    carve: dict | None = None  # the carve rule and its outcome, for run logs
    dropped: list[str] = field(default_factory=list)  # one message per dropped bad row
    warnings: list[str] = field(default_factory=list)  # the family's checks: worth a log line, not an error
    origins: dict[str, str] = field(default_factory=dict)  # split name -> its file (or hub split), for messages


def load_task_data(
    spec: TaskSpec | str | Path,
    data_dir: str | Path | None = None,
    drop_bad_rows: bool = False,
    max_rows: dict[str, int] | None = None,
) -> TaskData:
    """Load, validate and return a task's splits. `max_rows` caps splits by name ({"train": 500})."""
    spec = spec if isinstance(spec, TaskSpec) else load_spec(spec)
    root = Path(data_dir) if data_dir is not None else _env_data_dir()
    why_not_local = "the spec has no local files."
    if spec.local is not None:
        files = _local_files(spec)
        if root is None:
            why_not_local = f"{ENV_DATA_DIR} is not set and no data_dir was given."
        else:
            missing = [(where, rel) for where, rel in files.values() if not (root / rel).is_file()]
            for where, rel in files.values():
                _check_links(spec.name, root, rel, where)
            if not missing:
                return _load_local(spec, root, drop_bad_rows, max_rows)
            # A partly present dataset is a mistake to report, not a reason to go to the hub.
            if spec.hub is None or len(missing) < len(files):
                raise DataError(f"{spec.name}: local file not found: " + "; ".join(
                    f"{root / rel} (spec field {where})" for where, rel in missing))
            why_not_local = f"its local files are not under {root} (e.g. {missing[0][1]})."
    if spec.hub is None:
        raise DataError(f"{spec.name}: no data: {why_not_local} Set {ENV_DATA_DIR} to the folder "
                        f"holding {[rel for _, rel in _local_files(spec).values()]} or pass data_dir.")
    return _load_hub(spec, drop_bad_rows, max_rows, why_not_local)


def has_local_data(spec: TaskSpec | str | Path, data_dir: str | Path | None = None) -> bool:
    """Whether every local file of the spec is under the data root (``data_dir``, else $BERTFLOW_DATA_DIR)."""
    spec = spec if isinstance(spec, TaskSpec) else load_spec(spec)
    root = Path(data_dir) if data_dir is not None else _env_data_dir()
    if spec.local is None or root is None:
        return False
    return all((root / rel).is_file() for _, rel in _local_files(spec).values())


def _check_links(task: str, root: Path, rel: str, where: str) -> None:
    """Spec paths stay under the data root lexically (bert_core/spec.py); symlinks on the way are followed
    when the data root's owner made them, since assembling a data root from links to shared storage is
    common. A link someone else made (in a shared, writable data root) may not lead out of the root."""
    owner = root.stat().st_uid if root.exists() else None
    path = root
    for part in PurePosixPath(rel).parts:
        path = path / part
        if not path.is_symlink():
            continue
        target, maker = path.resolve(), path.lstat().st_uid
        if maker != owner and not target.is_relative_to(root.resolve()):
            raise DataError(
                f"{task}: {rel} (spec field {where}) goes through the symlink {path} -> {target}, out of the data "
                f"root {root}; the link was made by {_user(maker)}, not by the data root's owner {_user(owner)}, "
                f"and only the owner's links are followed out of the root: have {_user(owner)} make the link, or "
                "copy the file into the data root")


def _user(uid: int | None) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name!r}"
    except (KeyError, TypeError):
        return f"uid {uid}"


def _env_data_dir() -> Path | None:
    value = os.environ.get(ENV_DATA_DIR)
    return Path(value) if value else None


def _local_files(spec: TaskSpec) -> dict[str, tuple[str, str]]:
    """Split name -> (spec field naming it, path relative to the data root)."""
    local = spec.local
    files = {"train": ("local.files.train", local.files.train), "eval": ("local.files.eval", local.files.eval)}
    files.update({name: (f"local.eval_extra.{name}", rel) for name, rel in local.eval_extra.items()})
    return files


# ---------------------------------------------------------------- local files

def _load_local(spec: TaskSpec, root: Path, drop_bad_rows: bool, max_rows: dict | None) -> TaskData:
    local, files = spec.local, _local_files(spec)
    contents = {rel: (root / rel).read_bytes() for _, rel in files.values()}
    dropped: list[str] = []
    read = READERS[local.format]

    def rows_of(rel: str) -> list[dict]:
        rows = read(spec, rel, contents[rel], Problems(drop_bad_rows, dropped))
        return get_family(spec.family).rows.normalise(rows, local.label_map, spec)

    carve = None
    if local.carve is not None:
        train, eval_, carve = carve_rows(rows_of(local.files.train), local.carve, local.files.train)
        raw = {"train": train, "eval": eval_} | {name: rows_of(rel) for name, rel in local.eval_extra.items()}
    else:
        raw = {split: rows_of(rel) for split, (_, rel) in files.items()}
    origins = {split: rel for split, (_, rel) in files.items()}
    splits, label_names, warnings = _finish(spec, raw, origins, drop_bad_rows, max_rows, dropped)
    return TaskData(splits, label_names, _local_fingerprint(spec, files, contents, drop_bad_rows, max_rows),
                    f"local:{root.resolve()}", carve, dropped, warnings, origins)


def _local_fingerprint(spec, files, contents, drop_bad_rows, max_rows) -> str:
    # Everything that can change the rows goes in; the spec's name and metrics do not, so two
    # specs reading the same data the same way share cached features.
    settings = {"family": spec.family, "local": spec.local.model_dump(), "columns": spec.column_map("local"),
                "labels": spec.labels, "drop_bad_rows": drop_bad_rows, "max_rows": max_rows, **_row_rules(spec)}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for split, (_, rel) in sorted(files.items()):
        h.update(f"\n{split}={rel}:{hashlib.sha256(contents[rel]).hexdigest()}".encode())
    return h.hexdigest()


def _row_rules(spec: TaskSpec) -> dict:
    """Spec fields besides the source that can change the rows (tag repairs), for the fingerprint."""
    return {"tag_scheme": spec.tag_scheme, "repair_tags": spec.repair_tags} if spec.repair_tags else {}


def carve_rows(rows: list[dict], rule: CarveRule, rel: str) -> tuple[list[dict], list[dict], dict]:
    """Split rows into (train, eval, record) by hashing each row's group key with the seed.

    A hash of the key (not a shuffled order) decides, so a group's side never depends on file
    order or on which other rows exist, and the same rule gives the same split on every machine.
    """
    train, eval_, groups = [], [], {"train": set(), "eval": set()}
    for i, row in enumerate(rows):
        key = i if rule.by == ROW_INDEX else row.get(rule.by)
        digest = hashlib.sha256(f"{rule.seed}:{key}".encode()).digest()
        side = "eval" if int.from_bytes(digest[:8], "big") / 2**64 < rule.eval_fraction else "train"
        (eval_ if side == "eval" else train).append(row)
        groups[side].add(str(key))
    record = {"file": rel, "by": rule.by, "eval_fraction": rule.eval_fraction, "seed": rule.seed,
              "rule": "eval iff int(sha256(f'{seed}:{key}')[:8 bytes]) / 2**64 < eval_fraction",
              "train_rows": len(train), "eval_rows": len(eval_),
              "train_groups": len(groups["train"]), "eval_groups": len(groups["eval"])}
    return train, eval_, record


# ---------------------------------------------------------------- hub

def _load_hub(spec: TaskSpec, drop_bad_rows: bool, max_rows: dict | None, why_not_local: str) -> TaskData:
    hub = spec.hub
    where = f"{hub.path}" + (f" ({hub.config})" if hub.config else "")
    advice = (f"Not using local files because {why_not_local} Set {ENV_DATA_DIR} to the shared datasets "
              "folder (or pass data_dir), or set HF_HUB_OFFLINE=1 to read the datasets cache.")
    unreachable = _hub_unreachable()
    if unreachable:
        raise SourceUnavailable(f"{spec.name}: cannot load {where} from the Hugging Face hub: {unreachable}. {advice}")
    try:
        loaded = datasets.load_dataset(hub.path, hub.config, revision=hub.revision)
    except Exception as e:  # network, auth, missing config, offline cache miss: all end here
        # A lost connection may come back; an unknown dataset or config will not.
        lost = isinstance(e, ConnectionError | TimeoutError) or type(e).__name__ in ("ReadTimeout", "ConnectTimeout")
        error = SourceUnavailable if lost else DataError
        raise error(f"{spec.name}: loading {where} from the hub failed: {type(e).__name__}: {e}. {advice}") from e
    wanted = {"train": hub.splits.train, "eval": hub.splits.eval, **hub.eval_extra}
    absent = [s for s in wanted.values() if s not in loaded]
    if absent:
        raise DataError(f"{where}: split(s) {absent} (spec field hub.splits / hub.eval_extra) not found; "
                        f"the dataset has {list(loaded)}")
    dropped: list[str] = []
    raw = {split: _hub_rows(spec, loaded[name], f"{hub.path}[{name}]", dropped) for split, name in wanted.items()}
    origins = {split: f"{hub.path}[{name}]" for split, name in wanted.items()}
    splits, label_names, warnings = _finish(spec, raw, origins, drop_bad_rows, max_rows, dropped)
    settings = json.dumps({"family": spec.family, "hub": hub.model_dump(), "columns": spec.column_map("hub"),
                           "labels": spec.labels, "drop_bad_rows": drop_bad_rows, "max_rows": max_rows,
                           **_row_rules(spec)}, sort_keys=True)
    config = f":{hub.config}" if hub.config else ""
    fingerprint = f"hub:{hub.path}{config}@{hub.revision}/{hashlib.sha256(settings.encode()).hexdigest()[:16]}"
    return TaskData(splits, label_names, fingerprint, f"hub:{hub.path}", None, dropped, warnings, origins)


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached, or None. Offline, datasets retries for ~25 s; this takes 3 s."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE:
        return None  # offline mode: datasets reads its cache and fails fast on a miss
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"),
                               timeout=HUB_PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None  # the server answered, so it is reachable
    except OSError as e:
        return f"{constants.ENDPOINT} is unreachable ({getattr(e, 'reason', e)})"
    return None


def _hub_rows(spec: TaskSpec, ds: Dataset, where: str, dropped: list[str]) -> list[dict]:
    columns = spec.column_map("hub")
    absent = [f"{c!r} (columns.{f})" for f, c in columns.items() if c not in ds.column_names]
    if absent:
        raise DataError(f"{where}: column(s) {', '.join(absent)} not found; the dataset has {ds.column_names}")
    to_name = {f: _class_label_namer(spec, ds.features[c]) for f, c in columns.items() if f in ("label", "tags")}
    rows, unlabelled = [], 0
    for i, record in enumerate(ds.select_columns(list(set(columns.values()))).to_list()):
        row = {f: record[c] for f, c in columns.items()} | {"_source": f"{where}:row {i}"}
        if "label" in to_name and to_name["label"]:
            if row["label"] == -1:  # the hub's "no gold label" (SNLI dev, GLUE test)
                unlabelled += 1
                continue
            row["label"] = to_name["label"](row["label"])
        if "tags" in to_name and to_name["tags"]:
            row["tags"] = [to_name["tags"](t) for t in row["tags"]]
        rows.append(row)
    if unlabelled:
        dropped.append(f"{where}: skipped {unlabelled} rows with label -1 (no gold label)")
    return get_family(spec.family).rows.normalise(rows, spec.hub.label_map, spec)


def _class_label_namer(spec: TaskSpec, feature) -> Callable[[int], str] | None:
    feature = getattr(feature, "feature", feature)  # the ClassLabel inside a tag sequence
    if not isinstance(feature, datasets.ClassLabel):
        return None
    return feature.int2str if spec.hub.class_label == "name" else str


# ---------------------------------------------------------------- shared finishing

def _finish(spec, raw, origins, drop_bad_rows, max_rows, dropped) -> tuple[dict[str, Dataset], list[str] | None, list[str]]:
    """Validate every row of every split, then the whole data (the family's checks); (splits, labels, warnings)."""
    family = get_family(spec.family)
    label_names = spec.labels if spec.labels is not None else family.rows.infer_label_names(raw["train"])
    unknown = set(max_rows or {}) - set(raw)
    if unknown:
        raise ValueError(f"max_rows names unknown split(s) {sorted(unknown)}; splits: {list(raw)}")
    validated = {}
    for split, rows in raw.items():
        rows = rows[: (max_rows or {}).get(split, len(rows))]
        before = len(dropped)
        good, bad = validate_rows(rows, family, label_names, drop_bad_rows,
                                  labels_from_train=spec.labels is None and split != "train")
        dropped.extend(bad)
        if not good:
            why = f" after dropping {len(dropped) - before} bad row(s)" if len(dropped) > before else ""
            raise DataError(f"{origins[split]}: split {split!r} is empty{why}; expected at least one row")
        validated[split] = good
    warnings = family.rows.check_data(spec, validated, label_names, origins)
    features = family.rows.arrow_features()
    splits = {split: Dataset.from_dict({k: [row[k] for row in good] for k in features}, features=features)
              for split, good in validated.items()}
    return splits, label_names, warnings
