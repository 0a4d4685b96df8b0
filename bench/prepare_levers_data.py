"""Rebuild the two datasets issue 23's levers are measured on, from public repository files, with seeded splits.

    .venv/bin/python bench/prepare_levers_data.py                      # both, from the default mirrors
    .venv/bin/python bench/prepare_levers_data.py --only hate_speech --hate-source labeled_data.csv

Writes, under --out (default $BERTFLOW_DATA_DIR, else $BERTFLOW_HOME/bench-data), TSVs with the header ``text<TAB>label``
that bench/specs/hate_speech.yaml and bench/specs/imdb_long.yaml read (paths relative to that data root):

  levers/hate_speech/{train,dev,test}.tsv   a rare positive class (about 5.8% of rows)
  levers/imdb_long/{train,dev,test}.tsv     movie reviews of at least --min-tokens tokens (several windows of 128)
  levers/SOURCES.json                       where every file came from, its sha256, rows, labels, token lengths

hate_speech: Davidson et al. (2017), "Automated Hate Speech Detection and the Problem of Offensive Language",
ICWSM. github.com/t-davidson/hate-speech-and-offensive-language, file data/labeled_data.csv (git blob
4f51a1ce6526ff5059da4f85cf4ea413db2c6a8b, sha256 fcb8bc7c...6281, last changed in commit 35b98861, the same
blob at HEAD cb50f7e9eb855a99abc51423bf40df0e26d6fe30). MIT licence; the authors ask to be cited. 24,783 tweets
labelled by CrowdFlower majority: class 0 hate speech (1,430), 1 offensive language (19,190), 2 neither (4,163).
Made binary: label "1" = hate speech (the rare class, the spec's label_names[1]), "0" = offensive or neither.
Hate vs offensive is the hard part (the paper's 3-class classifier: hate-class precision 0.44, recall 0.61).
Split 70/15/15 train/dev/test, stratified by the binary label.

imdb_long: the Large Movie Review Dataset v1.0 (Maas et al. 2011, ACL), 25k train + 25k test reviews labelled
positive (rating >= 7) or negative (<= 4), one file per review as in aclImdb_v1.tar.gz. Read from
github.com/dax44/AMLM at commit 05fb2144cdac27a88f277b3969df58e2ae041af6, folder data/aclImdb (that repo moved
2,500 + 2,500 of the train reviews into data/aclImdb/val/: they are train reviews again here). The 50,000
labelled reviews are pinned by IMDB_MANIFEST_SHA256: the sha256 of the sorted lines "split/label/file git-blob"
(the same digest from an extracted aclImdb folder). Kept: reviews of at least --min-tokens tokens (default 384,
three times max_seq_length 128); sampled, stratified and balanced: train 2,000 and dev 500 from the original
train reviews, test 1,000 from the original test reviews (disjoint movies, per the dataset's README).
Terms: none stated beyond citing Maas et al. (2011) (the dataset's README).

Cleaning, only what a one-line-per-row TSV needs: tabs, carriage returns and newlines become one space each run;
IMDB's "<br />" (its spelling of a line break) becomes a space too. Nothing else is changed: HTML entities
(&amp;), @mentions, URLs and case stay as the sources have them. Token lengths are counted with the packaged
default checkpoint's tokenizer (all-MiniLM-L6-v2, bert_core.checkpoint.OFFLINE_DEFAULT), [CLS] and [SEP]
included, no truncation.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import random
import re
import subprocess
from pathlib import Path

import numpy as np

MIRRORS = Path("/work/.mirror")
HATE_REPO = "t-davidson/hate-speech-and-offensive-language"
HATE_PATH = "data/labeled_data.csv"
HATE_BLOB = "4f51a1ce6526ff5059da4f85cf4ea413db2c6a8b"
HATE_RARE_CLASS = "0"  # the CSV's `class` of hate speech
IMDB_REPO = "dax44/AMLM"
IMDB_COMMIT = "05fb2144cdac27a88f277b3969df58e2ae041af6"
IMDB_MANIFEST_SHA256 = "959276d8d234d365c2bae67d6fc4ce321aded1d0333325fdf8b066aaba11db2b"
IMDB_LABELS = {"neg": "0", "pos": "1"}
SPLITS = ("train", "dev", "test")
MAX_SEQ_LENGTH = {"hate_speech": 64, "imdb_long": 128}  # the specs' values: the share of rows longer is printed
LINE_BREAKS = re.compile(r"[\t\r\n]+")


# ---- reading the sources ----------------------------------------------------------------------------
def git_blob_id(data: bytes) -> str:
    """The id git gives a file with these bytes (``git hash-object``), so any copy can be matched to a tree."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def git(git_dir: Path, *argv: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(["git", f"--git-dir={git_dir}", *argv], input=stdin, capture_output=True, check=True).stdout


def read_blobs(git_dir: Path, blob_ids: list[str]) -> list[bytes]:
    """Many blobs in one ``git cat-file --batch`` call, in order."""
    out = git(git_dir, "cat-file", "--batch", stdin="".join(f"{b}\n" for b in blob_ids).encode())
    blobs, at = [], 0
    for _ in blob_ids:
        header_end = out.index(b"\n", at)
        size = int(out[at:header_end].split()[2])
        blobs.append(out[header_end + 1: header_end + 1 + size])
        at = header_end + 2 + size  # the content is followed by one newline
    return blobs


def read_hate_csv(source: Path, commit: str) -> tuple[bytes, dict]:
    """labeled_data.csv's bytes (from a mirror's git dir at ``commit``, or a downloaded file) and its provenance."""
    if source.is_dir():
        data = git(source, "show", f"{commit}:{HATE_PATH}")
        where = {"commit": git(source, "rev-parse", commit).decode().strip()}
    else:
        data, where = source.read_bytes(), {"file": str(source)}
    blob = git_blob_id(data)
    if blob != HATE_BLOB:
        raise SystemExit(f"{source}: {HATE_PATH} has git blob {blob}, not {HATE_BLOB}: another version of the data")
    return data, {"repository": f"github.com/{HATE_REPO}", "path": HATE_PATH, **where, "git_blob": blob,
                  "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                  "licence": "MIT (the repository's LICENSE); the authors ask to be cited (Davidson et al. 2017)"}


def imdb_listing(source: Path, commit: str) -> list[tuple[str, str, str, str]]:
    """(original split, label folder, file name, git blob) of every labelled review, sorted.

    A mirror's git dir (dax44/AMLM layout: data/aclImdb/{train,val,test}/{pos,neg}; val is train) or an
    extracted aclImdb folder ({train,test}/{pos,neg}); for a folder the "blob" is the file's path."""
    listing = []
    if source.is_dir() and (source / "train").is_dir():  # an extracted aclImdb folder
        for split in ("train", "test"):
            for label in IMDB_LABELS:
                listing += [(split, label, p.name, str(p)) for p in (source / split / label).glob("*.txt")]
        return sorted(listing)
    tree = git(source, "ls-tree", "-r", commit, "data/aclImdb/").decode().splitlines()
    for line in tree:
        meta, path = line.split("\t")
        parts = path.split("/")  # data, aclImdb, split, label, file
        if len(parts) == 5 and parts[3] in IMDB_LABELS and parts[4].endswith(".txt"):
            split = "test" if parts[2] == "test" else "train"
            listing.append((split, parts[3], parts[4], meta.split()[2]))
    return sorted(listing)


def read_imdb(source: Path, commit: str) -> tuple[list[dict], dict]:
    """Every labelled review as {"split", "label", "file", "text"} and the provenance (manifest checked)."""
    listing = imdb_listing(source, commit)
    if (source / "train").is_dir():
        contents = [Path(path).read_bytes() for *_, path in listing]
        where = {"folder": str(source)}
    else:
        contents = read_blobs(source, [blob for *_, blob in listing])
        where = {"repository": f"github.com/{IMDB_REPO}", "commit": git(source, "rev-parse", commit).decode().strip(),
                 "path": "data/aclImdb/{train,val,test}/{pos,neg}/*.txt (val/ holds original train reviews)"}
    manifest = "".join(f"{split}/{label}/{name} {git_blob_id(data)}\n"
                       for (split, label, name, _), data in zip(listing, contents, strict=True))
    digest = hashlib.sha256(manifest.encode()).hexdigest()
    if len(listing) != 50_000:
        raise SystemExit(f"{source}: {len(listing)} labelled reviews, not aclImdb's 50,000")
    if digest != IMDB_MANIFEST_SHA256:
        raise SystemExit(f"{source}: the reviews' manifest sha256 is {digest}, not {IMDB_MANIFEST_SHA256}")
    reviews = [{"split": split, "label": IMDB_LABELS[label], "file": f"{split}/{label}/{name}",
                "text": data.decode("utf-8")} for (split, label, name, _), data in zip(listing, contents, strict=True)]
    return reviews, {"dataset": "Large Movie Review Dataset v1.0 (Maas et al. 2011)", **where,
                     "manifest_sha256": digest, "reviews": len(reviews),
                     "terms": "none stated beyond citing Maas et al. (2011) (the dataset's README)"}


# ---- cleaning and splitting -------------------------------------------------------------------------
def clean(text: str) -> str:
    """One line per row: tabs and line breaks become a space (GLUE-style TSVs are not quoted)."""
    return LINE_BREAKS.sub(" ", text).strip()


def stratified_split(rows: list[dict], sizes: dict[str, float | int], rng: random.Random) -> dict[str, list[dict]]:
    """Each label's rows shuffled and cut into the splits: a float is a share of that label's rows, an int a
    total spread evenly over the labels. Each split is shuffled again, so its first N rows are a random sample."""
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    out: dict[str, list[dict]] = {name: [] for name in sizes}
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        start = 0
        for name, size in sizes.items():
            count = round(size * len(group)) if isinstance(size, float) else size // len(by_label)
            if name == list(sizes)[-1] and isinstance(size, float):
                count = len(group) - start  # rounding leftovers go to the last split
            if start + count > len(group):
                raise SystemExit(f"label {label!r}: {len(group)} rows, too few for the splits {sizes}")
            out[name] += group[start: start + count]
            start += count
    for split_rows in out.values():
        rng.shuffle(split_rows)
    return out


def token_lengths(texts: list[str]) -> np.ndarray:
    from bert_core.checkpoint import resolve_source
    from bert_core.tokenizer import BertTokenizer

    tokenizer = BertTokenizer.from_folder(resolve_source(None))
    return np.array([len(e) for e in tokenizer.encode_batch(texts, max_length=None)])


def length_summary(lengths: np.ndarray, max_seq_length: int) -> dict:
    percentiles = dict(zip(("p10", "p50", "p90", "p99"), np.percentile(lengths, [10, 50, 90, 99]).round().tolist()))
    return {"mean": round(float(lengths.mean()), 1), **percentiles, "max": int(lengths.max()),
            f"share_over_{max_seq_length}": round(float((lengths > max_seq_length).mean()), 4)}


# ---- the two datasets -------------------------------------------------------------------------------
def build_hate_speech(source: Path, commit: str, seed: int) -> tuple[dict[str, list[dict]], dict]:
    data, provenance = read_hate_csv(source, commit)
    records = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    rows = [{"text": clean(r["tweet"]), "label": "1" if r["class"] == HATE_RARE_CLASS else "0"} for r in records]
    provenance.update(rows=len(rows), original_classes={c: sum(r["class"] == c for r in records) for c in "012"},
                      binary="label 1 = class 0 (hate speech); label 0 = classes 1 (offensive) and 2 (neither)",
                      rows_with_line_breaks=sum(bool(LINE_BREAKS.search(r["tweet"])) for r in records))
    return stratified_split(rows, {"train": 0.70, "dev": 0.15, "test": 0.15}, random.Random(seed)), provenance


def build_imdb_long(source: Path, commit: str, seed: int, min_tokens: int, sizes: dict[str, int]) -> tuple[dict, dict]:
    reviews, provenance = read_imdb(source, commit)
    for review in reviews:
        review["text"] = clean(review["text"].replace("<br />", " "))
    lengths = token_lengths([r["text"] for r in reviews])
    long = [r for r, n in zip(reviews, lengths, strict=True) if n >= min_tokens]
    rng = random.Random(seed)
    original_train = [{"text": r["text"], "label": r["label"], "file": r["file"]} for r in long if r["split"] == "train"]
    original_test = [{"text": r["text"], "label": r["label"], "file": r["file"]} for r in long if r["split"] == "test"]
    splits = stratified_split(original_train, {"train": sizes["train"], "dev": sizes["dev"]}, rng)
    splits |= stratified_split(original_test, {"test": sizes["test"]}, rng)
    provenance.update(all_reviews_tokens=length_summary(lengths, MAX_SEQ_LENGTH["imdb_long"]), min_tokens=min_tokens,
                      long_reviews={"train": len(original_train), "test": len(original_test)},
                      sampled_files={name: sorted(r["file"] for r in rows) for name, rows in splits.items()})
    return splits, provenance


def write_splits(out: Path, name: str, splits: dict[str, list[dict]]) -> dict:
    """TSVs with header text<TAB>label; per split: rows, labels, sha256 and token lengths."""
    folder = out / "levers" / name
    folder.mkdir(parents=True, exist_ok=True)
    report = {}
    for split in SPLITS:
        rows = splits[split]
        body = "text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in rows)
        path = folder / f"{split}.tsv"
        path.write_text(body, encoding="utf-8")
        labels = {label: sum(r["label"] == label for r in rows) for label in ("0", "1")}
        report[split] = {"file": str(path.relative_to(out)), "rows": len(rows), "labels": labels,
                         "positive_share": round(labels["1"] / len(rows), 4),
                         "sha256": hashlib.sha256(body.encode("utf-8")).hexdigest(),
                         "tokens": length_summary(token_lengths([r["text"] for r in rows]), MAX_SEQ_LENGTH[name])}
    return report


def print_report(name: str, report: dict) -> None:
    print(f"\n{name}")
    print("| split | rows | label 0 | label 1 | share 1 | tokens mean | p50 | p90 | p99 | max | share over max_seq_length |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for split, r in report.items():
        t = r["tokens"]
        over = next(v for k, v in t.items() if k.startswith("share_over"))
        print(f"| {split} | {r['rows']:,} | {r['labels']['0']:,} | {r['labels']['1']:,} | {100 * r['positive_share']:.1f}% "
              f"| {t['mean']} | {t['p50']:.0f} | {t['p90']:.0f} | {t['p99']:.0f} | {t['max']} | {100 * over:.1f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("BERTFLOW_DATA_DIR") or Path(
        os.environ.get("BERTFLOW_HOME") or Path.home() / ".bertflow") / "bench-data"))
    parser.add_argument("--only", nargs="+", choices=["hate_speech", "imdb_long"], default=["hate_speech", "imdb_long"])
    parser.add_argument("--hate-source", type=Path, default=MIRRORS / "t-davidson+hate-speech-and-offensive-language" / "repo",
                        help="a git dir of the repository (a mirror or a clone's .git) or the downloaded labeled_data.csv")
    parser.add_argument("--imdb-source", type=Path, default=MIRRORS / "dax44+AMLM" / "repo",
                        help="a git dir of github.com/dax44/AMLM, or an extracted aclImdb folder (aclImdb_v1.tar.gz)")
    parser.add_argument("--hate-commit", default="HEAD", help="commit of the hate speech git dir to read")
    parser.add_argument("--imdb-commit", default=IMDB_COMMIT)
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--min-tokens", type=int, default=384, help="imdb_long: keep reviews at least this long")
    parser.add_argument("--imdb-sizes", type=int, nargs=3, default=[2000, 500, 1000], metavar=("TRAIN", "DEV", "TEST"))
    args = parser.parse_args()

    sources_file = args.out / "levers" / "SOURCES.json"
    sources = json.loads(sources_file.read_text()) if sources_file.is_file() else {}
    for name in args.only:
        if name == "hate_speech":
            splits, provenance = build_hate_speech(args.hate_source, args.hate_commit, args.seed)
        else:
            splits, provenance = build_imdb_long(args.imdb_source, args.imdb_commit, args.seed, args.min_tokens,
                                                 dict(zip(SPLITS, args.imdb_sizes)))
        report = write_splits(args.out, name, splits)
        sources[name] = {"source": provenance, "seed": args.seed, "splits": report}
        print_report(name, report)
    sources_file.parent.mkdir(parents=True, exist_ok=True)
    sources_file.write_text(json.dumps(sources, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out / 'levers'} (provenance and checksums: {sources_file})")


if __name__ == "__main__":
    main()
