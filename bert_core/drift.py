"""Input drift: a profile of what a model reads and answers, and how far a scoring run's profile is from the one
saved with the model (its dev set's), as a population stability index (PSI) per item.

    reference = input_profile(dev_rows, dev_responses, tokenizer, family, settings)        # at registration
    profile = input_profile(rows, responses, tokenizer, family, settings, reference)      # each scoring run
    psis = compare_profiles(profile, reference)   # item -> PSI; drifted_items(psis, 0.25) -> the items over it

Items (every family): ``token_length`` (tokens per row, ``[CLS]``/``[SEP]`` included, before any cut; bins at the
reference's deciles and its longest row, so "longer than anything in dev" is a bin of its own), ``cut_share``
(rows over ``max_seq_length``: cut, or read in windows with ``long_text`` and for QA), ``unk_rate`` (share of
word pieces that are ``[UNK]``); then what the model answers, read from its response columns (so no family is
named here): ``predicted_label`` (a label, or multi-label's labels, ``(none)`` for a row with none),
``predicted_tag`` (tagging: every word's tag), ``answer_length`` (QA: words in the answer, ``no answer``
a bin), ``predicted_score`` (regression: the score at the reference's deciles); and ``top_score`` (the
answer's score: classification's probability, multi-label's highest, QA's span score, at the reference's
deciles), whose mean is kept as ``mean_top_score`` too.

PSI = sum_i (a_i - e_i) * ln(a_i / e_i) over the bins, a the scoring run's shares and e the reference's. An
empty bin's share is taken as ``EPSILON`` = 1e-4 (the logarithm needs one): it bounds a bin's ln term at
ln(1e4) = 9.2, so a bin empty in dev that holds 10% of the scored rows adds 0.92 (drift, as it should), and one
that holds 0.1% adds 0.007 (noise). The two shares (``cut_share``, ``unk_rate``) are two-bin distributions
(share, 1 - share), so one threshold reads every item. Rule of thumb (Siddiqi 2006, credit scoring): under 0.1
stable, 0.1 to 0.25 watch, over 0.25 drift. Two samples of n rows from one distribution still differ by about
(bins - 1) * (1/n_a + 1/n_e) on average: a few hundred rows per side are needed before 0.1 means something.

So a PSI over a threshold counts only when sampling noise alone would rarely give it (``noise_p_values``): a file
of 5 rows always has a PSI over 0.25 (most bins empty), and that is not drift. The chance is simulated, not taken
from the chi-square that n x PSI tends to: with the empty bins' epsilon, small samples' PSI is far larger than
that law says (5 rows of dev's own kind came out "significant" 45% of the time). Both samples are drawn again
from their pooled shares, with their own sizes, and the PSI recomputed, ``NOISE_DRAWS`` times (a fixed seed, so
a file's verdict does not change between runs). An item drifts when its PSI passes the threshold and that chance
is under ``SIGNIFICANCE``; 20 rows that all fall in one decile of dev's lengths still drift.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from bert_core.checkpoint import read_finetuned_meta
from bert_core.families import get_family
from bert_core.families.base import Family, as_rows
from bert_core.tokenizer import BertTokenizer

PROFILE_FILE = "input_profile.json"  # in a fine-tuned model's folder, beside config.json
PROFILE_VERSION = 1
EPSILON = 1e-4  # an empty bin's share (see the module docstring)
WATCH_PSI = 0.1
DRIFT_PSI = 0.25
SIGNIFICANCE = 0.01  # an item's PSI counts when sampling noise gives one as large less often than this
NOISE_DRAWS = 2000
DECILES = np.linspace(0.1, 0.9, 9)
OTHER = "(other)"  # a category the reference never saw
ANSWER_WORDS = ((0, "no answer"), (1, "1"), (2, "2"), (4, "3-4"), (8, "5-8"), (math.inf, "9+"))


def input_profile(rows, responses: list[dict], tokenizer: BertTokenizer, family: Family, settings: dict,
                  reference: dict | None = None, label_names: list[str] | None = None) -> dict:
    """The profile of ``rows`` (canonical request fields) and the model's ``responses`` (its response columns,
    one dict per row), as JSON-able dicts per item. With a ``reference``, its bin edges and categories are used,
    so the two compare bin by bin; without, they come from these rows (deciles) and ``label_names``."""
    rows = as_rows(rows)
    ref = (reference or {}).get("items", {})
    max_length = int(settings.get("max_seq_length") or 512)
    lengths = family.features.token_lengths(rows, tokenizer) if rows else []
    unknown, pieces = unknown_pieces(rows, tokenizer, family)
    items = {
        "token_length": binned(lengths, ref.get("token_length"), with_max=True),
        "cut_share": share(sum(n > max_length for n in lengths), len(rows)),
        "unk_rate": share(unknown, pieces),
    }
    name, values, numeric = answered(responses)
    if name is not None:
        items[name] = binned(values, ref.get(name)) if numeric else categories(values, ref.get(name), label_names)
    tops = [t for t in (top_score(r) for r in responses) if t is not None]
    if tops:
        items["top_score"] = binned(tops, ref.get("top_score"))
    return {"version": PROFILE_VERSION, "rows": len(rows), "max_seq_length": max_length,
            "cut_means": "windows" if settings.get("long_text") or "question" in family.rows.request else "truncated",
            "mean_top_score": float(np.mean(tops)) if tops else None, "items": items}


def unknown_pieces(rows: list[dict], tokenizer: BertTokenizer, family: Family) -> tuple[int, int]:
    """(word pieces that are ``[UNK]``, word pieces) over the text fields the model reads."""
    unknown = pieces = 0
    for field in family.rows.request:
        values = [r[field] for r in rows if r.get(field)]
        words = isinstance(values[0], (list, tuple)) if values else False
        for enc in tokenizer.encode_batch([list(v) for v in values] if words else values, max_length=None,
                                          is_pretokenized=words):
            ids = [i for i, seq in zip(enc.input_ids, enc.sequence_ids, strict=True) if seq is not None]
            unknown += sum(i == tokenizer.unk_id for i in ids)
            pieces += len(ids)
    return unknown, pieces


def answered(responses: list[dict]) -> tuple[str | None, list, bool]:
    """(item name, one value per answer, numeric?) from the response columns: what the model answered."""
    if not responses:
        return None, [], False
    keys = responses[0].keys()
    if "label" in keys:
        return "predicted_label", [str(r["label"]) for r in responses], False
    if "labels" in keys:  # multi-label: every label given, and rows given none
        return "predicted_label", [str(x) for r in responses for x in (r["labels"] or ["(none)"])], False
    if "tags" in keys:
        return "predicted_tag", [str(t) for r in responses for t in r["tags"]], False
    if "answer" in keys:
        return "answer_length", [answer_words(r["answer"]) for r in responses], False
    if "score" in keys:
        return "predicted_score", [float(r["score"]) for r in responses], True
    return None, [], False


def answer_words(answer: str | None) -> str:
    words = len((answer or "").split())
    return next(name for most, name in ANSWER_WORDS if words <= most)


def top_score(response: dict) -> float | None:
    """How sure the answer is: a label's or an answer's ``score``, multi-label's highest probability."""
    if "probabilities" in response and response["probabilities"]:
        return float(max(response["probabilities"].values()))
    if ("label" in response or "answer" in response) and response.get("score") is not None:
        return float(response["score"])
    return None


def share(count: int, total: int) -> dict:
    return {"kind": "share", "value": count / total if total else 0.0, "count": int(count), "total": int(total)}


def binned(values: list[float], reference: dict | None = None, with_max: bool = False) -> dict:
    """Shares of ``values`` in the bins (-inf, e1], (e1, e2], ..., (ek, inf) of the reference's edges, or of these
    values' deciles (and their largest value, with ``with_max``)."""
    if reference is not None:
        edges = reference["edges"]
    else:
        cuts = list(np.quantile(values, DECILES)) + ([max(values)] if with_max else []) if values else []
        edges = sorted({float(c) for c in cuts})
    counts = np.bincount(np.searchsorted(np.asarray(edges), np.asarray(values, dtype=float), side="left"),
                         minlength=len(edges) + 1) if values else np.zeros(len(edges) + 1)
    return {"kind": "bins", "edges": edges, "shares": (counts / max(len(values), 1)).tolist()}


def categories(values: list[str], reference: dict | None = None, names: list[str] | None = None) -> dict:
    """Shares of each category; with a reference its categories, anything else counted as ``(other)``."""
    known = list(reference["shares"]) if reference is not None else sorted({*(names or []), *values})
    counts = dict.fromkeys(known, 0)
    for value in values:
        key = value if value in counts else OTHER
        counts[key] = counts.get(key, 0) + 1
    return {"kind": "categories", "shares": {k: c / max(len(values), 1) for k, c in counts.items()}}


def psi(actual: list[float], expected: list[float], epsilon: float = EPSILON) -> float:
    """Population stability index of two aligned share lists (each summing to 1), an empty share as ``epsilon``."""
    a = np.maximum(np.asarray(actual, dtype=float), epsilon)
    e = np.maximum(np.asarray(expected, dtype=float), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def _aligned(item: dict, reference: dict) -> tuple[list[float], list[float]]:
    if item["kind"] == "share":
        return [item["value"], 1 - item["value"]], [reference["value"], 1 - reference["value"]]
    if item["kind"] == "bins":
        return item["shares"], reference["shares"]
    keys = list(dict.fromkeys([*reference["shares"], *item["shares"]]))
    return [item["shares"].get(k, 0.0) for k in keys], [reference["shares"].get(k, 0.0) for k in keys]


def compare_profiles(profile: dict, reference: dict) -> dict[str, float]:
    """Item -> PSI of ``profile`` against ``reference``, for the items both have (none when either has no rows)."""
    if not profile["rows"] or not reference["rows"]:
        return {}
    found = profile["items"]
    return {name: psi(*_aligned(found[name], ref)) for name, ref in reference["items"].items() if name in found}


def noise_p_values(profile: dict, reference: dict, draws: int = NOISE_DRAWS) -> dict[str, float]:
    """Item -> the chance that two samples of one distribution, of these sizes, differ by a PSI at least the
    item's (see the module docstring): ``draws`` pairs of samples from the two sides' pooled shares."""
    if not profile["rows"] or not reference["rows"]:
        return {}
    rng = np.random.default_rng(0)
    found, p_values = profile["items"], {}
    for name, ref in reference["items"].items():
        if name not in found:
            continue
        item = found[name]
        # A share counts its own total (the [UNK] rate's: word pieces); bins and categories count rows (tagging's
        # tags are words, so rows understate their sample: that errs towards no drift).
        n_a, n_e = (item.get("total"), ref.get("total")) if item["kind"] == "share" else (None, None)
        n_a, n_e = n_a or profile["rows"], n_e or reference["rows"]
        actual, expected = (np.asarray(shares, dtype=float) for shares in _aligned(item, ref))
        pooled = n_a * actual + n_e * expected
        pooled = pooled / pooled.sum()
        a = rng.multinomial(n_a, pooled, size=draws) / n_a  # (draws, bins)
        e = rng.multinomial(n_e, pooled, size=draws) / n_e
        a, e = np.maximum(a, EPSILON), np.maximum(e, EPSILON)
        noise = np.sum((a - e) * np.log(a / e), axis=1)  # (draws,) PSIs of same-distribution pairs
        observed = psi(actual, expected)
        p_values[name] = float((1 + np.sum(noise >= observed * (1 - 1e-9))) / (draws + 1))
    return p_values


def drifted_items(psis: dict[str, float], threshold: float = DRIFT_PSI, p_values: dict[str, float] | None = None,
                  ) -> list[str]:
    """The items whose PSI passes ``threshold`` (and, given ``p_values``, beyond sampling noise), in profile order."""
    return [name for name, value in psis.items()
            if value > threshold and (p_values is None or p_values.get(name, 0.0) < SIGNIFICANCE)]


def write_profile(folder: str | Path, profile: dict) -> Path:
    path = Path(folder) / PROFILE_FILE
    path.write_text(json.dumps(profile, indent=1), encoding="utf-8")
    return path


def read_profile(folder: str | Path | None) -> dict | None:
    """The profile saved in a model's folder, or None (a model saved before profiles were)."""
    path = Path(folder) / PROFILE_FILE if folder else None
    return json.loads(path.read_text(encoding="utf-8")) if path is not None and path.is_file() else None


def profile_model_dir(model_dir: str | Path, rows, predictions: list[dict]) -> Path:
    """The dev profile of a fine-tuned model (``rows`` and its people-ready ``predictions`` on them, as
    ``Predictions.postprocess`` returns them), written into its folder: the reference scoring compares with."""
    meta = read_finetuned_meta(model_dir)
    family = get_family(meta["family"])
    responses = [{column: p.get(key) for column, key in family.predictions.response.items()} for p in predictions]
    names = [(meta.get("display_names") or {}).get(n, n) for n in meta.get("label_names") or []]
    profile = input_profile(rows, responses, BertTokenizer.from_folder(model_dir), family, meta, label_names=names)
    return write_profile(model_dir, profile)
