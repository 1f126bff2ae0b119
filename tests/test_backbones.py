"""Backbone adapters (poolx.models.backbones): each family's table entry agrees with what transformers builds for
it, the GENERIC fallback reads the same answers off the model itself, and a backbone whose model type is in no
table (ALBERT) still exports and verifies."""

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
    kwargs.update(extra)
    return AutoConfig.for_model(model_type, **kwargs)


FAMILY_OF = {
    "bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "camembert": "roberta",
    "distilbert": "distilbert", "deberta-v2": "deberta", "deberta": "deberta", "mpnet": "mpnet", "electra": "electra",
}


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
    embedding = getattr(model.embeddings, "position_embeddings", None)
    padding_idx = getattr(embedding, "padding_idx", None)
    assert adapter.position_offset(config) == (0 if padding_idx is None else padding_idx + 1)
    assert adapter.pooler_head == (getattr(model, "pooler", None) is not None)
    assert adapter.padding_side == "right" and adapter.optimizer_model_type == "bert"
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
    """What onnxruntime's optimizer fuses on poolx's graphs (measured with `fuse` on tiny models of each family,
    onnxruntime 1.32; tests/test_variants.py pins them on real exports)."""
    per_family = {a.family: a.expected_fusions(4) for a in ADAPTERS}
    bert = {"EmbedLayerNormalization": 1, "Attention": 4, "BiasGelu": 4, "SkipLayerNormalization": 8}
    assert per_family == {
        "bert": bert, "distilbert": bert, "electra": bert,
        "roberta": {"LayerNormalization": 1, "Attention": 4, "BiasGelu": 4, "SkipLayerNormalization": 8},
        "deberta": {"LayerNormalization": 1, "BiasGelu": 4, "SkipLayerNormalization": 8},
        "mpnet": {"BiasGelu": 4, "SkipLayerNormalization": 9},
    }
    assert adapter_for(tiny("bert")).expected_fusions(12)["SkipLayerNormalization"] == 24
    assert GENERIC.expected_fusions(4) is None
    from onnxruntime.transformers.optimizer import MODEL_TYPES

    assert {a.optimizer_model_type for a in (*ADAPTERS, GENERIC)} <= set(MODEL_TYPES)


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
