"""A scoring run's drift against the model's dev set (bert_core.drift), logged to the active MLflow run.

    measure_drift(model, family, rows, responses, threshold=0.25) -> dict

The reference is the ``input_profile.json`` the fine-tune saved in the model's folder (``tasks/evaluate.py``),
logged with the model as part of its ``model_dir`` artifact, so any model URI scoring resolves has it. Logged:
- metrics ``drift_psi_<item>`` (one per item: ``token_length``, ``cut_share``, ``unk_rate``, ``predicted_label``
  / ``predicted_tag`` / ``answer_length`` / ``predicted_score``, ``top_score``), ``drift_p_<item>`` (the chance
  of so large a PSI from sampling noise alone, at these row counts), ``drift_mean_top_score`` and
  ``drift_mean_top_score_change`` (this run's mean minus dev's), ``drift_items_over_threshold``;
- tags ``drift`` (``true`` when any PSI passes the threshold beyond sampling noise, else ``false``),
  ``drift_items`` (those items, comma-separated, or ``none``), ``drift_within_noise`` (items whose PSI passes
  the watch level but which a sample this small gives by chance: a file of a few rows), ``drift_threshold``;
- the artifact ``drift/drift_report.json``: the threshold, each PSI and its p-value, this run's profile and the
  reference.
A model saved before profiles were (no ``input_profile.json``): tag ``drift`` = ``not measured``, nothing else.
"""

from __future__ import annotations

import mlflow

from bert_core.drift import (
    DRIFT_PSI,
    SIGNIFICANCE,
    WATCH_PSI,
    compare_profiles,
    drifted_items,
    input_profile,
    noise_p_values,
    read_profile,
)
from bert_core.families import Family


def measure_drift(model, family: Family, rows: list[dict], responses: list[dict], threshold: float = DRIFT_PSI) -> dict:
    """Profile ``rows`` (request fields) and ``responses`` (the pyfunc's, one per row) against the profile saved with
    ``model`` (a loaded bertflow pyfunc), log it all to the active run; returns ``{"measured": False}`` for a model
    without a profile, else ``measured``, ``threshold``, ``psi`` (item -> PSI), ``p`` (item -> its noise p-value),
    ``drifted`` and ``watch`` (items between ``WATCH_PSI`` and the threshold), both beyond sampling noise,
    ``within_noise`` (items over ``WATCH_PSI`` that noise explains), ``mean_top_score`` (dev's, this run's) and
    ``rows``."""
    python_model = model.unwrap_python_model()
    reference = read_profile(getattr(python_model, "model_dir", None))
    if reference is None:
        mlflow.set_tag("drift", "not measured")
        return {"measured": False, "threshold": threshold}
    predictor = python_model.predictor
    profile = input_profile(rows, responses, predictor.tokenizer, family, predictor.settings, reference)
    psis, p_values = compare_profiles(profile, reference), noise_p_values(profile, reference)
    over = drifted_items(psis, threshold, p_values)
    real = {name for name, p in p_values.items() if p < SIGNIFICANCE}
    watch = [name for name, value in psis.items() if WATCH_PSI < value <= threshold and name in real]
    within_noise = [name for name, value in psis.items() if value > WATCH_PSI and name not in real]
    metrics = {f"drift_psi_{name}": value for name, value in psis.items()}
    metrics |= {f"drift_p_{name}": value for name, value in p_values.items()}
    metrics["drift_items_over_threshold"] = float(len(over))
    tops = (reference.get("mean_top_score"), profile.get("mean_top_score"))
    if None not in tops:
        metrics |= {"drift_mean_top_score": tops[1], "drift_mean_top_score_change": tops[1] - tops[0]}
    mlflow.log_metrics(metrics)
    mlflow.set_tags({"drift": "true" if over else "false", "drift_items": ",".join(over) or "none",
                     "drift_within_noise": ",".join(within_noise) or "none", "drift_threshold": f"{threshold:g}"})
    mlflow.log_dict({"threshold": threshold, "watch_above": WATCH_PSI, "significance": SIGNIFICANCE, "psi": psis,
                     "p": p_values, "drifted": over, "within_noise": within_noise, "profile": profile,
                     "reference": reference}, "drift/drift_report.json")
    return {"measured": True, "threshold": threshold, "psi": psis, "p": p_values, "drifted": over, "watch": watch,
            "within_noise": within_noise, "mean_top_score": list(tops), "rows": profile["rows"],
            "reference_rows": reference["rows"]}


def drift_lines(drift: dict | None) -> list[str]:
    """The summary's drift section for one file: one line when not measured, else the verdict and each item's PSI."""
    if not drift or not drift.get("measured"):
        return ["  drift        not measured (the model was saved without its dev set's input profile)"]
    verdict = (f"DRIFT in {', '.join(drift['drifted'])}" if drift["drifted"]
               else f"watch {', '.join(drift['watch'])}" if drift["watch"] else "none")
    if drift.get("within_noise"):
        verdict += (f"; {', '.join(drift['within_noise'])} within the sampling noise of {drift['rows']:,} "
                    f"row{'s' if drift['rows'] != 1 else ''}")
    psis = ", ".join(f"{name} {value:.3f}" for name, value in drift["psi"].items())
    lines = [f"  drift        {verdict} (PSI against {drift['reference_rows']:,} dev rows; drift above "
             f"{drift['threshold']:g}, watch above {WATCH_PSI:g})", f"               {psis}"]
    dev, now = drift["mean_top_score"]
    if dev is not None and now is not None:
        lines.append(f"               mean top score {now:.3f} (dev {dev:.3f})")
    return lines
