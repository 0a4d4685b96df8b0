"""Task specs: a dataset + its columns + labels + metrics, declared in YAML instead of code.

A spec says where a task's data lives (Hugging Face hub, local files under a data root, or both),
how its source columns map to the canonical row format of docs/design.md, and how it is scored.
Built-in specs are YAML files shipped in `bert_core/specs/`; a user adds a task by writing one
more YAML file and passing its path to `load_spec`, with no Python.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from bert_core.families import FAMILIES
from bert_core.families.imbalance import ImbalanceFields

# The spec's `family`: a name in the family registry (bert_core/families), which says what else the spec
# may hold (fields, metrics, formats, family-only fields) and checks it (`Family.rows.check_spec`).
FamilyName = Literal[tuple(FAMILIES)]  # type: ignore[valid-type]

# Carving by row index instead of by a field's value.
ROW_INDEX = "row_index"


class SpecError(ValueError):
    """A spec file that cannot be read or does not validate; the message names file and field."""


def _relative_data_path(path: str) -> str:
    # Local files are always resolved against the data root, so a spec cannot read outside it:
    # that keeps specs portable between machines and safe to accept from users.
    if not path or not path.strip():
        raise ValueError("empty path")
    if PurePosixPath(path).is_absolute() or PureWindowsPath(path).is_absolute() or PureWindowsPath(path).drive:
        raise ValueError(f"{path!r} is absolute; give a path relative to the data root")
    if ".." in PurePosixPath(path.replace("\\", "/")).parts:
        raise ValueError(f"{path!r} escapes the data root ('..' is not allowed)")
    return path


RelPath = Annotated[str, AfterValidator(_relative_data_path)]


def _names_as_strings(value: Any) -> Any:
    # Labels are strings, but YAML reads `[0, 1]` as ints: accept those. YAML also reads yes/no/
    # on/off as booleans, which would silently become "True"/"False": refuse them with a hint.
    def one(x: Any) -> Any:
        if isinstance(x, bool):
            raise ValueError(f"{x!r} is a YAML boolean (from yes/no/true/false/on/off): quote label names")
        return str(x) if isinstance(x, int) else x

    if isinstance(value, list):
        return [one(x) for x in value]
    if isinstance(value, dict):
        return {one(k): one(v) for k, v in value.items()}
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitNames(_Strict):
    train: str = Field("train", description="Hub split used for training.")
    eval: str = Field("validation", description="Hub split used for evaluation and model selection.")


class HubSource(_Strict):
    path: str = Field(description="Hub dataset id, e.g. 'nyu-mll/glue'.")
    config: str | None = Field(None, description="Hub config name, e.g. 'sst2'.")
    revision: str = Field("main", description="Hub git revision; pin a commit for reproducible runs.")
    splits: SplitNames = Field(default_factory=SplitNames, description="Hub split names for train/eval.")
    eval_extra: dict[str, str] = Field(
        default_factory=dict, description="Extra evaluation splits: our split name -> hub split name."
    )
    columns: dict[str, str] | None = Field(
        None, description="Canonical field -> hub column; default: the spec's `columns`, else identity."
    )
    class_label: Literal["index", "name"] = Field(
        "index",
        description="How hub ClassLabel ints become label strings: 'index' gives '0', '1' (as GLUE's "
        "TSVs store them), 'name' the dataset's own names ('entailment', ...).",
    )
    label_map: dict[str, str] | None = Field(None, description="Hub label string -> our label name.")

    @field_validator("label_map", mode="before")
    @classmethod
    def _label_map_as_strings(cls, value: Any) -> Any:
        return _names_as_strings(value)


class SplitFiles(_Strict):
    train: RelPath = Field(description="Training file, relative to the data root.")
    eval: RelPath = Field(description="Evaluation file, relative to the data root.")


class CarveRule(_Strict):
    """Carve train/eval out of one file when only one split is published (SNLI dev, SQuAD dev)."""

    by: str = Field(
        description=f"Canonical field whose value groups rows (e.g. 'title', 'text_a'), or "
        f"'{ROW_INDEX}'. Rows of one group land in one split, so eval never sees a train group."
    )
    eval_fraction: float = Field(gt=0, lt=1, description="Expected share of groups sent to eval.")
    seed: int = Field(0, description="Salt of the hash; a group goes to eval iff "
                      "sha256(f'{seed}:{key}') as a fraction of 2**64 (first 8 bytes) < eval_fraction.")


class LocalSource(_Strict):
    format: Literal["tsv", "csv", "json", "jsonl", "parquet", "conll", "squad"] = Field(
        description="File format; json is a list of records, squad the official SQuAD JSON."
    )
    files: SplitFiles = Field(description="Train/eval files relative to the data root.")
    eval_extra: dict[str, RelPath] = Field(
        default_factory=dict, description="Extra evaluation splits: split name -> file."
    )
    delimiter: str | None = Field(None, description="Field separator; default tab for tsv, comma for csv.")
    quoting: Literal["none", "csv"] | None = Field(
        None, description="'none' splits on the delimiter only (GLUE TSVs have unbalanced quotes); "
        "'csv' honours \"...\" quoting. Default: none for tsv, csv for csv."
    )
    header: bool = Field(True, description="First line is a header (tsv/csv).")
    column_names: list[str] | None = Field(
        None, description="Names for the columns (tsv/csv); with header: true the header line is skipped."
    )
    encoding: str = Field("utf-8", description="Text encoding; 'utf-8-sig' strips a BOM (MRPC).")
    label_map: dict[str, str] | None = Field(None, description="File label value -> our label name.")
    carve: CarveRule | None = Field(None, description="Carve train/eval out of one file (files.train == files.eval).")

    @field_validator("label_map", mode="before")
    @classmethod
    def _label_map_as_strings(cls, value: Any) -> Any:
        return _names_as_strings(value)

    @model_validator(mode="after")
    def _carve_needs_one_file(self) -> LocalSource:
        if self.carve is not None and self.files.train != self.files.eval:
            raise ValueError("with local.carve, files.train and files.eval must name the same file")
        if self.carve is None and self.files.train == self.files.eval:
            raise ValueError("files.train and files.eval are the same file: add a local.carve rule")
        return self


class LongText(_Strict):
    """How a text family reads a text (pair) longer than ``max_seq_length`` (``families/text_encoding.py``).

    ``windows``: the text in overlapping windows, each a feature of its row; the windows' logits are pooled into
    the row's. In training (``train_on``) each window is an example with the row's label, or (``document``, single
    and pair classification) a step takes whole rows: all their windows through the encoder, the logits pooled per
    row as evaluation pools them, the loss once per row (``SequenceClassifier``; ``batch_size`` counts rows).
    ``head_tail``: one feature keeping the text's first quarter and last three quarters of the window (Sun et al.
    2019, "How to fine-tune BERT for text classification": 128 head + 382 tail tokens of 512), no extra cost."""

    strategy: Literal["windows", "head_tail"] = Field(
        "windows", description="windows: overlapping windows, logits pooled per row; head_tail: the first and last "
        "tokens of the text, one feature per row.")
    stride: int = Field(64, ge=0, description="windows: tokens consecutive windows share (the tokenizers library's "
                        "stride); below the window's room for text, max_seq_length - 2 (pairs: - 3). A text is read "
                        "in at most 64 windows (text_encoding.MAX_WINDOWS); the rest is cut, as truncation cuts it.")
    pooling: Literal["mean", "max"] = Field(
        "mean", description="windows: how a row's logits come from its windows' logits: their mean or their maximum "
        "(per class; max: a label found anywhere).")
    train_on: Literal["windows", "document"] = Field(
        "windows", description="windows: what a training step counts and weighs: each window an example with its "
        "row's label; document (single/pair classification): whole rows, the loss of each row's pooled logits "
        "(batch_size then counts rows, each read in all its windows).")

    @model_validator(mode="after")
    def _document_needs_windows(self) -> LongText:
        if self.train_on == "document" and self.strategy != "windows":
            raise ValueError(f"train_on 'document' pools a row's windows; strategy {self.strategy!r} reads one feature "
                             "per row (use train_on: windows, or strategy: windows)")
        return self

    @model_serializer(mode="wrap")
    def _default_train_on_unsaid(self, handler) -> dict:
        # train_on 'windows' is left out of the dump, so the long_text settings, feature cache keys and spec hashes
        # (checkpoint identities) of the specs written before train_on existed stay what they were.
        dumped = handler(self)
        if dumped.get("train_on") == "windows":
            dumped.pop("train_on")
        return dumped


class TaskSpec(_Strict, ImbalanceFields):
    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", description="Task name, used in run names.")
    family: FamilyName = Field(description="Which head/feature builder/metric family the task uses.")
    description: str = Field("", description="One line for people: what the task is.")
    hub: HubSource | None = Field(None, description="Where the task lives on the Hugging Face hub.")
    local: LocalSource | None = Field(None, description="Where the task lives under the data root.")
    columns: dict[str, str | int] | None = Field(
        None, description="Canonical field -> source column (name, or 0-based index for headerless "
        "files and conll). Default: identity."
    )
    labels: list[str] | None = Field(
        None, description="Label (or tag) names in index order; null = inferred from train, sorted."
    )
    display_names: dict[str, str] | None = Field(
        None, description="Classification: names people read for label values, e.g. {'0': negative, '1': "
        "positive}; predictions, reports, the served model and `bertflow predict` show them, while data, "
        "metrics and the registry keep the values."
    )
    tag_scheme: str | None = Field(
        None, description="token_tagging: how the tags spell entities: IOB1, IOB2 (BIO), IOE1, IOE2, IOBES "
        "(BIOES) or BILOU; null for plain tags (POS, chunks), which get token accuracy only. Every tag "
        "sequence is checked against it when the data loads."
    )
    repair_tags: bool = Field(
        False, description="token_tagging: rewrite a tag sequence that breaks tag_scheme into the scheme's own "
        "spelling of the same entities (each repair is reported), instead of failing on it."
    )
    label_separator: Literal[";", ",", "|"] | None = Field(
        None, description="multi_label_classification: the character between a row's labels in its one `labels` "
        "column, e.g. 'anger;joy' ('' = none of them). Null: the column holds a list (JSON, JSONL, parquet)."
    )
    label_columns: list[str] | None = Field(
        None, description="multi_label_classification: one 0/1 column per label instead of a `labels` column, "
        "named after its label, e.g. [anger, joy]; `labels` defaults to them, in this order."
    )
    thresholds: Literal["global", "per_label"] | None = Field(
        None, description="multi_label_classification: the probability a label must pass to be predicted, tuned "
        "on the eval split: one for all labels, or one per label; null: per_label when the eval split has enough "
        "positive rows of every label, else global (bert_core/families/multi_label.py)."
    )
    pos_weight: bool = Field(
        False, description="multi_label_classification: weigh each label's positive rows in the loss by its "
        "negatives / positives in the training split, so rare labels count more."
    )
    class_weights: Literal["balanced"] | dict[str, float] | None = Field(
        None, description="single/pair classification and multi-label: weigh each label in the training loss, so a "
        "rare one counts more: 'balanced' (classification: n_rows / (n_labels * the label's rows), scikit-learn's; "
        "multi-label: each label's negatives / positives, as pos_weight) or {label: weight} (a label not named weighs "
        "1). A training config's class_weights replaces it."
    )
    decision_threshold: float | Literal["tune"] = Field(
        0.5, description="single/pair classification with two labels: the positive label (the second of `labels`) "
        "is answered when its probability is at least this, in (0, 1); 'tune': the cut-off with the best "
        "primary_metric on the eval split, saved with the model. A training config's decision_threshold replaces it."
    )
    calibration: Literal["temperature", "none"] = Field(
        "temperature", description="Classification and multi-label: `temperature` divides every logit by one scalar "
        "fitted on the eval split (its negative log-likelihood), so a score of 0.9 is right about 90% of the time; "
        "the predicted labels never change. Expected calibration error and Brier score are logged before and after."
    )
    long_text: LongText | None = Field(
        None, description="single/pair classification, multi-label, pair regression: read texts longer than "
        "max_seq_length in overlapping windows, e.g. {stride: 64, pooling: mean}, or their head and tail "
        "({strategy: head_tail}); null: cut at max_seq_length. Tagging and QA read long inputs their own way."
    )
    metrics: list[str] = Field(min_length=1, description="Metrics to report; the family says which (`Predictions.metrics`).")
    primary_metric: str = Field(description="Metric for model selection; must be one of `metrics`.")
    max_seq_length: int = Field(128, gt=8, le=4096, description="Max tokens per feature, [CLS]/[SEP] included.")
    doc_stride: int | None = Field(None, gt=0, description="QA only: token overlap between context windows; default "
                                   "128, or half the passage room of shorter windows.")
    max_answer_length: int | None = Field(None, gt=0, description="QA only: longest answer span in tokens.")
    defaults: dict[str, int | float] = Field(
        default_factory=dict, description="Default hyperparameters (learning_rate, batch_size, epochs, ...)."
    )

    @field_validator("metrics")
    @classmethod
    def _metrics_fit_family(cls, metrics: list[str], info: ValidationInfo) -> list[str]:
        family = info.data.get("family")
        if family is not None:
            allowed = FAMILIES[family].predictions.metrics
            unknown = [m for m in metrics if m not in allowed]
            if unknown:
                raise ValueError(f"{unknown} not allowed for family {family!r}; allowed: {list(allowed)}")
        return metrics

    @field_validator("display_names", mode="before")
    @classmethod
    def _display_names_as_strings(cls, names: Any) -> Any:
        return _names_as_strings(names)

    @field_validator("defaults")
    @classmethod
    def _defaults_are_training_fields(cls, defaults: dict) -> dict:
        # Imported here: bert_core.training imports this module.
        from bert_core.training.config import TrainConfig

        unknown = sorted(set(defaults) - set(TrainConfig.model_fields))
        if unknown:
            raise ValueError(f"{unknown} are not training fields; known: {sorted(TrainConfig.model_fields)}")
        try:
            TrainConfig(**defaults)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise ValueError(problems) from None
        return defaults

    @field_validator("primary_metric")
    @classmethod
    def _primary_in_metrics(cls, primary: str, info: ValidationInfo) -> str:
        metrics = info.data.get("metrics")
        if metrics is not None and primary not in metrics:
            raise ValueError(f"primary_metric {primary!r} is not in metrics {metrics}")
        return primary

    @field_validator("columns")
    @classmethod
    def _columns_are_canonical(cls, columns: dict | None, info: ValidationInfo) -> dict | None:
        family = info.data.get("family")
        if columns is not None and family is not None:
            fields = FAMILIES[family].rows.fields
            unknown = [k for k in columns if k not in fields]
            if unknown:
                raise ValueError(f"{unknown} are not fields of {family!r}; fields: {list(fields)}")
        negative = [k for k, v in (columns or {}).items() if isinstance(v, int) and v < 0]
        if negative:
            raise ValueError(f"column indices are 0-based and not negative: {negative}")
        return columns

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_as_strings(cls, labels: Any) -> Any:
        return _names_as_strings(labels)

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, labels: list[str] | None, info: ValidationInfo) -> list[str] | None:
        family = info.data.get("family")
        if labels is not None:
            if family is not None and not FAMILIES[family].rows.has_label_names:
                raise ValueError(f"{family} has no label names; remove `labels`")
            dupes = sorted({x for x in labels if labels.count(x) > 1})
            if dupes or not labels:
                raise ValueError(f"labels must be a non-empty list of distinct names (repeated: {dupes})")
        return labels

    @model_validator(mode="after")
    def _check_sources_and_family(self) -> TaskSpec:
        family = FAMILIES[self.family]
        if self.hub is None and self.local is None:
            raise ValueError("give at least one of `hub` or `local`")
        if self.local is not None:
            self._check_local(self.local)
        if self.hub is not None:
            unknown = [k for k in self.hub.columns or {} if k not in family.rows.fields]
            if unknown:
                raise ValueError(f"hub.columns: {unknown} are not fields of {self.family!r}")
        # A field one family reads, set on a spec of another: a mistake to name, not to ignore.
        foreign = sorted({f for other in FAMILIES.values() for f in other.rows.spec_fields
                          if f not in family.rows.spec_fields and getattr(self, f) != TaskSpec.model_fields[f].default})
        if foreign:
            owners = {f: [o.name for o in FAMILIES.values() if f in o.rows.spec_fields] for f in foreign}
            raise ValueError("; ".join(f"{f} is for {' and '.join(who)}, not {self.family!r}" for f, who in owners.items()))
        family.rows.check_spec(self)
        for name, bad in (("local.eval_extra", self.local and self.local.eval_extra),
                          ("hub.eval_extra", self.hub and self.hub.eval_extra)):
            if bad and {"train", "eval"} & set(bad):
                raise ValueError(f"{name}: 'train' and 'eval' are reserved split names")
            # Split names become folder and metric names in a run: one plain path segment each.
            for split in bad or ():
                if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", split) or split in (".", ".."):
                    raise ValueError(f"{name}: split name {split!r} must be letters, digits, '_', '.', '-' "
                                     "(no path separators)")
        return self

    def _check_local(self, local: LocalSource) -> None:
        columns = self.columns or {}
        family = FAMILIES[self.family]
        if local.format not in family.rows.local_formats:
            raise ValueError(f"local.format {local.format} cannot hold {self.family} rows; use one of "
                             f"{list(family.rows.local_formats)}")
        if local.format == "squad" and columns:
            raise ValueError("local.format squad defines its own fields; remove `columns`")
        if local.format == "conll" and not all(isinstance(columns.get(k), int) for k in ("tokens", "tags")):
            raise ValueError("local.format conll needs integer `columns` for tokens and tags, e.g. {tokens: 0, tags: 3}")
        if local.carve is not None and local.carve.by not in (ROW_INDEX, *family.rows.fields):
            raise ValueError(f"local.carve.by {local.carve.by!r}: use {ROW_INDEX!r} or a field of "
                             f"{self.family!r}: {list(family.rows.fields)}")

    def display_name(self, label: str) -> str:
        """The name people read for a label value (the value itself when the spec names none)."""
        return (self.display_names or {}).get(label, label)

    def column_map(self, source: Literal["local", "hub"]) -> dict[str, str | int]:
        """Canonical field -> source column, defaults applied (identity for unnamed fields)."""
        mapping: dict[str, str | int] = dict(FAMILIES[self.family].rows.source_columns(self))
        mapping.update(self.columns or {})
        if source == "hub" and self.hub is not None and self.hub.columns is not None:
            mapping.update(self.hub.columns)
        return mapping


def replaced(spec: TaskSpec, fields: dict[str, Any], where: str) -> TaskSpec:
    """``spec`` with some fields replaced (a training config's choices), checked as a spec file is: SpecError naming
    ``where`` and the field."""
    try:
        return TaskSpec.model_validate({**spec.model_dump(), **fields})
    except ValidationError as e:
        raise SpecError(_describe_errors(where, e)) from e


def builtin_specs() -> list[str]:
    """Names of the specs shipped in bert_core/specs/, sorted."""
    folder = resources.files("bert_core") / "specs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_spec(name_or_path: str | Path) -> TaskSpec:
    """A built-in spec by name (`"sst2"`) or a spec YAML file by path."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text:
        path = Path(name_or_path)
        if not path.is_file():
            raise SpecError(f"spec file not found: {path}")
        return _parse(path.read_text(encoding="utf-8"), str(path))
    resource = resources.files("bert_core") / "specs" / f"{text}.yaml"
    if not resource.is_file():
        raise SpecError(f"unknown built-in spec {text!r}; built-ins: {builtin_specs()}; "
                        "or pass the path to a spec YAML file")
    return _parse(resource.read_text(encoding="utf-8"), str(resource))


def _parse(text: str, where: str) -> TaskSpec:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise SpecError(f"{where}{at}: not valid YAML: {getattr(e, 'problem', None) or e}") from e
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: a spec is a YAML mapping of fields, got {type(raw).__name__}")
    try:
        return TaskSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(_describe_errors(where, e)) from e


def _describe_errors(where: str, error: ValidationError) -> str:
    lines = [f"{where}: invalid task spec ({error.error_count()} problem(s)):"]
    for err in error.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(whole spec)"
        got = "" if not err["loc"] else f" (got {_short(err.get('input'))})"
        message = err["msg"].removeprefix("Value error, ")  # pydantic's prefix for our ValueErrors
        lines.append(f"  field '{field}': {message}{got}")
    return "\n".join(lines)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

