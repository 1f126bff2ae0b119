"""Architecture coverage (issue 12's table): every encoder family and decoder family poolx supports, as tiny random
models (the configs and tokenizers of tests/test_families.py: hidden 32, 2 layers), exported plain and with
--optimize (pooling mean for encoders; last and mean for decoders, max_length 64) and verified on the full verify
texts. Prints architecture x (plain, --optimize) -> exports / verifies / fused ops / max abs vs eager, and the
families refused up front with their one-line reason.

    python benchmarks/families.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"


def main() -> int:
    sys.path.insert(0, str(TESTS))
    import test_families as f  # the tiny configs and tokenizers the tests use

    from poolx.errors import PoolxError
    from poolx.exporter.export import export
    from poolx.parity.verify import verify

    root = Path(tempfile.mkdtemp(prefix="poolx-families-"))
    try:
        print("| architecture | pooling | plain: verifies, max abs | --optimize: verifies, max abs | fused ops (--optimize) |")
        print("|---|---|---|---|---|")
        rows = [(t, "mean") for t in sorted(f.ENCODERS)] + [(t, p) for t in sorted(f.DECODERS) for p in ("last", "mean")]
        for model_type, pooling in rows:
            if model_type in f.DECODERS:
                style, extra = f.DECODERS[model_type]
                tokenizer = f.bpe_tokenizer(style)
                model = f.save_tiny(model_type, root / model_type, tokenizer, **f.TINY, **extra,
                                    vocab_size=len(tokenizer), num_key_value_heads=2, max_position_embeddings=512,
                                    pad_token_id=None, bos_token_id=tokenizer.bos_token_id,
                                    eos_token_id=tokenizer.eos_token_id)
            else:
                config = dict(f.TINY, vocab_size=30522, **f.ENCODERS[model_type])
                if model_type == "distilbert":
                    config = dict(f.ENCODERS[model_type], vocab_size=30522)
                model = f.save_tiny(model_type, root / model_type, f.minilm_tokenizer(), **config)
            cells, fusions = [], ""
            for optimize in (False, True):
                out = root / f"{model_type}-{pooling}-{optimize}"
                try:
                    manifest = export(str(model), out, pooling=pooling, optimize=optimize, max_length=64).manifest
                    report = verify(out, raise_on_failure=False)
                    cells.append(f"{'pass' if report.passed else 'FAIL'}, {report.outputs[0].max_abs:.1e}")
                    if optimize:
                        fusions = ", ".join(f"{k} {v}" for k, v in sorted((manifest.graph["fusions"] or {}).items()))
                except PoolxError as e:
                    cells.append(f"refused: {e}")
                shutil.rmtree(out, ignore_errors=True)
            print(f"| {model_type} | {pooling} | {cells[0]} | {cells[1]} | {fusions} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
