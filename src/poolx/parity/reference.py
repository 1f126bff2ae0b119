"""The export against the library its model came from: a sentence-transformers directory's export is compared with
`SentenceTransformer(dir).encode` itself, not only with poolx's eager rebuild of it, so a pipeline step poolx read
wrongly (a Pooling mode, a Dense activation, Normalize) fails verify instead of passing it twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from poolx.parity.compare import Comparison, Tolerance, new_comparison
from poolx.spec import EMBEDDING

FP32_ATOL = 1e-5  # max abs against sentence-transformers for fp32 graphs (same weights, same arithmetic order)
BATCH = 8


def against_sentence_transformers(
    source: Path, manifest: Any, graph: Any, text_encoder: Any, texts: Sequence[str], tolerance: Tolerance,
) -> tuple[Comparison | None, str | None]:
    """(the comparison of the graph's embedding with `SentenceTransformer(source).encode` on `texts`, or None, and
    a note saying why it was not made). fp32 graphs are held to max abs 1e-5; fp16/int8 to their variant's
    bound. Texts are encoded without a prompt on both sides (the Embedder prepends prompts as text); the model's
    max_seq_length is set to the export's max_length."""
    info = manifest.source.get("sentence_transformers")
    if not info:
        return None, None
    if info.get("pooling_replaced"):
        return None, ("--pooling replaced this sentence-transformers directory's Pooling step at export: compared "
                      "with the eager rebuild only, not with SentenceTransformer.encode")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None, ("sentence-transformers is not installed: compared with the eager rebuild only; pip install "
                      "sentence-transformers to compare with SentenceTransformer.encode too")
    import torch

    from poolx.variants import FP32

    import logging

    quiet = logging.getLogger("sentence_transformers")
    level, quiet.level = quiet.level, logging.WARNING  # it logs the default prompt's name at INFO on every load
    try:
        model = SentenceTransformer(str(source), device="cpu", local_files_only=True)
    finally:
        quiet.setLevel(level)
    model.max_seq_length = manifest.max_length
    with torch.inference_mode():
        expected = model.encode(list(texts), batch_size=BATCH, prompt="", convert_to_numpy=True,
                                normalize_embeddings=False, show_progress_bar=False)
    got = np.concatenate([graph.run(text_encoder(list(texts[k:k + BATCH])))[EMBEDDING]
                          for k in range(0, len(texts), BATCH)])
    if manifest.variant.precision is FP32:
        tolerance = Tolerance(atol=FP32_ATOL, rtol=0.0)
    comparison = new_comparison(f"{EMBEDDING} vs SentenceTransformer.encode", tolerance)
    comparison.add(got, np.asarray(expected, dtype=np.float32), f"{len(texts)} texts in batches of {BATCH}")
    return comparison, None
