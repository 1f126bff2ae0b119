"""Export variants: the traced fp32 graph turned into what runs fast on a target.

- `--optimize`: onnxruntime's transformer optimizer fuses the backbone (EmbedLayerNormalization, Attention,
  SkipLayerNormalization, BiasGelu). It fuses attention on graphs from torch's TorchScript exporter with eager
  attention, which is how poolx traces; DeBERTa's disentangled attention is not fused (its LayerNorms and GELUs
  are).
- fp16 (for CUDA): the fused graph converted with onnxruntime's float16 converter, inputs and outputs kept
  float32. The fused LayerNorm kernels keep their statistics in float32; the pooler and the head (every node under
  the `/pooler/` and `/head/` scopes, WK's float64 Gram part included) stay float32.
- int8 (for the CPU): `quantize.quantize_int8` on the unfused graph (its int8 MatMuls run faster there than in the
  fused one), then the LayerNorm/GELU fusions that still apply with `--optimize`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from poolx.errors import UsageError

PRECISIONS = ("fp32", "fp16", "int8")
TARGETS = ("cpu", "cuda")
FP32_SCOPES = ("/pooler/", "/head/")  # torch module scopes of everything after the backbone


@dataclass(frozen=True)
class Variant:
    precision: str = "fp32"
    optimize: bool = False
    target: str = "cpu"

    @classmethod
    def resolve(
        cls, precision: str = "fp32", optimize: bool = False, target: str | None = None, raw_outputs: Sequence[str] = (),
    ) -> "Variant":
        """Check a requested combination before any model is loaded. fp16 implies fusion and the CUDA target;
        int8 is for the CPU."""
        if precision not in PRECISIONS:
            raise UsageError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if target is not None and target not in TARGETS:
            raise UsageError(f"unknown target {target!r}; choose one of: {', '.join(TARGETS)}")
        if precision == "fp16":
            if target == "cpu":
                raise UsageError("fp16 graphs are for --target cuda (onnxruntime's CPU kernels are fp32); use fp32 or int8 on the CPU")
            target, optimize = "cuda", True
        if precision == "int8" and target == "cuda":
            raise UsageError("int8 graphs are for --target cpu (onnxruntime's CUDA provider has no int8 MatMul kernels); use fp16 on CUDA")
        variant = cls(precision, optimize, target or "cpu")
        if variant.fuses_attention and "attentions" in raw_outputs:
            raise UsageError(
                "the fused Attention op does not output attention probabilities: drop `attentions` from --outputs, "
                "or export without --optimize/fp16"
            )
        return variant

    @property
    def fuses_attention(self) -> bool:
        return self.optimize and self.precision != "int8"

    @property
    def name(self) -> str:
        return f"{self.precision}{'-optimized' if self.optimize else ''}" + ("" if self.precision == "fp32" and self.target == "cpu" else f"-{self.target}")

    @property
    def is_plain(self) -> bool:
        return self == Variant()


def fuse(model: Any, config: Any, target: str, attention: bool = True) -> tuple[Any, dict[str, int]]:
    """onnxruntime's transformer optimizer on an onnx ModelProto (python fusions only, opt_level 0, so the file
    stays portable across providers). Returns the optimizer's OnnxModel and the counts of fused ops."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    options.enable_attention = attention
    optimized = optimizer.optimize_model(
        model, model_type="bert", num_heads=int(config.num_attention_heads), hidden_size=int(config.hidden_size),
        optimization_options=options, opt_level=0, use_gpu=target == "cuda",
    )
    counts = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
    return optimized, counts


def to_fp16(optimized: Any) -> int:
    """Convert the backbone of a fused OnnxModel to float16 in place; float32 inputs/outputs and pooler. Returns
    how many nodes were kept float32 on purpose."""
    keep = [n.name for n in optimized.model.graph.node if n.name.startswith(FP32_SCOPES)]
    optimized.convert_float_to_float16(keep_io_types=True, node_block_list=keep)
    return len(keep)
