"""onnxruntime's transformer optimizer on a traced graph: fusions, and the fp16 conversion of the fused graph.

- Fusion (`--optimize`): EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu. onnxruntime fuses
  attention on graphs from torch's TorchScript exporter with eager attention, which is how poolx traces;
  DeBERTa's disentangled attention is not fused (its LayerNorms and GELUs are). The optimizer's model type comes
  from the backbone adapter.
- fp16 (for CUDA): the fused graph converted with onnxruntime's float16 converter, inputs and outputs kept
  float32. The fused LayerNorm kernels keep their statistics in float32; the pooler and the head (every node under
  the `/pooler/` and `/head/` scopes, WK's float64 Gram part included) stay float32.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

from poolx.providers import Provider

FP32_SCOPES = ("/pooler/", "/head/")  # torch module scopes of everything after the backbone


def fuse(
    model: Any, config: Any, target: Provider, *, attention: bool = True, model_type: str = "bert",
) -> tuple[Any, dict[str, int]]:
    """onnxruntime's transformer optimizer on an onnx ModelProto (python fusions only, opt_level 0, so the file
    stays portable across providers), for the optimizer's `model_type` (the backbone adapter's) and the target's
    device. Returns the optimizer's OnnxModel and the counts of fused ops."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions(model_type)
    options.enable_attention = attention
    with quiet():
        optimized = optimizer.optimize_model(
            model, model_type=model_type, num_heads=int(config.num_attention_heads),
            hidden_size=int(config.hidden_size), optimization_options=options, opt_level=0, use_gpu=target.gpu,
        )
    _import_contrib_domain(optimized.model)
    counts = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
    return optimized, counts


def _import_contrib_domain(model: Any) -> None:
    """Fused ops live in onnxruntime's com.microsoft domain; the file must import it to be valid ONNX."""
    import onnx

    if any(n.domain == "com.microsoft" for n in model.graph.node) and not any(
        o.domain == "com.microsoft" for o in model.opset_import
    ):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))


def to_fp16(optimized: Any) -> int:
    """Convert the backbone of a fused OnnxModel to float16 in place; float32 inputs/outputs and pooler. Returns
    how many nodes were kept float32 on purpose."""
    keep = [n.name for n in optimized.model.graph.node if n.name.startswith(FP32_SCOPES)]
    with quiet():
        optimized.convert_float_to_float16(keep_io_types=True, node_block_list=keep)
        optimized.topological_sort()  # the converter appends its Cast nodes at the end
    return len(keep)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """onnxruntime's optimizer and quantizer log per node and warn about model producers; keep the CLI clean."""
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime"), logging.getLogger("onnxruntime.transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
