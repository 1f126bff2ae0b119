"""A user fine-tunes a PooledEncoder in their own loop, saves it as a poolx model directory, and exports that
directory: the graph carries the trained weights (pooler, head and backbone) and verifies."""

from __future__ import annotations

import numpy as np
import torch

from poolx.exporter.export import export
from poolx.parity.verify import verify
from poolx.manifest import Manifest
from poolx.models import PooledEncoder
from poolx.runtime.session import create_session
from poolx.runtime.tokenizer import TextEncoder


def test_finetune_save_export_verify(tiny_models, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["roberta"])
    model = PooledEncoder.from_pretrained(str(tiny_models["roberta"]), "attention", num_labels=2, hidden_size=16)
    texts = ["good film", "bad film", "a great and moving story", "dull, far too long"]
    labels = torch.tensor([1, 0, 1, 0])
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    before = {k: v.clone() for k, v in model.head_state_dict().items()}
    backbone_before = model.backbone.embeddings.word_embeddings.weight.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(5):
        out = model(batch["input_ids"], batch["attention_mask"])
        loss = torch.nn.functional.cross_entropy(out["logits"], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert not torch.equal(model.pooler.q, before["pooler.q"]), "the attention query was not trained"
    assert not torch.equal(model.backbone.embeddings.word_embeddings.weight, backbone_before)

    saved = model.save_pretrained(tmp_path / "trained", tokenizer)
    assert (saved / "poolx.json").is_file() and (saved / "pooler.safetensors").is_file()
    result = export(str(saved), tmp_path / "export")
    assert result.manifest.pooling["name"] == "attention" and result.manifest.pooling["num_labels"] == 2
    assert result.manifest.pooling["options"]["hidden_size"] == 16 and not result.untrained
    assert verify(tmp_path / "export").passed

    m = Manifest.read(tmp_path / "export")
    feeds = TextEncoder(tmp_path / "export", m)(texts)
    emb, logits = create_session(tmp_path / "export" / "model.onnx").run(["sentence_embedding", "logits"], feeds)
    with torch.no_grad():
        ref = model(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))
    np.testing.assert_allclose(emb, ref["sentence_embedding"].numpy(), atol=1e-5)
    np.testing.assert_allclose(logits, ref["logits"].numpy(), atol=1e-5)


def test_poolx_directory_options_cannot_be_overridden(tiny_models, tmp_path):
    import pytest

    from poolx.errors import UsageError

    PooledEncoder.from_pretrained(str(tiny_models["bert"]), "lstm", hidden_size=8).save_pretrained(tmp_path / "m")
    with pytest.raises(UsageError, match="holds a trained 'lstm' pooler"):
        export(str(tmp_path / "m"), tmp_path / "e", pooling="mean")
    with pytest.raises(UsageError, match="drop the pooler and head options"):
        export(str(tmp_path / "m"), tmp_path / "e", hidden_size=4)
    assert not (tmp_path / "e").exists()
