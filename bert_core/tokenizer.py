"""WordPiece tokenization for BERT: a thin wrapper over the Hugging Face ``tokenizers`` library.

Loaded from a checkpoint's ``tokenizer.json``, or built from ``vocab.txt`` with the checkpoint's
lowercasing. Gives the ids BERT wants (``[CLS] a [SEP] b [SEP]`` with segment ids), longest-first
truncation, character offsets into the original text, word ids for pre-split words, the
overlapping question/passage windows extractive QA needs, and the windows (or head and tail) of long texts.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclasses.dataclass
class Encoding:
    """One encoded sequence, unpadded. All lists have one entry per token."""

    input_ids: list[int]
    token_type_ids: list[int]
    offsets: list[tuple[int, int]]  # character span in its own text (word, for pre-split input); (0, 0) for specials
    word_ids: list[int | None]  # index of the word a token came from; None for specials
    sequence_ids: list[int | None]  # 0 = first text, 1 = second text, None = special token
    overflow: int = 0  # tokens that truncation cut off

    def __len__(self) -> int:
        return len(self.input_ids)


def _from_rust(enc, full_length: int | None = None) -> Encoding:
    return Encoding(
        input_ids=list(enc.ids),
        token_type_ids=list(enc.type_ids),
        offsets=[tuple(o) for o in enc.offsets],
        word_ids=list(enc.word_ids),
        sequence_ids=list(enc.sequence_ids),
        overflow=0 if full_length is None else max(0, full_length - len(enc.ids)),
    )


def _take(enc: Encoding, positions) -> Encoding:
    """The tokens of ``enc`` at ``positions``, in that order."""
    keep = list(positions)
    return Encoding(*([values[k] for k in keep] for values in
                      (enc.input_ids, enc.token_type_ids, enc.offsets, enc.word_ids, enc.sequence_ids)))


class BertTokenizer:
    """Single and pair encoding with segment ids, truncation, offsets and word ids."""

    def __init__(self, tokenizer: Tokenizer):
        # Our own copy, so changing truncation per call never touches the caller's object; padding is
        # the collate function's job (dynamic padding), never the tokenizer's.
        self._tok = copy.deepcopy(tokenizer)
        self._tok.no_padding()
        self._tok.no_truncation()
        vocab = self._tok.get_vocab()
        missing = [t for t in SPECIAL_TOKENS[:4] if t not in vocab]
        if missing:
            raise ValueError(f"tokenizer vocabulary lacks BERT special tokens {missing}")
        self.pad_id, self.unk_id, self.cls_id, self.sep_id = (vocab[t] for t in SPECIAL_TOKENS[:4])

    # ---- loading and saving -------------------------------------------------------------------
    @classmethod
    def from_folder(cls, folder: str | Path) -> BertTokenizer:
        """``tokenizer.json`` if present, else ``vocab.txt`` (+ ``tokenizer_config.json`` for lowercasing)."""
        folder = Path(folder)
        if (folder / "tokenizer.json").is_file():
            return cls(Tokenizer.from_file(str(folder / "tokenizer.json")))
        if (folder / "vocab.txt").is_file():
            lowercase = True  # the original uncased BERT default
            config_path = folder / "tokenizer_config.json"
            if config_path.is_file():
                lowercase = bool(json.loads(config_path.read_text(encoding="utf-8")).get("do_lower_case", True))
            return cls.from_vocab(folder / "vocab.txt", lowercase=lowercase)
        raise FileNotFoundError(f"{folder}: no tokenizer.json or vocab.txt; a BERT checkpoint folder needs one of them")

    @classmethod
    def from_vocab(cls, vocab_path: str | Path, lowercase: bool = True) -> BertTokenizer:
        """Build BERT's WordPiece pipeline from a ``vocab.txt`` (one token per line, id = line number)."""
        lines = Path(vocab_path).read_text(encoding="utf-8").splitlines()
        vocab = {token: i for i, token in enumerate(lines)}
        tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        # strip_accents=None follows lowercase, as BERT's BasicTokenizer does.
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.post_processor = processors.BertProcessing(("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"]))
        tok.decoder = decoders.WordPiece(prefix="##")
        return cls(tok)

    def save(self, folder: str | Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        self._tok.save(str(Path(folder) / "tokenizer.json"))

    def fingerprint(self) -> str:
        """sha256 of the serialized ``tokenizer.json``: equal fingerprints tokenize identically."""
        # Truncation and padding are always off between calls, so they never change the string.
        return hashlib.sha256(self._tok.to_str().encode("utf-8")).hexdigest()

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    # ---- encoding ------------------------------------------------------------------------------
    def encode(
        self,
        text: str | list[str],
        pair: str | list[str] | None = None,
        max_length: int | None = 512,
        is_pretokenized: bool = False,
    ) -> Encoding:
        """``[CLS] text [SEP]`` or ``[CLS] text [SEP] pair [SEP]``, longest-first truncated to max_length."""
        return self.encode_batch([text], None if pair is None else [pair], max_length, is_pretokenized)[0]

    def encode_batch(
        self,
        texts: list[str] | list[list[str]],
        pairs: list[str] | list[list[str]] | None = None,
        max_length: int | None = 512,
        is_pretokenized: bool = False,
    ) -> list[Encoding]:
        """Encode many texts (or pairs) at once; the Rust side runs them in parallel."""
        inputs = list(texts) if pairs is None else list(zip(texts, pairs, strict=True))
        self._tok.no_truncation()
        full = self._tok.encode_batch(inputs, is_pretokenized=is_pretokenized)
        if max_length is None or all(len(e.ids) <= max_length for e in full):
            return [_from_rust(e) for e in full]
        self._tok.enable_truncation(max_length, strategy="longest_first")
        try:
            cut = self._tok.encode_batch(inputs, is_pretokenized=is_pretokenized)
        finally:
            self._tok.no_truncation()
        return [_from_rust(c, len(f.ids)) for c, f in zip(cut, full, strict=True)]

    def encode_windows(self, question: str, context: str, max_length: int, stride: int) -> list[Encoding]:
        """Question + passage in overlapping windows: each window holds the whole question and a slice of
        the passage; consecutive slices share ``stride`` tokens. Offsets index into ``context``."""
        self._tok.enable_truncation(max_length, stride=stride, strategy="only_second")
        try:
            enc = self._tok.encode(question, context)
        finally:
            self._tok.no_truncation()
        return [_from_rust(e) for e in [enc, *enc.overflowing]]

    def encode_long_batch(self, texts: list[str], pairs: list[str] | None, max_length: int, stride: int = 0,
                          max_windows: int | None = None, head_share: float | None = None) -> list[list[Encoding]]:
        """Texts (or pairs) read whole where ``encode_batch`` would cut them: each row's encodings, in order.

        A row that fits in ``max_length`` is one encoding, as ``encode_batch`` gives it. Otherwise its longer text
        is read in windows of the room the rest leaves, consecutive windows sharing ``stride`` tokens (the
        library's overflowing encodings), the first ``max_windows`` of them (None: all); or, given ``head_share``,
        in one encoding of its first ``head_share`` of the room and its last tokens. The shorter text of a pair is
        in every window, cut to (room - stride) // 2 tokens unless the longer text leaves it more: each window
        keeps more than ``stride`` tokens of the longer text when ``stride`` < room (``max_length`` less [CLS] and a
        [SEP] per text). Each text is tokenized once (a million characters take seconds)."""
        firsts = self._tok.encode_batch(list(texts), add_special_tokens=False)
        seconds = self._tok.encode_batch(list(pairs), add_special_tokens=False) if pairs is not None else None
        return [self._read_whole(first, None if seconds is None else seconds[i], max_length, stride, max_windows,
                                 head_share) for i, first in enumerate(firsts)]

    def _read_whole(self, first, second, max_length: int, stride: int, max_windows: int | None,
                    head_share: float | None) -> list[Encoding]:
        """One row of ``encode_long_batch``, from its texts' encodings without special tokens (the library's)."""
        room = max_length - (2 if second is None else 3)
        if len(first.ids) + (0 if second is None else len(second.ids)) <= room:
            return [self._join(_from_rust(first), None if second is None else _from_rust(second))]
        first_is_long = second is None or len(first.ids) >= len(second.ids)
        long, short = (first, second) if first_is_long else (second, first)
        n = len(long.ids)
        kept = None if short is None else _take(_from_rust(short), range(min(len(short.ids), max((room - stride) // 2,
                                                                                             room - n))))
        room -= 0 if kept is None else len(kept)
        if head_share is None:
            long.truncate(room, stride=stride)
            pieces = [_from_rust(w) for w in [long, *long.overflowing][:max_windows]]
        else:
            head = round(room * head_share)
            pieces = [_take(_from_rust(long), [*range(head), *range(n - (room - head), n)])]
        return [self._join(p, kept) if first_is_long else self._join(kept, p) for p in pieces]

    def _join(self, first: Encoding, second: Encoding | None) -> Encoding:
        """``[CLS] first [SEP]`` or ``[CLS] first [SEP] second [SEP]`` of encodings without special tokens, as
        BERT's post-processor joins them (segment 0, then 1)."""
        joined = Encoding([self.cls_id], [0], [(0, 0)], [None], [None])
        for segment, part in enumerate(p for p in (first, second) if p is not None):
            joined.input_ids += [*part.input_ids, self.sep_id]
            joined.token_type_ids += [segment] * (len(part) + 1)
            joined.offsets += [*part.offsets, (0, 0)]
            joined.word_ids += [*part.word_ids, None]
            joined.sequence_ids += [segment] * len(part) + [None]
        return joined

    def tokenize(self, text: str) -> list[str]:
        """WordPiece tokens of a text, without special tokens (for inspection and tests)."""
        return self._tok.encode(text, add_special_tokens=False).tokens

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)
