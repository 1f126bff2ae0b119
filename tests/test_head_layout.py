"""One on-disk layout for the pooler and head (poolx.models.head): the pooling config's JSON round trip for every
registered pooler, a model directory saved and reloaded, and the layouts earlier poolx versions wrote (a model
directory with poolx_model.safetensors, an export manifest of schema 1) still loading."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from poolx.errors import BrokenExportError, ModelLoadError
from poolx.models import PooledEncoder, PoolingConfig
from poolx.models.head import HEAD_WEIGHTS, LEGACY_MODEL_WEIGHTS, read_model_head
from poolx.models.options import INT_LIST, STR_LIST
from poolx.models.registry import create_pooler, list_poolers, get_spec

TEXTS = ["a", "The quick brown fox jumps over the lazy dog.", "Pooling heads"]


def _non_defaults(name: str) -> dict:
    """Every option of the pooler at a valid value other than its default (for a 12-layer backbone)."""
    out = {}
    for o in get_spec(name).options:
        if o.type == STR_LIST:
            out[o.name] = [c for c in o.choices if c not in o.default][::-1]
        elif o.choices is not None:
            out[o.name] = next(c for c in o.choices if c != o.default)
        elif o.type == INT_LIST:
            out[o.name] = [2, -1]
        elif o.type is float:
            out[o.name] = 0.3
        else:
            out[o.name] = o.default + 1
    return out


@pytest.mark.parametrize("pooling", list_poolers())
@pytest.mark.parametrize("which", ["defaults", "others"])
def test_pooling_config_round_trips_through_json(pooling, which):
    options = {} if which == "defaults" else _non_defaults(pooling)
    pooler = create_pooler(pooling, width=8, num_layers=12, **options)
    config = PoolingConfig(pooling, pooler.config(), 3, pooler.output_dim)
    text = json.dumps(config.to_json())
    back = PoolingConfig.from_json(json.loads(text))
    assert back == config and back.to_json() == json.loads(text)
    assert set(back.options) == {o.name for o in get_spec(pooling).options}  # defaults are written out
    rebuilt = create_pooler(back.name, width=8, num_layers=12, **back.options)
    assert rebuilt.config() == pooler.config() and rebuilt.output_dim == back.output_dim


@pytest.mark.parametrize(
    "data,message",
    [
        ([], "must be an object"),
        ({"options": {}}, "no pooler name"),
        ({"name": "nope"}, "unknown pooler 'nope'"),
        ({"name": "mean", "options": {"layer": 1}}, "does not take --layer"),
        ({"name": "lstm", "options": {"hidden_size": "8"}}, "hidden_size must be an integer"),
        ({"name": "lstm", "options": [1]}, "options of pooler 'lstm' must be an object"),
        ({"name": "mean", "num_labels": 0}, "num_labels must be a positive integer"),
        ({"name": "mean", "output_dim": True}, "output_dim must be a positive integer"),
    ],
)
def test_pooling_config_validation(data, message):
    with pytest.raises(ValueError, match=message):
        PoolingConfig.from_json(data)


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
    """The tiny models' tokenizer (all-MiniLM-L6-v2's on a smaller vocabulary: conftest.tiny_tokenizer)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_models["bert"])


def _outputs(encoder, tokenizer):
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        return encoder.eval()(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])


def _same(a, b):
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_model_directory_and_its_legacy_layout(tiny_models, tokenizer, tmp_path):
    model = PooledEncoder.from_pretrained(str(tiny_models["bert"]), "attention", num_labels=2, hidden_size=6, seed=3)
    with torch.no_grad():
        model.pooler.q.mul_(3.0)  # "trained": not what the seed gives
    saved = model.save_pretrained(tmp_path / "m", tokenizer)
    assert (saved / HEAD_WEIGHTS).is_file() and not (saved / LEGACY_MODEL_WEIGHTS).exists()
    poolx_json = json.loads((saved / "poolx.json").read_text())
    assert poolx_json == {"schema_version": 2, "pooling": {
        "name": "attention", "options": {"hidden_size": 6, "dropout": 0.1}, "num_labels": 2, "output_dim": 6,
        "dense": [], "normalize": False, "weights": HEAD_WEIGHTS,
    }}
    expected = _outputs(model, tokenizer)
    _same(_outputs(PooledEncoder.from_pretrained(str(saved)), tokenizer), expected)

    # what poolx wrote before the shared layout: poolx.json schema 1 and poolx_model.safetensors
    (saved / HEAD_WEIGHTS).rename(saved / LEGACY_MODEL_WEIGHTS)
    (saved / "poolx.json").write_text(json.dumps({
        "schema_version": 1, "pooling": {"name": "attention", "options": {"hidden_size": 6, "dropout": 0.1}},
        "num_labels": 2, "output_dim": 6,
    }))
    config, weights = read_model_head(saved)
    assert config == model.pooling_config() and weights == saved / LEGACY_MODEL_WEIGHTS
    legacy = PooledEncoder.from_pretrained(str(saved))
    _same(_outputs(legacy, tokenizer), expected)
    # saving over it leaves the shared layout only
    legacy.save_pretrained(saved)
    assert (saved / HEAD_WEIGHTS).is_file() and not (saved / LEGACY_MODEL_WEIGHTS).exists()
    assert json.loads((saved / "poolx.json").read_text()) == poolx_json

    # a legacy directory of a pooler without weights (schema 1 always wrote the file, empty)
    from safetensors.torch import save_file

    save_file({}, str(saved / LEGACY_MODEL_WEIGHTS))
    (saved / HEAD_WEIGHTS).unlink()
    (saved / "poolx.json").write_text(json.dumps({
        "schema_version": 1, "pooling": {"name": "concat", "options": {"layers": [-1, 0]}}, "num_labels": None,
        "output_dim": 64,
    }))
    assert PooledEncoder.from_pretrained(str(saved)).pooler.config() == {"layers": [-1, 0]}


@pytest.mark.parametrize(
    "edit,error,message",
    [
        (lambda d: (d / "poolx.json").write_text("{"), ModelLoadError, "is not valid JSON"),
        (lambda d: (d / "poolx.json").write_text('{"schema_version": 9, "pooling": {}}'), ModelLoadError, "newer poolx"),
        (lambda d: (d / "poolx.json").write_text('{"schema_version": 2}'), ModelLoadError, "no valid pooling entry"),
        (lambda d: (d / HEAD_WEIGHTS).unlink(), ModelLoadError, "pooler.safetensors is missing"),
        (lambda d: (d / HEAD_WEIGHTS).write_bytes(b"nonsense"), ModelLoadError, "not a readable safetensors"),
    ],
)
def test_broken_model_directories_are_one_line_errors(tiny_models, tmp_path, edit, error, message):
    from poolx.models.head import write_model_head
    from poolx.models.loading import load_backbone, resolve_source

    encoder = PooledEncoder.from_backbone(load_backbone(resolve_source(str(tiny_models["bert"]))), "weighted", 2, layer_start=1)
    write_model_head(tmp_path, encoder)
    edit(tmp_path)
    with pytest.raises(error, match=message):
        config, weights = read_model_head(tmp_path)
        PooledEncoder._from_saved_head(encoder.backbone, config, weights, ModelLoadError, "re-save the model")


def test_export_pooling_section_and_an_old_export_manifest(tiny_models, tmp_path):
    """An export's manifest.pooling is the model directory's pooling object (plus the seed); a manifest of schema
    1 (variant inside graph) with the pooling section poolx wrote then still verifies."""
    from poolx.exporter.export import export
    from poolx.manifest import Manifest
    from poolx.parity.runners import rebuild_encoder
    from poolx.parity.texts import VERIFY_TEXTS
    from poolx.parity.verify import verify

    out = tmp_path / "e"
    result = export(str(tiny_models["bert"]), out, pooling="weighted", layer_start=1, num_labels=2, max_length=64)
    encoder = PooledEncoder.from_pretrained(str(tiny_models["bert"]), "weighted", 2, layer_start=1)
    assert result.manifest.pooling == {**encoder.pooling_config().to_json(), "weights": HEAD_WEIGHTS, "seed": 0}

    data = json.loads((out / "manifest.json").read_text())
    data["schema_version"] = 1
    variant = data.pop("variant")
    data["graph"].update(precision=variant["precision"], optimized=variant["fused"], target=variant["target"])
    p = data["pooling"]
    data["pooling"] = {"name": p["name"], "options": p["options"], "output_dim": p["output_dim"],
                       "num_labels": p["num_labels"], "weights": "pooler.safetensors", "seed": 0}
    (out / "manifest.json").write_text(json.dumps(data))
    old = Manifest.read(out)
    rebuilt = rebuild_encoder(old, out)
    reference = PooledEncoder.from_export(result.manifest.pooling, encoder.backbone, out)
    for a, b in zip(rebuilt.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)
    assert verify(out, texts=VERIFY_TEXTS[:6]).passed

    # the pooling section broken in ways a hand edit would: one line, BrokenExportError, "re-export"
    broken = shutil.copytree(out, tmp_path / "broken")
    for pooling, message in (
        ({**p, "weights": None}, "no pooler/head weights are recorded"),
        ({**p, "options": {"layer_start": 9}}, "does not fit this backbone: layer_start 9 is out of range"),
        ({**p, "output_dim": 7}, "is 7 wide but builds 32 wide"),
        ({**p, "weights": "../pooler.safetensors"}, "must be a file name"),
    ):
        with pytest.raises(BrokenExportError, match=message):
            PooledEncoder.from_export(pooling, encoder.backbone, broken)
