"""Backbone adapters: what poolx needs to know about an architecture family (optimum's `OnnxConfig` idea), in one
table instead of checks scattered over the code base.

An adapter says which inputs the graph takes (input_ids, attention_mask, and token_type_ids only where the
backbone uses them), how long a sequence its position embeddings allow (RoBERTa-style models reserve
padding_idx + 1 positions), which side the tokenizer pads (right, for every family poolx exports: the encoders'
first token is position 0, and decoders count position ids from the first position whatever the mask says, so
left padding would shift a text's positions by its padding), whether the loaded model has a usable pooler head,
which `model_type` onnxruntime's transformer optimizer is given, which fused ops that optimizer produces on
poolx's traced graph, whether the backbone is causal (a decoder: first-token poolers are refused), and why poolx
refuses a family whose traced graph would not compute what the model computes.

`adapter_for(config)` looks the family up by `config.model_type`; a model type not in the table gets GENERIC,
which decides from the loaded model itself (its forward signature, its position embedding's padding_idx, its
`pooler` module) and from the config (a decoder by `is_decoder`, its architectures or its model type), and
promises no fusion counts. Torch-free until a method is handed a model.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS = "input_ids", "attention_mask", "token_type_ids"

# Model types outside the families whose position ids count from pad_token_id + 1, for GENERIC when it has only
# the config (with the model it reads the position embedding's padding_idx instead).
ROBERTA_STYLE = ("roberta-prelayernorm", "xlm-roberta-xl", "data2vec-text", "xmod")

# Decoder model types outside the decoder families below, for GENERIC's `is_causal`: a model type here, a config
# with is_decoder, or an architecture named ...ForCausalLM / ...LMHeadModel is causal, unless the config turns on
# bidirectional attention (EmbeddingGemma's use_bidirectional_attention).
DECODER_MODEL_TYPES = (
    "gemma2", "gemma3_text", "qwen2_moe", "qwen3_moe", "mixtral", "phi", "phi3", "gpt2", "gpt_neox", "gptj", "opt",
    "bloom", "falcon", "olmo", "olmo2", "starcoder2", "stablelm", "granite", "cohere",
)
CAUSAL_ARCHITECTURES = ("ForCausalLM", "LMHeadModel")

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
      `fusions_extra`: the ops a config's options add to them (DeBERTa-v3's normed relative embeddings);
    - `exporter`: torch's exporter poolx uses for the family when none is asked for (recorded in the manifest).
      "torchscript" for most families: on the CPU (2 threads, benchmarks/exporters.py speed) the dynamo
      exporter's fused graph ran as fast as the TorchScript one on MiniLM (Attention fused by both) and on a
      MiniLM-shaped Qwen3 (where only onnxscript fuses MultiHeadAttention) within the machine's noise, while it
      exports 2-4x slower. "dynamo" for ModernBERT (MiniLM's shape, no other load: the dynamo fused graph 843 ms
      at 32x128 against 985 for the TorchScript fused one, 1.17x; 1x16 equal, 5.2 ms; 327 nodes instead of 797);
      `exporter="dynamo"|"torchscript"` overrides it per export;
    - `dynamo_fusions`: the fused ops `fuse` produces on the family's dynamo graph (onnxscript's fusions), as
      `fusions` (None: not pinned);
      `dynamo_unfused`: why the dynamo graph's attention is not fused, where it is not; `dynamo_onnxruntime`: run
      onnxruntime's optimizer (attention off) after onnxscript's fusions, where it fuses more (tanh-GELU as
      FastGelu, which onnxscript leaves) and does not crash (it does on ModernBERT's graph);
    - `causal`: a decoder family, each token attending to earlier ones only (first-token poolers are refused);
    - `refuse`, `refuse_if`: why poolx does not export the family (None: it does), and the config attribute and
      value the refusal is limited to (None: always).
    """

    family: str
    model_types: tuple[str, ...] = ()
    token_type_ids: bool | None = None
    position_padding_idx: int | str | None = None
    pooler_head: bool | None = None
    padding_side: str = "right"
    optimizer_model_type: str = "bert"
    fusions: Fusions | None = field(default=None, hash=False)
    fusions_extra: Callable[[Any], Mapping[str, int]] | None = field(default=None, hash=False, compare=False)
    exporter: str = "torchscript"
    dynamo_fusions: Fusions | None = field(default=None, hash=False)
    dynamo_unfused: str | None = None
    dynamo_onnxruntime: bool = False
    causal: bool = False
    refuse: str | None = None
    refuse_if: tuple[str, Any] | None = None

    @property
    def is_generic(self) -> bool:
        return not self.model_types

    def is_causal(self, config: Any) -> bool:
        """Whether the backbone is a decoder: its first position sees only itself, its last sees the whole text.
        A decoder family, or (any family) a config with is_decoder (BERT or RoBERTa trained as a decoder), an
        architecture named ...ForCausalLM / ...LMHeadModel, or a model type of DECODER_MODEL_TYPES; not when the
        config turns bidirectional attention on (EmbeddingGemma)."""
        if getattr(config, "use_bidirectional_attention", False) is True:
            return False
        if self.causal or getattr(config, "is_decoder", False) is True:
            return True
        if str(getattr(config, "model_type", "")) in DECODER_MODEL_TYPES:
            return True
        return any(str(a).endswith(CAUSAL_ARCHITECTURES) for a in getattr(config, "architectures", None) or ())

    def refusal(self, config: Any) -> str | None:
        """Why poolx does not export this backbone (None: it does), as one line for the user."""
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
    def exporter_for(self, opset: int | None = None) -> str:
        """The exporter used when none is asked for: the family's, unless `opset` is one only the TorchScript
        exporter writes (below 18)."""
        if self.exporter == "dynamo" and opset is not None and opset < 18:
            return "torchscript"
        return self.exporter

    def expected_fusions(
        self, num_layers: int, config: Any = None, exporter: str | None = None,
    ) -> dict[str, int] | None:
        """The fused op counts `fuse` gives on this family's fp32 graph from `exporter` (None: the family's
        default) with `num_layers` layers, and with the modules `config`'s options add, when it is given (None:
        unknown)."""
        dynamo = (exporter or self.exporter) == "dynamo"
        fusions = self.dynamo_fusions if dynamo else self.fusions
        if fusions is None:
            return None
        counts = {op: per * num_layers + const for op, (per, const) in fusions.items()}
        if config is not None and self.fusions_extra is not None:
            for op, n in self.fusions_extra(config).items():
                counts[op] = counts.get(op, 0) + n
        return counts


# onnxscript's fusions on the dynamo graph of BERT-style encoders: Attention and BiasGelu as onnxruntime's optimizer
# fuses them, but no EmbedLayerNormalization (the embedding norm stays a LayerNormalization).
_BERT_DYNAMO: Fusions = {
    "LayerNormalization": (0, 1), "Attention": (1, 0), "BiasGelu": (1, 0), "SkipLayerNormalization": (2, 0),
}
BERT = BackboneAdapter(
    "bert", ("bert",), token_type_ids=True, pooler_head=True, fusions=_BERT_FUSIONS, dynamo_fusions=_BERT_DYNAMO,
)
# RoBERTa computes position ids from input_ids, so the optimizer leaves its embedding a LayerNormalization.
# onnxscript fuses RoBERTa's embedding norm, after the position embedding's add, as one more SkipLayerNormalization.
ROBERTA = BackboneAdapter(
    "roberta", ("roberta", "xlm-roberta", "camembert"), token_type_ids=True, position_padding_idx="pad_token_id",
    pooler_head=True,
    fusions={"LayerNormalization": (0, 1), "Attention": (1, 0), "BiasGelu": (1, 0), "SkipLayerNormalization": (2, 0)},
    dynamo_fusions={"Attention": (1, 0), "BiasGelu": (1, 0), "SkipLayerNormalization": (2, 1)},
)
DISTILBERT = BackboneAdapter(
    "distilbert", ("distilbert",), token_type_ids=False, pooler_head=False, fusions=_BERT_FUSIONS,
    dynamo_fusions=_BERT_DYNAMO,
)


def _deberta_relative_norm(config: Any) -> dict[str, int]:
    """DeBERTa-v3 (norm_rel_ebd "layer_norm", with relative attention) LayerNorms its relative position
    embeddings: one more LayerNormalization."""
    normed = "layer_norm" in str(getattr(config, "norm_rel_ebd", "none") or "none").lower()
    return {"LayerNormalization": 1} if normed and getattr(config, "relative_attention", False) else {}


# DeBERTa's disentangled attention is not fused; its LayerNorms and GELUs are.
DEBERTA = BackboneAdapter(
    "deberta", ("deberta-v2", "deberta"), token_type_ids=True, pooler_head=False,
    fusions={"LayerNormalization": (0, 1), "BiasGelu": (1, 0), "SkipLayerNormalization": (2, 0)},
    fusions_extra=_deberta_relative_norm,
    dynamo_fusions={"LayerNormalization": (0, 1), "BiasGelu": (1, 0), "SkipLayerNormalization": (2, 0)},
    dynamo_unfused=(
        "disentangled attention adds content-to-position and position-to-content scores (gathered relative "
        "positions) to QK^T, which matches none of onnxscript's attention patterns"
    ),
)
# MPNet's relative position bias keeps its attention unfused, and its embedding LayerNorm becomes one more
# SkipLayerNormalization (2L + 1). Its position ids count from a fixed padding_idx 1, whatever pad_token_id says.
MPNET = BackboneAdapter(
    "mpnet", ("mpnet",), token_type_ids=False, position_padding_idx=1, pooler_head=True,
    fusions={"BiasGelu": (1, 0), "SkipLayerNormalization": (2, 1)},
    dynamo_fusions={"BiasGelu": (1, 0), "SkipLayerNormalization": (2, 1)},
    dynamo_unfused=(
        "its relative position bias (bucketed, computed from the sequence) is added to the scores, which matches "
        "none of onnxscript's attention patterns"
    ),
)
ELECTRA = BackboneAdapter(
    "electra", ("electra",), token_type_ids=True, pooler_head=False, fusions=_BERT_FUSIONS, dynamo_fusions=_BERT_DYNAMO,
)
# Rotary (RoPE) encoders: onnxruntime's BERT attention fusion does not match rotary attention, so their attention
# stays unfused; their LayerNorms (or RMSNorms) and GELUs fuse. ModernBERT's first layer has no attention norm, and
# its embedding norm (no add before it) stays a LayerNormalization. NomicBERT, GTE and RoFormer norm after each
# residual add (2L SkipLayerNormalization), and their embedding norm, after the token-type embedding's add, is one
# more (2L + 1); NomicBERT's MLP is SwiGLU, with no GELU to fuse. EuroBERT is a Llama-style bidirectional encoder:
# RMSNorm, so Simplified ops (see poolx.exporter.fuse), and no token_type_ids.
# On their dynamo graphs onnxscript fuses the rotary attention as MultiHeadAttention (one per layer; the rotation
# itself stays ops before it); on ModernBERT it fuses no residual add into its norms (2L + 1 LayerNormalization),
# and onnxruntime's optimizer crashes on that graph (IndexError in its SkipLayerNormalization fusion).
MODERNBERT = BackboneAdapter(
    "modernbert", ("modernbert",), token_type_ids=False, pooler_head=False, exporter="dynamo",
    fusions={"LayerNormalization": (0, 1), "Gelu": (1, 0), "SkipLayerNormalization": (2, 0)},
    dynamo_fusions={"LayerNormalization": (2, 1), "Gelu": (1, 0), "MultiHeadAttention": (1, 0)},
)
NOMIC_BERT = BackboneAdapter(
    "nomic_bert", ("nomic_bert",), token_type_ids=True, pooler_head=False, fusions={"SkipLayerNormalization": (2, 1)},
    dynamo_fusions={"MultiHeadAttention": (1, 0), "SkipLayerNormalization": (2, 1)},
)
GTE = BackboneAdapter(
    "gte", ("gte",), token_type_ids=True, pooler_head=False,
    fusions={"Gelu": (1, 0), "SkipLayerNormalization": (2, 1)},
    dynamo_fusions={"Gelu": (1, 0), "MultiHeadAttention": (1, 0), "SkipLayerNormalization": (2, 1)},
)
ROFORMER = BackboneAdapter(
    "roformer", ("roformer",), token_type_ids=True, pooler_head=False,
    fusions={"BiasGelu": (1, 0), "SkipLayerNormalization": (2, 1)},
    dynamo_fusions={"BiasGelu": (1, 0), "MultiHeadAttention": (1, 0), "SkipLayerNormalization": (2, 1)},
)
_RMS_FUSIONS: Fusions = {"SimplifiedLayerNormalization": (0, 1), "SkipSimplifiedLayerNormalization": (2, 0)}
_RMS_DYNAMO: Fusions = {"MultiHeadAttention": (1, 0), **_RMS_FUSIONS}
EUROBERT = BackboneAdapter(
    "eurobert", ("eurobert",), token_type_ids=False, pooler_head=False, fusions=_RMS_FUSIONS,
    dynamo_fusions=_RMS_DYNAMO,
)
# BigBird with full attention is BERT with gelu_new (FastGelu). Its block-sparse attention is not a graph: it
# draws random key blocks at run time, and for a sequence too short for its blocks it switches the model to full
# attention in place, which is what the short tracing example does, so the graph would compute full attention.
BIGBIRD = BackboneAdapter(
    "bigbird", ("big_bird",), token_type_ids=True, pooler_head=True,
    fusions={
        "EmbedLayerNormalization": (0, 1), "Attention": (1, 0), "FastGelu": (1, 0), "SkipLayerNormalization": (2, 0),
    },
    # onnxscript does not fuse gelu_new (tanh); onnxruntime's optimizer, run after it, does
    dynamo_fusions={
        "LayerNormalization": (0, 1), "Attention": (1, 0), "FastGelu": (1, 0), "SkipLayerNormalization": (2, 0),
    },
    dynamo_onnxruntime=True,
    refuse=(
        "BigBird with attention_type 'block_sparse' is not exported: its attention picks random key blocks at run "
        "time and falls back to full attention, in place, for sequences shorter than its blocks (the tracing "
        "example is one), so the graph would not compute block-sparse attention; set \"attention_type\": "
        "\"original_full\" in config.json to export it with full attention"
    ),
    refuse_if=("attention_type", "block_sparse"),
)
# Longformer's sliding-window attention pads the sequence to a multiple of attention_window and chunks it with
# Python arithmetic on the sequence length, which the TorchScript trace turns into the example's constants.
LONGFORMER = BackboneAdapter(
    "longformer", ("longformer",), token_type_ids=True, position_padding_idx="pad_token_id", pooler_head=True,
    refuse=(
        "Longformer is not exported: its sliding-window attention pads and chunks the sequence with Python "
        "arithmetic on its length, which the trace bakes in as the example's shape, so the graph fails or is "
        "wrong at any other length"
    ),
)
# Decoders: causal, no token_type_ids, no pooler head, padded right (position ids count from the first position,
# whatever the mask says). Every family norms with RMSNorm: a SimplifiedLayerNormalization for the first layer's
# input norm, a SkipSimplifiedLayerNormalization after each residual add (2L, the final norm included); Qwen3 adds
# a query and a key RMSNorm per layer, Gemma's gated MLP is tanh-GELU (FastGelu). No onnxruntime optimizer fuses
# their rotary attention on a TorchScript graph ("bert", "gpt2" and "qwen3" give the same fusions), so they get
# the same encoder optimizer as every family.
# On their dynamo graphs onnxscript fuses the rotary, grouped-query causal attention as MultiHeadAttention.
QWEN2 = BackboneAdapter(
    "qwen2", ("qwen2",), token_type_ids=False, pooler_head=False, causal=True, fusions=_RMS_FUSIONS,
    dynamo_fusions=_RMS_DYNAMO,
)
QWEN3 = BackboneAdapter(
    "qwen3", ("qwen3",), token_type_ids=False, pooler_head=False, causal=True,
    fusions={"SimplifiedLayerNormalization": (2, 1), "SkipSimplifiedLayerNormalization": (2, 0)},
    dynamo_fusions={
        "MultiHeadAttention": (1, 0), "SimplifiedLayerNormalization": (2, 1), "SkipSimplifiedLayerNormalization": (2, 0),
    },
)
LLAMA = BackboneAdapter(
    "llama", ("llama",), token_type_ids=False, pooler_head=False, causal=True, fusions=_RMS_FUSIONS,
    dynamo_fusions=_RMS_DYNAMO,
)
MISTRAL = BackboneAdapter(
    "mistral", ("mistral",), token_type_ids=False, pooler_head=False, causal=True, fusions=_RMS_FUSIONS,
    dynamo_fusions=_RMS_DYNAMO,
)
GEMMA = BackboneAdapter(
    "gemma", ("gemma",), token_type_ids=False, pooler_head=False, causal=True,
    fusions={"FastGelu": (1, 0), **_RMS_FUSIONS}, dynamo_fusions={"FastGelu": (1, 0), **_RMS_DYNAMO},
)
GENERIC = BackboneAdapter("generic")

ENCODERS: tuple[BackboneAdapter, ...] = (
    BERT, ROBERTA, DISTILBERT, DEBERTA, MPNET, ELECTRA, MODERNBERT, NOMIC_BERT, GTE, ROFORMER, EUROBERT, BIGBIRD,
    LONGFORMER,
)
DECODERS: tuple[BackboneAdapter, ...] = (QWEN2, QWEN3, LLAMA, MISTRAL, GEMMA)
ADAPTERS: tuple[BackboneAdapter, ...] = ENCODERS + DECODERS
_BY_MODEL_TYPE = {model_type: adapter for adapter in ADAPTERS for model_type in adapter.model_types}


def adapter_for(config: Any) -> BackboneAdapter:
    """The adapter of a transformers config (or a model_type string); GENERIC for a model type not in the table."""
    model_type = config if isinstance(config, str) else getattr(config, "model_type", "")
    return _BY_MODEL_TYPE.get(str(model_type), GENERIC)
