"""The encoder's hyperparameters, read from a checkpoint's ``config.json``.

Field names are the Hugging Face keys, so ``BertConfig.from_json(path)`` needs no translation table.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

# Activations Hugging Face BERT checkpoints name; "gelu" is the exact erf form.
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


@dataclasses.dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} not supported; expected one of {SUPPORTED_ACTIVATIONS}")
        if self.position_embedding_type != "absolute":
            raise ValueError(
                f"position_embedding_type {self.position_embedding_type!r} not supported; only 'absolute' "
                "(the original BERT) is implemented"
            )

    @classmethod
    def from_dict(cls, values: dict) -> BertConfig:
        """Keep the keys we model; ignore the rest (architectures, transformers_version, ...)."""
        names = {f.name for f in dataclasses.fields(cls)}
        model_type = values.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"config model_type is {model_type!r}; bertflow loads BERT checkpoints ('bert')")
        return cls(**{k: v for k, v in values.items() if k in names})

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        return cls.from_dict(values)

    def to_dict(self) -> dict:
        return {"model_type": "bert", **dataclasses.asdict(self)}
