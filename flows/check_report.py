"""What `bertflow check` prints: a dry run (``bert_core.dry_run.DryRun``) as text for people.

    print(report(dry_run(spec, cfg, data_dir)))

One line per split (rows, rows used, features, token lengths, rows cut at max_seq_length, labels), then the
training-time estimate, the rows that would be dropped, every warning and the suggestions (``long_text`` when
many rows are cut).
"""

from __future__ import annotations

from bert_core.dry_run import DryRun

SHOWN_LABELS = 12
SHOWN_WARNINGS = 20


def report(run: DryRun) -> str:
    """The dry run as text for people: one line per split, then the estimate and every warning."""
    lines = [f"{run.task} ({run.family}): {run.source}, data fingerprint {run.fingerprint[:16]}",
             f"pretrained: {run.pretrained}; max_seq_length {run.max_seq_length}"]
    if run.label_names is not None:
        names = [n + (f" ({run.display_names[n]})" if n in run.display_names else "") for n in run.label_names]
        shown = ", ".join(names[:SHOWN_LABELS]) + (f", ... ({len(names)} in all)" if len(names) > SHOWN_LABELS else "")
        lines.append(f"labels: {shown}")
    lines += ["", *_split_table(run)]
    if any(s.features != s.used for s in run.splits):
        lines.append("more features than rows: inputs longer than max_seq_length are read in overlapping windows")
    e = run.estimate
    lines += ["", f"training: {e.rows:,} rows, {e.steps:,} steps of {e.batch_size} ({e.epochs:g} epoch(s)); "
                  f"{e.seconds_per_step:.2f} s/step measured over {e.timed_steps} steps here ({e.precision}, "
                  f"{e.threads} thread{'s' if e.threads > 1 else ''}) -> about {_duration(e.seconds)}, evaluations not included"]
    if run.dropped:
        lines += ["", f"{len(run.dropped)} bad row(s) would be dropped, e.g. {run.dropped[0]}"]
    if run.suggestions:
        lines += ["", "suggested:", *(f"  {s}" for s in run.suggestions)]
    if run.warnings:
        lines += ["", f"{len(run.warnings)} warning(s):", *(f"  {w}" for w in run.warnings[:SHOWN_WARNINGS])]
        if len(run.warnings) > SHOWN_WARNINGS:
            lines.append(f"  ... and {len(run.warnings) - SHOWN_WARNINGS} more")
    lines += ["", "all checks passed: the data, the spec and the settings are ready for `bertflow run`"]
    return "\n".join(lines)


def _split_table(run: DryRun) -> list[str]:
    """A header and one line per split, columns padded to their widest cell."""
    header = ["split", "file", "rows", "used", "features", "tokens p50/p90/p99/max", f"over {run.max_seq_length}",
              "labels / scores"]
    table = [header]
    for s in run.splits:
        over = f"{s.over_max:,} ({s.over_max / max(s.used, 1):.1%})"
        table.append([s.name, s.origin, f"{s.rows:,}", f"{s.used:,}", f"{s.features:,}",
                      "/".join(str(s.tokens[k]) for k in ("p50", "p90", "p99", "max")), over, s.labels])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
