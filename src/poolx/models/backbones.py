"""Backbone adapters: what poolx needs to know about an architecture family (optimum's `OnnxConfig` idea), in one
table instead of checks scattered over the code base.

An adapter says which inputs the graph takes (input_ids, attention_mask, and token_type_ids only where the
backbone uses them), how long a sequence its position embeddings allow (RoBERTa-style models reserve
padding_idx + 1 positions), which side the tokenizer pads (right, for every encoder poolx exports: the poolers'
first token is position 0), whether the loaded model has a usable pooler head, which `model_type` onnxruntime's
transformer optimizer is given, and which fused ops that optimizer produces on poolx's traced graph.

`adapter_for(config)` looks the family up by `config.model_type`; a model type not in the table gets GENERIC,
which decides from the loaded model itself (its forward signature, its position embedding's padding_idx, its
`pooler` module) and promises no fusion counts. Torch-free until a method is handed a model.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Mapping

INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS = "input_ids", "attention_mask", "token_type_ids"

# Model types outside the families whose position ids count from pad_token_id + 1, for GENERIC when it has only
# the config (with the model it reads the position embedding's padding_idx instead).
ROBERTA_STYLE = ("longformer", "roberta-prelayernorm", "xlm-roberta-xl", "data2vec-text", "xmod")

# Fusions are written as op -> (per layer, constant): count = per_layer * num_layers + constant.
Fusions = Mapping[str, tuple[int, int]]
_BERT_FUSIONS: Fusions = {
    "EmbedLayerNormalization": (0, 1), "Attention": (1, 0), "BiasGelu": (1, 0), "SkipLayerNormalization": (2, 0),
}


@dataclass(frozen=True)
class BackboneAdapter:
    """One architecture family.

    - `family`, `model_types`: the family's name and the transformers `config.model_type`s it covers;
    - `token_type_ids`: whether the family's forward takes token_type_ids (None: read the model's forward
      signature); they are a graph input only when the config also has more than one token type;
    - `position_padding_idx`: for RoBERTa-style position ids (counted from padding_idx + 1), the padding index:
      "pad_token_id" (the config's), an int (MPNet's is fixed at 1), or None (positions start at 0; GENERIC:
      read the model's position embedding);
    - `pooler_head`: whether the family's base model has a pooler head at all (None: look at the model);
    - `optimizer_model_type`: the `model_type` for onnxruntime.transformers.optimizer (this onnxruntime's
      MODEL_TYPES has no roberta/deberta/distilbert/mpnet entry; "bert" is the encoder optimizer for all);
    - `fusions`: the fused ops `poolx.exporter.fuse.fuse` produces on poolx's fp32 TorchScript graph of this
      family (with attention fusion on), as op -> (per layer, constant); None: not pinned (GENERIC);
    - `causal`: a decoder family, each token attending to earlier ones only (first-token poolers are refused).
    """

    family: str
    model_types: tuple[str, ...] = ()
    token_type_ids: bool | None = None
    position_padding_idx: int | str | None = None
    pooler_head: bool | None = None
    padding_side: str = "right"
    optimizer_model_type: str = "bert"
    fusions: Fusions | None = field(default=None, hash=False)
    causal: bool = False
    refuse: str | None = None
    refuse_if: tuple[str, Any] | None = None

    @property
    def is_generic(self) -> bool:
        return not self.model_types

    def is_causal(self, config: Any) -> bool:
        """Whether the backbone is a decoder: its first position sees only itself, its last sees the whole text."""
        return self.causal or bool(getattr(config, "is_decoder", False))

    def refusal(self, config: Any) -> str | None:
        """Why poolx does not export this backbone (None: it does)."""
        if self.refuse is None:
            return None
        if self.refuse_if is not None and getattr(config, self.refuse_if[0], None) != self.refuse_if[1]:
            return None
        return self.refuse

    # ---- inputs ------------------------------------------------------------------------------------------------
    def uses_token_type_ids(self, config: Any, model: Any = None) -> bool:
        """Whether token_type_ids is a graph input: the backbone takes it and has more than one token type
        (RoBERTa has one, DistilBERT and MPNet take none, DeBERTa usually has none)."""
        takes = self.token_type_ids
        if takes is None:
            takes = model is not None and TOKEN_TYPE_IDS in inspect.signature(model.forward).parameters
        return bool(takes) and int(getattr(config, "type_vocab_size", 0) or 0) > 1

    def input_names(self, config: Any, model: Any = None) -> tuple[str, ...]:
        """The graph's inputs, in order. GENERIC needs the model to know about token_type_ids."""
        extra = (TOKEN_TYPE_IDS,) if self.uses_token_type_ids(config, model) else ()
        return (INPUT_IDS, ATTENTION_MASK, *extra)

    # ---- positions ---------------------------------------------------------------------------------------------
    def position_offset(self, config: Any, model: Any = None) -> int:
        """Position embeddings the model never uses for tokens: padding_idx + 1 for RoBERTa-style position ids."""
        idx = self.position_padding_idx
        if idx == "pad_token_id":
            return int(getattr(config, "pad_token_id", 1) or 0) + 1
        if isinstance(idx, int):
            return idx + 1
        if self.is_generic and model is not None:
            embedding = getattr(getattr(model, "embeddings", None), "position_embeddings", None)
            padding_idx = getattr(embedding, "padding_idx", None)
            if padding_idx is not None:  # RoBERTa-style: positions counted from padding_idx + 1
                return int(padding_idx) + 1
            return 0
        if self.is_generic and getattr(config, "model_type", "") in ROBERTA_STYLE:  # no model to look at
            return int(getattr(config, "pad_token_id", 1) or 0) + 1
        return 0

    def position_limit(self, config: Any, model: Any = None) -> int:
        """The longest sequence the backbone accepts (512 when the config does not say)."""
        n = int(getattr(config, "max_position_embeddings", 0) or 0)
        if n <= 0:
            return 512
        return n - self.position_offset(config, model)

    # ---- pooler head -------------------------------------------------------------------------------------------
    def has_pooler_head(self, model: Any, missing_keys: Any = ()) -> bool:
        """Whether `pooler_output` is the checkpoint's trained pooler head: the model has one and its weights were
        not missing from the checkpoint (`missing_keys`, from loading; transformers would have initialised them
        at random)."""
        if self.pooler_head is False or getattr(model, "pooler", None) is None:
            return False
        return not any(str(k).startswith("pooler.") for k in missing_keys or ())

    # ---- onnxruntime's transformer optimizer -------------------------------------------------------------------
    def expected_fusions(self, num_layers: int) -> dict[str, int] | None:
        """The fused op counts `fuse` gives on this family's fp32 graph with `num_layers` layers (None: unknown)."""
        if self.fusions is None:
            return None
        return {op: per * num_layers + const for op, (per, const) in self.fusions.items()}


BERT = BackboneAdapter("bert", ("bert",), token_type_ids=True, pooler_head=True, fusions=_BERT_FUSIONS)
# RoBERTa computes position ids from input_ids, so the optimizer leaves its embedding a LayerNormalization.
ROBERTA = BackboneAdapter(
    "roberta", ("roberta", "xlm-roberta", "camembert"), token_type_ids=True, position_padding_idx="pad_token_id",
    pooler_head=True,
    fusions={"LayerNormalization": (0, 1), "Attention": (1, 0), "BiasGelu": (1, 0), "SkipLayerNormalization": (2, 0)},
)
DISTILBERT = BackboneAdapter("distilbert", ("distilbert",), token_type_ids=False, pooler_head=False, fusions=_BERT_FUSIONS)
# DeBERTa's disentangled attention is not fused; its LayerNorms and GELUs are.
DEBERTA = BackboneAdapter(
    "deberta", ("deberta-v2", "deberta"), token_type_ids=True, pooler_head=False,
    fusions={"LayerNormalization": (0, 1), "BiasGelu": (1, 0), "SkipLayerNormalization": (2, 0)},
)
# MPNet's relative position bias keeps its attention unfused, and its embedding LayerNorm becomes one more
# SkipLayerNormalization (2L + 1). Its position ids count from a fixed padding_idx 1, whatever pad_token_id says.
MPNET = BackboneAdapter(
    "mpnet", ("mpnet",), token_type_ids=False, position_padding_idx=1, pooler_head=True,
    fusions={"BiasGelu": (1, 0), "SkipLayerNormalization": (2, 1)},
)
ELECTRA = BackboneAdapter("electra", ("electra",), token_type_ids=True, pooler_head=False, fusions=_BERT_FUSIONS)
LONGFORMER = BackboneAdapter("longformer", ("longformer",), refuse="Longformer is not exported: x")
BIGBIRD = BackboneAdapter("bigbird", ("big_bird",), token_type_ids=True, pooler_head=True, refuse="bigbird x", refuse_if=("attention_type", "block_sparse"))
QWEN2 = BackboneAdapter("qwen2", ("qwen2",), token_type_ids=False, pooler_head=False, causal=True)
QWEN3 = BackboneAdapter("qwen3", ("qwen3",), token_type_ids=False, pooler_head=False, causal=True)
LLAMA = BackboneAdapter("llama", ("llama",), token_type_ids=False, pooler_head=False, causal=True)
MISTRAL = BackboneAdapter("mistral", ("mistral",), token_type_ids=False, pooler_head=False, causal=True)
GEMMA = BackboneAdapter("gemma", ("gemma",), token_type_ids=False, pooler_head=False, causal=True)
GENERIC = BackboneAdapter("generic")

ADAPTERS: tuple[BackboneAdapter, ...] = (BERT, ROBERTA, DISTILBERT, DEBERTA, MPNET, ELECTRA, LONGFORMER, BIGBIRD, QWEN2, QWEN3, LLAMA, MISTRAL, GEMMA)
_BY_MODEL_TYPE = {model_type: adapter for adapter in ADAPTERS for model_type in adapter.model_types}


def adapter_for(config: Any) -> BackboneAdapter:
    """The adapter of a transformers config (or a model_type string); GENERIC for a model type not in the table."""
    model_type = config if isinstance(config, str) else getattr(config, "model_type", "")
    return _BY_MODEL_TYPE.get(str(model_type), GENERIC)
