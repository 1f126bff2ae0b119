"""Model sources as users give them: a hub id already in the local Hugging Face cache (offline), and checkpoints
that lack weights poolx would otherwise fill with random numbers."""

from __future__ import annotations

import shutil

import pytest

from poolx.errors import ModelLoadError, UsageError
from poolx.models import PooledEncoder


def test_hub_id_from_the_local_cache(tiny_models, tmp_path, monkeypatch):
    """A cache laid out as huggingface_hub writes it (models--org--name/snapshots/<rev>, refs/main), found by the
    command line with HF_HUB_CACHE pointing at it and the hub offline, then verified. (In the test process:
    huggingface_hub reads HF_HUB_CACHE once, at import, so the constant it read is pointed there as well.)"""
    import huggingface_hub.constants
    from typer.testing import CliRunner

    from poolx.cli import app

    repo = tmp_path / "cache" / "models--someone--tiny-bert"
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_models["bert"], repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "export"
    done = CliRunner().invoke(app, ["export", "someone/tiny-bert", "-p", "cls", "-o", str(out)])
    assert done.exit_code == 0, done.output
    assert "exported someone/tiny-bert" in done.stdout
    from poolx.parity.texts import VERIFY_TEXTS
    from poolx.parity.verify import verify

    assert verify(out, texts=VERIFY_TEXTS[:6]).passed  # rebuilt from the snapshot path the manifest recorded


def test_pooler_refused_when_the_checkpoint_lacks_pooler_weights(tmp_path):
    """AutoModel would create a randomly initialised pooler head; poolx refuses to call that `pooler`."""
    import torch
    from transformers import BertModel

    from conftest import tiny_config

    torch.manual_seed(0)
    BertModel(tiny_config("bert"), add_pooling_layer=False).save_pretrained(tmp_path / "m")
    with pytest.raises(UsageError, match="weights are missing"):
        PooledEncoder.from_pretrained(str(tmp_path / "m"), "pooler")
    assert PooledEncoder.from_pretrained(str(tmp_path / "m"), "cls") is not None


def test_checkpoint_missing_backbone_weights_is_refused(tiny_models, tmp_path):
    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_models["bert"], tmp_path / "m")
    state = load_file(str(tmp_path / "m" / "model.safetensors"))
    del state[next(k for k in state if "encoder.layer.0" in k)]
    save_file(state, str(tmp_path / "m" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="lacks 1 backbone weights"):
        PooledEncoder.from_pretrained(str(tmp_path / "m"), "mean")
