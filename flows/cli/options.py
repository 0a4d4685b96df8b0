"""The `bertflow` options generated from the flows' parameter models (flows/params.py, TrainConfig): a field
becomes one option with the field's default, its description as the help text and its Literal as the
choices, so the command line, the Prefect form and the code cannot disagree. Values the user did not give
stay out of the model, so the model's defaults apply (and TrainConfig's unset fields take the task spec's).

    FINETUNE = ModelOptions(FinetuneParams, positional=("task",), nested={"training": TRAINING})
    FINETUNE.add_to(parser)                  # --pretrained, --data-dir, ..., every TrainConfig field
    params = FINETUNE.build(parser.parse_args(argv))          # -> FinetuneParams

From a field's type: `bool` -> a flag (`--no-<name>` when the default is True; both forms for TrainConfig,
whose unset fields are the spec's), `Literal` -> choices, `int` / `float` / `str` (`X | None` alike), `dict`
-> a repeated KEY=VALUE option, a `list` positional -> any number of values, a pydantic model -> its own options
(`nested`), a union holding a `Literal` or `str` (`float | Literal["tune"]`, `Literal["balanced"] | dict`) -> its
text as given, which the model reads (`0.3` or `tune`; `balanced` or JSON). What the type cannot say
(another flag name, how a dict's values are written) is a `Form`.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel


@dataclasses.dataclass(frozen=True)
class Form:
    """How a field is written on the command line when its name and type alone do not say."""

    flag: str | None = None  # default: --<field-name>, or --no-<field-name> for a bool that defaults to True
    metavar: str | None = None
    syntax: str = ""  # how to write a value, put before the field's description in the help
    example: str = ""  # a dict item, e.g. text=review, for the error message of a malformed one
    parse: Callable[[str], tuple[str, Any]] | None = None  # a dict item parsed while parsing (errors exit 2)
    required: bool = False


class ModelOptions:
    """The options of one pydantic model's fields (`only` those, or all but `exclude`)."""

    def __init__(self, model: type[BaseModel], *, only: tuple[str, ...] | None = None,
                 exclude: tuple[str, ...] = (), positional: tuple[str, ...] = (),
                 forms: dict[str, Form] | None = None, nested: dict[str, ModelOptions] | None = None,
                 title: str | None = None, spec_defaults: bool = False):
        self.model = model
        self.fields = {name: field for name, field in model.model_fields.items()
                       if (only is None or name in only) and name not in exclude}
        unknown = {*(only or ()), *exclude, *positional, *(forms or {}), *(nested or {})} - set(model.model_fields)
        if unknown:
            raise ValueError(f"{model.__name__} has no field(s) {sorted(unknown)}")
        self.positional, self.forms, self.nested = positional, forms or {}, nested or {}
        self.title = title
        self.spec_defaults = spec_defaults  # TrainConfig: an unset field takes the task spec's default

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(self.title) if self.title else parser
        for name, field in self.fields.items():
            if name in self.nested:
                self.nested[name].add_to(parser)
            elif name in self.positional:
                many, optional = _kind(field.annotation) is list, field.default is None
                parser.add_argument(name, nargs="*" if many else "?" if optional else None,
                                    help=_escaped(field.description))
            else:
                # one string: a BooleanOptionalAction adds its --no- form itself
                group.add_argument(self.flags(name)[0], dest=self._dest(name), default=None, help=self._help(name),
                                   **self._argument_keywords(name))

    def build(self, args: argparse.Namespace, **fixed) -> BaseModel:
        """The model of the values given on the command line, `fixed` replacing some; ValueError for a bad one."""
        return self.model(**{**self.given(args), **fixed})

    def given(self, args: argparse.Namespace) -> dict[str, Any]:
        """Field -> value, for the fields given on the command line (nested models always: their unset
        fields stay unset)."""
        values = {}
        for name in self.fields:
            if name in self.nested:
                values[name] = self.nested[name].build(args)
                continue
            value = getattr(args, self._dest(name), None)
            if value is not None and value != []:  # a list positional given no values: not given
                values[name] = self._dict(name, value) if _kind(self.fields[name].annotation) is dict else value
        return values

    def flags(self, name: str) -> list[str]:
        """The option strings of field `name`, e.g. ['--group-by-length', '--no-group-by-length']."""
        form, field = self.forms.get(name, Form()), self.fields[name]
        if form.flag:
            return [form.flag]
        flag = "--" + name.replace("_", "-")
        if _kind(field.annotation) is not bool:
            return [flag]
        if self.spec_defaults:  # unset (the spec's), on or off
            return [flag, "--no-" + flag[2:]]
        return ["--no-" + flag[2:]] if field.default is True else [flag]

    def _dest(self, name: str) -> str:
        return name if name in self.positional else self.flags(name)[0].lstrip("-").replace("-", "_")

    def _argument_keywords(self, name: str) -> dict[str, Any]:
        """add_argument's keywords for the field's type."""
        field, form = self.fields[name], self.forms.get(name, Form())
        kind = _kind(field.annotation)
        if kind is bool:
            if self.spec_defaults:
                return {"action": argparse.BooleanOptionalAction}
            return {"action": "store_false" if field.default is True else "store_true"}
        if kind is dict:
            return {"action": "append", "type": form.parse, "metavar": form.metavar or "KEY=VALUE",
                    "required": form.required}
        if isinstance(kind, tuple):  # a Literal: its values are the choices
            return {"choices": kind}
        if kind is list:  # one or more values after the flag, each a choice when the items are a Literal
            item = _kind(typing.get_args(field.annotation)[0])
            return {"nargs": "+", **({"choices": item} if isinstance(item, tuple) else {"type": item})}
        metavar = form.metavar or {int: "N", float: "X"}.get(kind)
        return {"type": kind, "metavar": metavar, "required": form.required}

    def _help(self, name: str) -> str:
        field, form = self.fields[name], self.forms.get(name, Form())
        description = field.description or ""
        if _kind(field.annotation) is bool and field.default is True and not self.spec_defaults:
            description = f"Turns off (on by default): {description}"
        parts = [form.syntax, description]
        if self.spec_defaults:
            parts.append(f"Default: {field.default}, unless the task spec sets it.")
        elif field.default is not None and not isinstance(field.default, bool) and not form.required:
            parts.append(f"Default: {field.default}.")
        return _escaped(" ".join(p for p in parts if p))

    def _dict(self, name: str, items: list) -> dict:
        """A dict field's repeated KEY=VALUE items (parsed already when the form has `parse`) as a dict."""
        form, flag = self.forms.get(name, Form()), self.flags(name)[0]
        value = {}
        for key, item_value in (item if isinstance(item, tuple) else _key_value(item, flag, form) for item in items):
            if key in value:
                raise ValueError(f"{flag} names {key!r} twice")
            value[key] = item_value
        return value


def _key_value(item: str, flag: str, form: Form) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key or not value:
        raise ValueError(f"{flag} {item!r}: expected {form.metavar or 'KEY=VALUE'}"
                         + (f", e.g. {flag} {form.example}" if form.example else ""))
    return key, value


def _kind(annotation) -> Any:
    """int, float, bool, str, dict or a nested model for a field's type (``X | None`` -> X); a Literal's
    values as a tuple."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return tuple(typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _kind(args[0])
        if any(a is str or typing.get_origin(a) is typing.Literal for a in args):  # e.g. BuiltinTask | str,
            return str  # float | Literal["tune"]: the model reads the text (its field validator, or pydantic's)
    if origin in (dict, list) or annotation in (int, float, bool, str):
        return origin or annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    raise TypeError(f"no command-line form for the type {annotation}: give the field a Form or leave it out")


def _escaped(text: str | None) -> str | None:
    """argparse formats help with %: a literal % must be doubled."""
    return text.replace("%", "%%") if text else text


# ---- sweep's --space FIELD=V1,V2 / FIELD=LOW:HIGH[:log|:STEP] ----------------------------------------------
def space_option(text: str) -> tuple[str, object]:
    """`FIELD=V1,V2` -> (field, [v1, v2]); `FIELD=LOW:HIGH[:log|:STEP]` -> (field, Range)."""
    from flows.sweep_study import Range

    field, sep, values = text.partition("=")
    if not sep or not field or not values:
        raise argparse.ArgumentTypeError(f"expected FIELD=V1,V2,... or FIELD=LOW:HIGH[:log|:STEP], got {text!r}")
    if ":" in values:
        low, high, *rest = values.split(":")
        if len(rest) > 1:
            raise argparse.ArgumentTypeError(f"a range is LOW:HIGH, LOW:HIGH:log or LOW:HIGH:STEP, got {values!r}")
        extra = {"log": True} if rest == ["log"] else {"step": scalar(rest[0])} if rest else {}
        try:
            return field, Range(low=scalar(low), high=scalar(high), **extra)
        except ValueError as err:
            detail = err.errors()[0]["msg"] if hasattr(err, "errors") else err
            raise argparse.ArgumentTypeError(f"{field}: {detail}") from None
    return field, [scalar(v) for v in values.split(",")]


def scalar(text: str):
    """'16' -> 16, '2e-5' -> 2e-05, 'true' -> True, 'null' -> None (the task spec's value), else the text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text.lower() in ("null", "none"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
