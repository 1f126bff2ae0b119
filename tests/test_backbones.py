"""Backbone adapters (poolx.models.backbones): each family's table entry agrees with what transformers builds for
it, the GENERIC fallback reads the same answers off the model itself, decoders are told from encoders, the
refused families are refused for the right configs, and a backbone whose model type is in no table (ALBERT) still
exports and verifies. tests/test_families.py exports and verifies every family."""

from __future__ import annotations

import inspect

import pytest

from conftest import TINY, minilm_path
from poolx.models.backbones import ADAPTERS, GENERIC, adapter_for

VOCAB = 64  # the table is about structure; small vocabularies keep these models cheap


def tiny(model_type: str, **extra):
    from transformers import AutoConfig

    kwargs = dict(vocab_size=VOCAB, **TINY)
    if model_type == "distilbert":
        kwargs = dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=37)
    elif model_type in ("roberta", "xlm-roberta", "camembert", "mpnet"):
        kwargs.update(max_position_embeddings=514, pad_token_id=1, type_vocab_size=1)
    elif model_type in ("deberta-v2", "deberta"):
        kwargs.update(type_vocab_size=0)
    elif model_type == "electra":
        kwargs.update(embedding_size=16)
    elif model_type == "roformer":
        kwargs.update(embedding_size=32)
    elif model_type == "eurobert":
        kwargs.update(pad_token_id=0, bos_token_id=1, eos_token_id=2, mask_token_id=3, num_key_value_heads=4)
    elif model_type in ("modernbert", "gte"):
        kwargs.update(pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
    elif model_type == "longformer":
        kwargs.update(max_position_embeddings=514, pad_token_id=1, attention_window=[4] * TINY["num_hidden_layers"])
    elif model_type == "big_bird":
        kwargs.update(attention_type="original_full", pad_token_id=0, bos_token_id=1, eos_token_id=2, sep_token_id=3)
    elif model_type in DECODERS:
        kwargs.update(num_key_value_heads=2, head_dim=8, pad_token_id=None, bos_token_id=1, eos_token_id=2)
    kwargs.update(extra)
    return AutoConfig.for_model(model_type, **kwargs)


FAMILY_OF = {
    "bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "camembert": "roberta",
    "distilbert": "distilbert", "deberta-v2": "deberta", "deberta": "deberta", "mpnet": "mpnet", "electra": "electra",
    "modernbert": "modernbert", "nomic_bert": "nomic_bert", "gte": "gte", "roformer": "roformer",
    "eurobert": "eurobert", "big_bird": "bigbird", "longformer": "longformer",
    "qwen2": "qwen2", "qwen3": "qwen3", "llama": "llama", "mistral": "mistral", "gemma": "gemma",
}
DECODERS = ("qwen2", "qwen3", "llama", "mistral", "gemma")


def test_every_family_model_type_is_tested_here():
    assert set(FAMILY_OF) == {t for a in ADAPTERS for t in a.model_types}


@pytest.mark.parametrize("model_type", sorted(FAMILY_OF))
def test_family_table_agrees_with_transformers(model_type):
    import torch
    from transformers import AutoModel

    config = tiny(model_type)
    adapter = adapter_for(config)
    assert adapter.family == FAMILY_OF[model_type] and adapter_for(model_type) is adapter
    torch.manual_seed(0)
    model = AutoModel.from_config(config)
    takes = "token_type_ids" in inspect.signature(model.forward).parameters
    assert adapter.token_type_ids == takes
    embedding = getattr(getattr(model, "embeddings", None), "position_embeddings", None)  # decoders: embed_tokens
    padding_idx = getattr(embedding, "padding_idx", None)
    assert adapter.position_offset(config) == (0 if padding_idx is None else padding_idx + 1)
    assert adapter.pooler_head == (getattr(model, "pooler", None) is not None)
    assert adapter.padding_side == "right" and adapter.optimizer_model_type == "bert"
    assert adapter.causal == (model_type in DECODERS) == adapter.is_causal(config)
    # GENERIC, reading the model instead of the table, comes to the same answers
    assert GENERIC.input_names(config, model) == adapter.input_names(config, model)
    assert GENERIC.position_limit(config, model) == adapter.position_limit(config)
    assert GENERIC.has_pooler_head(model) == adapter.has_pooler_head(model)


def test_inputs_and_position_limits():
    bert, roberta = tiny("bert"), tiny("roberta")
    assert adapter_for(bert).input_names(bert) == ("input_ids", "attention_mask", "token_type_ids")
    one_type = tiny("bert", type_vocab_size=1)
    assert adapter_for(one_type).input_names(one_type) == ("input_ids", "attention_mask")
    assert adapter_for(roberta).input_names(roberta) == ("input_ids", "attention_mask")  # one token type
    assert adapter_for(tiny("electra")).input_names(tiny("electra")) == ("input_ids", "attention_mask", "token_type_ids")
    assert adapter_for(tiny("mpnet")).input_names(tiny("mpnet")) == ("input_ids", "attention_mask")
    def position_limit(config):
        return adapter_for(config).position_limit(config)

    assert position_limit(bert) == 512
    assert position_limit(roberta) == 512  # 514 - (pad 1 + 1)
    assert position_limit(tiny("roberta", pad_token_id=0)) == 513
    assert position_limit(tiny("mpnet", pad_token_id=0)) == 512  # MPNet's padding_idx is 1 whatever the config says
    assert position_limit(tiny("deberta-v2")) == 512
    assert GENERIC.position_limit(object()) == 512  # a config without max_position_embeddings
    assert adapter_for(tiny("albert", embedding_size=16)) is GENERIC


@pytest.mark.parametrize("model_type", ["roberta-prelayernorm", "xlm-roberta-xl", "albert"])
def test_generic_position_limit_with_and_without_the_model(model_type):
    import torch
    from transformers import AutoModel

    config = tiny(model_type, max_position_embeddings=514, pad_token_id=1, type_vocab_size=1,
                  **({"embedding_size": 16} if model_type == "albert" else {}))
    assert adapter_for(config) is GENERIC
    torch.manual_seed(0)
    model = AutoModel.from_config(config)
    expected = 514 if model_type == "albert" else 512
    assert GENERIC.position_limit(config, model) == GENERIC.position_limit(config) == adapter_for(config).position_limit(config) == expected


def test_expected_fusions_scale_with_layers():
    """What `fuse` fuses on poolx's graphs from each family's default exporter (onnxruntime's optimizer on the
    TorchScript graph, onnxscript's fusions on ModernBERT's dynamo graph; measured on tiny models of each family
    with 1, 2 and 3 layers, onnxruntime 1.32; tests/test_variants.py and tests/test_families.py pin them on real
    exports)."""
    per_family = {a.family: a.expected_fusions(4) for a in ADAPTERS}
    bert = {"EmbedLayerNormalization": 1, "Attention": 4, "BiasGelu": 4, "SkipLayerNormalization": 8}
    rms = {"SimplifiedLayerNormalization": 1, "SkipSimplifiedLayerNormalization": 8}
    assert per_family == {
        "bert": bert, "distilbert": bert, "electra": bert,
        "roberta": {"LayerNormalization": 1, "Attention": 4, "BiasGelu": 4, "SkipLayerNormalization": 8},
        "deberta": {"LayerNormalization": 1, "BiasGelu": 4, "SkipLayerNormalization": 8},
        "mpnet": {"BiasGelu": 4, "SkipLayerNormalization": 9},
        "modernbert": {"LayerNormalization": 9, "Gelu": 4, "MultiHeadAttention": 4},  # its default is dynamo
        "nomic_bert": {"SkipLayerNormalization": 9},
        "gte": {"Gelu": 4, "SkipLayerNormalization": 9},
        "roformer": {"BiasGelu": 4, "SkipLayerNormalization": 9},
        "eurobert": rms, "qwen2": rms, "llama": rms, "mistral": rms,
        "qwen3": {"SimplifiedLayerNormalization": 9, "SkipSimplifiedLayerNormalization": 8},  # + q and k norms
        "gemma": {"FastGelu": 4, **rms},
        "bigbird": {"EmbedLayerNormalization": 1, "Attention": 4, "FastGelu": 4, "SkipLayerNormalization": 8},
        "longformer": None,  # refused
    }
    assert adapter_for(tiny("bert")).expected_fusions(12)["SkipLayerNormalization"] == 24
    assert adapter_for("modernbert").expected_fusions(4, exporter="torchscript") == {
        "LayerNormalization": 1, "Gelu": 4, "SkipLayerNormalization": 8}
    # DeBERTa-v3 LayerNorms its relative position embeddings: one more LayerNormalization, from the config
    v3 = tiny("deberta-v2", relative_attention=True, norm_rel_ebd="layer_norm")
    assert adapter_for(v3).expected_fusions(4, v3)["LayerNormalization"] == 2
    assert adapter_for(v3).expected_fusions(4, tiny("deberta-v2"))["LayerNormalization"] == 1
    assert GENERIC.expected_fusions(4) is None
    from onnxruntime.transformers.optimizer import MODEL_TYPES

    assert {a.optimizer_model_type for a in (*ADAPTERS, GENERIC)} <= set(MODEL_TYPES)


def test_causal_from_the_family_or_the_config():
    """Decoder families are causal; any family is when its config says is_decoder, and GENERIC when the model type
    is a known decoder or the architecture is a causal LM; bidirectional attention (EmbeddingGemma) is not."""
    from types import SimpleNamespace

    for model_type in DECODERS:
        assert adapter_for(model_type).is_causal(tiny(model_type))
    assert not adapter_for("bert").is_causal(tiny("bert"))
    assert adapter_for("bert").is_causal(tiny("bert", is_decoder=True))  # BertLMHeadModel, RobertaForCausalLM
    gemma3 = dict(num_key_value_heads=2, head_dim=8)
    assert GENERIC.is_causal(tiny("gemma3_text", **gemma3))
    assert not GENERIC.is_causal(tiny("gemma3_text", **gemma3, use_bidirectional_attention=True))
    assert GENERIC.is_causal(SimpleNamespace(model_type="my_lm", architectures=["MyLMForCausalLM"]))
    assert GENERIC.is_causal(SimpleNamespace(model_type="gpt2", architectures=None))
    assert not GENERIC.is_causal(SimpleNamespace(model_type="albert", architectures=["AlbertForMaskedLM"]))
    assert not GENERIC.is_causal(object())


def test_refused_families():
    """Longformer always; BigBird only with block-sparse attention, its default; nothing else in the table."""
    longformer = tiny("longformer")
    assert "Longformer is not exported" in adapter_for(longformer).refusal(longformer)
    sparse, full = tiny("big_bird", attention_type="block_sparse"), tiny("big_bird")
    assert "original_full" in adapter_for(sparse).refusal(sparse)
    assert adapter_for(full).refusal(full) is None
    from transformers import BigBirdConfig

    assert adapter_for("big_bird").refusal(BigBirdConfig()) is not None  # block_sparse is BigBird's default
    for model_type in set(FAMILY_OF) - {"longformer", "big_bird"}:
        assert adapter_for(model_type).refusal(tiny(model_type)) is None, model_type


def test_pooler_head_state_is_kept_by_poolx_not_on_the_model(tmp_path):
    """A checkpoint without pooler weights: AutoModel builds a random pooler head; poolx records the missing
    keys itself (the transformers model carries no poolx attribute) and its adapter says there is no head."""
    import torch
    from transformers import BertModel

    from conftest import tiny_config
    from poolx.models.encoder import PooledEncoder
    from poolx.models.loading import load_backbone, missing_keys, resolve_source

    torch.manual_seed(0)
    BertModel(tiny_config("bert"), add_pooling_layer=False).save_pretrained(tmp_path / "m")
    model = load_backbone(resolve_source(str(tmp_path / "m")))
    assert model.pooler is not None and any(k.startswith("pooler.") for k in missing_keys(model))
    assert not [k for k in vars(model) if "poolx" in k]
    assert not adapter_for(model.config).has_pooler_head(model, missing_keys(model))
    assert adapter_for(model.config).has_pooler_head(model)  # the same model built in memory has its head
    encoder = PooledEncoder.from_backbone(model, "cls")
    assert encoder.adapter.family == "bert" and not encoder.has_pooler_head
    assert encoder.input_names == ("input_ids", "attention_mask", "token_type_ids") and encoder.uses_token_type_ids


def test_generic_fallback_exports_and_verifies(tmp_path):
    """ALBERT is in no family: GENERIC finds its token_type_ids and pooler head on the model, and the export
    (its own pooler head, plus a learned pooler's worth of head) verifies."""
    import torch
    from transformers import AlbertConfig, AutoModel, AutoTokenizer

    from poolx.exporter.export import export
    from poolx.parity.texts import VERIFY_TEXTS
    from poolx.parity.verify import verify

    torch.manual_seed(1234)
    config = AlbertConfig(vocab_size=30522, embedding_size=16, max_position_embeddings=512, **TINY)
    AutoModel.from_config(config).save_pretrained(tmp_path / "albert")
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(tmp_path / "albert")
    assert adapter_for(config) is GENERIC

    result = export(str(tmp_path / "albert"), tmp_path / "e", pooling="pooler", num_labels=2, max_length=64)
    assert result.manifest.io.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    assert result.manifest.source["model_type"] == "albert"
    report = verify(tmp_path / "e", texts=VERIFY_TEXTS[:8])
    assert report.passed, report.summary()
