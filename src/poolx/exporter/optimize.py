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

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

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
        if target is not None and precision == "fp32" and not optimize:
            raise UsageError("--target only changes an --optimize or --precision fp16/int8 export; add --optimize")
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
    with quiet():
        optimized = optimizer.optimize_model(
            model, model_type="bert", num_heads=int(config.num_attention_heads), hidden_size=int(config.hidden_size),
            optimization_options=options, opt_level=0, use_gpu=target == "cuda",
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


def build(model: Any, variant: Variant, config: Any, encode: Any, calibration: Sequence[str], output: str) -> tuple[Any, dict[str, Any]]:
    """The variant of the traced fp32 ModelProto `model`, and what the manifest records about it."""
    info: dict[str, Any] = {
        "precision": variant.precision, "optimized": variant.optimize, "target": variant.target,
        "fusions": None, "quantization": None,
    }
    if variant.precision == "int8":
        from poolx.exporter.quantize import quantize_int8

        model, result = quantize_int8(model, encode, calibration, output)
        info["quantization"] = {**result.to_json(), "calibration_texts": len(calibration)}
        if variant.optimize:
            optimized, info["fusions"] = fuse(model, config, "cpu", attention=False)
            model = optimized.model
    elif variant.optimize:
        optimized, info["fusions"] = fuse(model, config, variant.target)
        if variant.precision == "fp16":
            info["fp32_nodes"] = to_fp16(optimized)
        model = optimized.model
    return model, info
