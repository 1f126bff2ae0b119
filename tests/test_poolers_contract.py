"""Every registered pooler, on every tiny architecture it applies to: output width, batch size 1, padding
invariance, trainable registered parameters, and a save/load round trip. Parametrized over the registry, so a
new pooler cannot skip these."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import ARCHITECTURES, TINY_OPTIONS
from poolx.errors import UsageError
from poolx.models import PooledEncoder, get_spec, list_poolers

TEXTS = ["a", "The quick brown fox jumps over the lazy dog.", "Pooling heads", "Der schnelle braune Fuchs springt."]


def applies(pooling: str, arch: str) -> bool:
    return not (get_spec(pooling).needs_pooler_output and arch in ("distilbert", "deberta-v2"))


CASES = [(p, a) for p in list_poolers() for a in ARCHITECTURES if applies(p, a)]


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
    """The tiny models' tokenizer (all-MiniLM-L6-v2's on a smaller vocabulary: conftest.tiny_tokenizer)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_models["bert"])


@pytest.fixture(scope="module")
def backbones(tiny_models):
    """Each tiny backbone loaded once (as poolx loads it); tests that train work on a copy."""
    from poolx.models.loading import load_backbone, resolve_source

    return {arch: load_backbone(resolve_source(str(path))) for arch, path in tiny_models.items()}


def encode(encoder, tokenizer, texts, pad_to=None):
    kw = {"padding": "max_length", "max_length": pad_to} if pad_to else {"padding": True}
    enc = tokenizer(texts, return_tensors="pt", truncation=True, **kw)
    with torch.no_grad():
        return encoder(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))


@pytest.mark.parametrize("pooling,arch", CASES)
def test_width_batch1_and_padding_invariance(pooling, arch, backbones, tokenizer):
    encoder = PooledEncoder.from_backbone(backbones[arch], pooling, num_labels=3, **TINY_OPTIONS.get(pooling, {})).eval()
    batch = encode(encoder, tokenizer, TEXTS)
    assert batch["sentence_embedding"].shape == (len(TEXTS), encoder.pooler.output_dim)
    assert batch["logits"].shape == (len(TEXTS), 3)
    assert torch.isfinite(batch["sentence_embedding"]).all()
    padded = encode(encoder, tokenizer, TEXTS, pad_to=40)  # heavy padding on every row
    for i, text in enumerate(TEXTS):
        alone = encode(encoder, tokenizer, [text])  # batch size 1, no padding at all
        for out, row in ((alone, 0), (padded, i)):
            torch.testing.assert_close(out["sentence_embedding"][row], batch["sentence_embedding"][i], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(out["logits"][row], batch["logits"][i], rtol=1e-4, atol=1e-5)
    # other companions in the batch change nothing
    swapped = encode(encoder, tokenizer, [TEXTS[2], "completely different company here, and longer than the rest"])
    torch.testing.assert_close(swapped["sentence_embedding"][0], batch["sentence_embedding"][2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pooling", list_poolers())
def test_parameters_are_registered_trainable_and_round_trip(pooling, backbones, tokenizer, tmp_path):
    encoder = PooledEncoder.from_backbone(
        copy.deepcopy(backbones["bert"]), pooling, num_labels=2, seed=7, **TINY_OPTIONS.get(pooling, {})
    )
    encoder.train()
    enc = tokenizer(TEXTS, return_tensors="pt", padding=True)
    out = encoder(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    out["logits"].sum().backward()
    own = {n: p for n, p in encoder.named_parameters() if not n.startswith("backbone.")}
    assert "head.weight" in own
    for name, param in own.items():
        if name.startswith("pooler.") or name.startswith("head."):
            assert param.grad is not None, f"{name} gets no gradient"
            assert param.dtype == torch.float32
    # one optimiser step, then save and reload: identical outputs and config
    torch.optim.SGD(encoder.parameters(), lr=0.1).step()
    encoder.eval()
    # the pooler and head round-trip through their on-disk layout (the backbone's own round trip is
    # transformers'; a whole model directory is saved and reloaded in test_head_layout.py)
    import json

    from poolx.models.head import write_model_head

    write_model_head(tmp_path, encoder)
    pooling = json.loads((tmp_path / "poolx.json").read_text())["pooling"]
    reloaded = PooledEncoder.from_export(pooling, encoder.backbone, tmp_path).eval()
    assert reloaded.pooler.config() == encoder.pooler.config()
    assert reloaded.pooling_config() == encoder.pooling_config()
    a, b = encode(encoder, tokenizer, TEXTS), encode(reloaded, tokenizer, TEXTS)
    torch.testing.assert_close(a["sentence_embedding"], b["sentence_embedding"], rtol=0, atol=0)
    torch.testing.assert_close(a["logits"], b["logits"], rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pooler.safetensors", "poolx.json"], "nothing pickled"


@pytest.mark.parametrize("arch", ["distilbert", "deberta-v2"])
def test_pooler_without_pooler_head_is_refused(arch, backbones):
    with pytest.raises(UsageError, match="has no pooler head.*use one of: cls, mean"):
        PooledEncoder.from_backbone(backbones[arch], "pooler")


@pytest.mark.parametrize(
    "pooling,options,message",
    [
        ("layer-cls", {"layer": 5}, "layer 5 is out of range"),
        ("layer-cls", {"layer": -6}, "layer -6 is out of range"),
        ("concat", {"layers": [-1, 9]}, "layers entry 9 is out of range"),
        ("concat", {"layers": []}, "non-empty"),
        ("weighted", {"layer_start": 5}, "layer_start 5 is out of range"),
        ("weighted", {"layer_start": -1}, "layer_start -1 is out of range"),
        ("weighted", {"token": "max"}, "token must be"),
        ("lstm", {"hidden_size": 0}, "hidden_size must be a positive integer"),
        ("attention", {"dropout": 1.5}, r"dropout must be a number in \[0, 1\), got 1.5"),
        ("attention", {"dropout": "0.1"}, "dropout must be a number"),
        ("weighted", {"layer_start": 2.5}, "layer_start must be an integer, got 2.5"),
        ("wk", {"layer_start": 3}, "leaves 2 layer"),
        ("conv1d", {"kernel_size": 0}, "kernel_size must be a positive integer"),
        ("mean", {"layer": 1}, "does not take --layer"),
        ("nope", {}, "unknown pooler 'nope'"),
    ],
)
def test_bad_options_are_refused_with_a_clear_message(pooling, options, message, backbones):
    with pytest.raises(UsageError, match=message):  # 4 layers: hidden_states 0..4
        PooledEncoder.from_backbone(backbones["bert"], pooling, **options)


def test_registry_rejects_duplicates_and_accepts_classes():
    from poolx.models import create_pooler, register_pooler
    from poolx.models.poolers.tokens import MeanPooler

    with pytest.raises(ValueError, match="already registered"):
        register_pooler("mean")(MeanPooler)
    assert isinstance(create_pooler(MeanPooler, width=8, num_layers=2), MeanPooler)


def test_output_dims():
    from poolx.models import create_pooler

    dims = {name: create_pooler(name, width=10, num_layers=6).output_dim for name in list_poolers()}
    assert dims == {
        "pooler": 10, "cls": 10, "mean": 10, "max": 10, "mean-max": 20, "conv1d": 1, "layer-cls": 10,
        "concat": 40, "weighted": 10, "lstm": 256, "attention": 128, "wk": 10, "last": 10, "st": 10,
    }
    assert create_pooler("st", width=10, num_layers=6, modes=["cls", "max", "lasttoken"]).output_dim == 30


@pytest.mark.parametrize("pooling", list_poolers())
def test_declared_width_is_the_built_width(pooling):
    """`poolx poolers` shows the registry's width; every pooler's output_dim is what it declares, for the
    defaults and for other options."""
    from poolx.models import create_pooler

    spec = get_spec(pooling)
    variants = [{}] + [{o.name: 3} for o in spec.options if o.type is int and o.min == 1 and o.name != "window"]
    variants += [{o.name: [0, 1, -1]} for o in spec.options if o.type == "int_list"]
    for options in variants:
        pooler = create_pooler(pooling, width=12, num_layers=6, **options)
        assert pooler.output_dim == spec.width_of(12, pooler.config()), (pooling, options)


def test_state_dict_keys_are_unchanged():
    """Weights saved by earlier poolx versions load: the keys of every learned pooler (the lstm/attention
    dropout module was renamed; it has no state)."""
    from poolx.models import create_pooler

    keys = {name: sorted(create_pooler(name, width=8, num_layers=6).state_dict()) for name in list_poolers()}
    assert {k: v for k, v in keys.items() if v} == {
        "conv1d": ["cnn1.bias", "cnn1.weight", "cnn2.bias", "cnn2.weight"],
        "weighted": ["layer_weights"],
        "lstm": ["lstm.bias_hh_l0", "lstm.bias_ih_l0", "lstm.weight_hh_l0", "lstm.weight_ih_l0"],
        "attention": ["q", "w_h"],
    }
