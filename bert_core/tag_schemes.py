"""Entity tag schemes: how a sequence of per-word tags spells entities, and whether it obeys its scheme.

| scheme | prefixes | an entity is spelled |
|---|---|---|
| IOB1 | I, B, O | I-X...; B-X only on the first word of an entity that directly follows one of type X |
| IOB2 (BIO) | B, I, O | B-X I-X ... |
| IOE1 | I, E, O | ...I-X; E-X only on the last word of an entity directly followed by one of type X |
| IOE2 | I, E, O | ... I-X E-X |
| IOBES (BIOES) | B, I, E, S, O | B-X I-X ... E-X, or S-X for one word |
| BILOU | B, I, L, U, O | B-X I-X ... L-X, or U-X for one word |

``entities(tags, scheme)`` reads spans leniently, the way conlleval reads IOB (a chunk also starts at an
I-X that follows O or another type), so every sequence has a reading. A sequence *obeys* its scheme when
spelling that reading back (``spell``) gives the same tags; ``first_violation`` names the first word
where it does not, and ``repair`` returns the spelled-back tags (the same entities, in the scheme's form).
Plain tags with no scheme (POS, chunks) are not entity tags and are never checked here.
"""

from __future__ import annotations

from seqeval.scheme import BILOU, IOB1, IOB2, IOBES, IOE1, IOE2, Prefix, Tag

SCHEMES = ("IOB1", "IOB2", "IOE1", "IOE2", "IOBES", "BILOU")
ALIASES = {"BIO": "IOB2", "BIOES": "IOBES"}


class _IOE1(IOE1):
    """seqeval 1.2.2's IOE1 never starts an entity at an E- word after O or another type, so it misses a
    one-word entity right before another of its type (``E-PER I-PER`` at a sentence's start): valid IOE1."""

    start_patterns = IOE1.start_patterns | {(Prefix.O, Prefix.E, Tag.ANY), (Prefix.I, Prefix.E, Tag.DIFF)}


# seqeval's token classes, for its strict mode.
SEQEVAL = {"IOB1": IOB1, "IOB2": IOB2, "IOE1": _IOE1, "IOE2": IOE2, "IOBES": IOBES, "BILOU": BILOU}
# Per scheme: (begin, inside, end, single) prefix letters; None where the scheme has no such prefix.
_LETTERS = {
    "IOB1": (None, "I", None, None), "IOB2": ("B", "I", None, None),
    "IOE1": (None, "I", None, None), "IOE2": (None, "I", "E", None),
    "IOBES": ("B", "I", "E", "S"), "BILOU": ("B", "I", "L", "U"),
}
_ALLOWED = {"IOB1": "IBO", "IOB2": "BIO", "IOE1": "IEO", "IOE2": "IEO", "IOBES": "BIESO", "BILOU": "BILUO"}

Span = tuple[str, int, int]  # (type, first word, last word), inclusive


def canonical(scheme: str) -> str:
    """The scheme's canonical name (``BIO`` -> ``IOB2``); ValueError for an unknown one."""
    name = ALIASES.get(scheme.upper(), scheme.upper())
    if name not in SCHEMES:
        raise ValueError(f"unknown tag scheme {scheme!r}; expected one of {[*SCHEMES, *ALIASES]}")
    return name


def split_tag(tag: str, scheme: str) -> tuple[str, str | None]:
    """``"B-PER"`` -> ``("B", "PER")``, ``"O"`` -> ``("O", None)``; ValueError for a tag the scheme cannot hold."""
    scheme = canonical(scheme)
    if tag == "O":
        return "O", None
    prefix, dash, kind = tag.partition("-")
    if not dash or not kind or len(prefix) != 1 or prefix not in _ALLOWED[scheme]:
        allowed = ", ".join(f"{p}-TYPE" for p in _ALLOWED[scheme] if p != "O")
        raise ValueError(f"tag {tag!r} is not O, {allowed} (tag_scheme {scheme})")
    return prefix, kind


def entities(tags: list[str], scheme: str) -> list[Span]:
    """The spans a sequence spells, read leniently by conlleval's chunk rules (BILOU's L and U read as E and
    S): a span starts at B or S, at I or E after O, E or S, and wherever the type changes; it ends before
    B, S or O, after E or S, and wherever the type changes."""
    parts = [split_tag(tag, scheme) for tag in tags]
    spans: list[Span] = []
    start, previous, previous_type = None, "O", None
    for i, (prefix, kind) in enumerate(parts):
        prefix = {"L": "E", "U": "S"}.get(prefix, prefix)
        ends = previous in "ES" or (previous in "BI" and prefix in "BSO") \
            or (previous != "O" and previous_type != kind)
        if ends and start is not None:
            spans.append((previous_type, start, i - 1))
            start = None
        begins = prefix in "BS" or (previous in "ESO" and prefix in "IE") or (prefix != "O" and previous_type != kind)
        if begins and prefix != "O":
            start = i
        previous, previous_type = prefix, kind
    if start is not None:
        spans.append((previous_type, start, len(tags) - 1))
    return spans


def spell(spans: list[Span], length: int, scheme: str) -> list[str]:
    """Tags for ``length`` words holding ``spans`` (sorted, not overlapping), in the scheme's own form."""
    scheme = canonical(scheme)
    begin, inside, end, single = _LETTERS[scheme]
    tags = ["O"] * length
    for n, (kind, first, last) in enumerate(spans):
        for i in range(first, last + 1):
            tags[i] = f"{inside}-{kind}"
        if single and first == last:
            tags[first] = f"{single}-{kind}"
            continue
        if begin:
            tags[first] = f"{begin}-{kind}"
        if end:
            tags[last] = f"{end}-{kind}"
        # IOB1 marks B- only where an entity touches the previous one of its type; IOE1 marks E- where it
        # touches the next one: otherwise the two would read as one entity.
        previous = spans[n - 1] if n else None
        following = spans[n + 1] if n + 1 < len(spans) else None
        if scheme == "IOB1" and previous and previous[2] == first - 1 and previous[0] == kind:
            tags[first] = f"B-{kind}"
        if scheme == "IOE1" and following and following[1] == last + 1 and following[0] == kind:
            tags[last] = f"E-{kind}"
    return tags


def repair(tags: list[str], scheme: str) -> list[str]:
    """The same entities, spelled the way the scheme spells them."""
    return spell(entities(tags, scheme), len(tags), scheme)


def first_violation(tags: list[str], scheme: str) -> tuple[int, str] | None:
    """(word index, what is wrong) at the first word that breaks the scheme, or None if the sequence obeys it."""
    for i, tag in enumerate(tags):
        try:
            split_tag(tag, scheme)
        except ValueError as err:
            return i, str(err)
    fixed = repair(tags, scheme)
    for i, (tag, want) in enumerate(zip(tags, fixed, strict=True)):
        if tag != want:
            after = f"after {tags[i - 1]!r}" if i else "at the start of the sentence"
            return i, f"{tag!r} {after} breaks tag_scheme {canonical(scheme)} (it spells this entity as {want!r})"
    return None
