"""int8 for OpenVINO (`--precision int8 --target openvino`): NNCF's post-training static quantization of the plain
fp32 graph, written as ONNX with QuantizeLinear/DequantizeLinear pairs (QDQ), which OpenVINO's CPU plugin compiles
into int8 kernels (VNNI, AMX-INT8) and runs the rest in its own precision (bf16 where the CPU has it).

Why NNCF and not poolx's own int8 (`poolx.exporter.quantize`): that graph is onnxruntime's dynamic quantization
(DynamicQuantizeLinear + MatMulInteger, activation ranges measured per batch at run time), which is onnxruntime's
form; OpenVINO's int8 kernels take static QDQ graphs, and NNCF is OpenVINO's own quantizer. The result stays one
ONNX file, so verify, the Embedder, serve, bench and Ray treat it as any other graph.

How the accuracy is held: NNCF's transformer preset (SmoothQuant, then per-tensor int8 activation ranges fixed from
the calibration texts, per-channel int8 weights) quantizes the MatMuls by a weight (Q, K, V, attention output, FFN
up and down); each candidate is run by OpenVINO on the calibration texts and compared with the fp32 graph. The
SmoothQuant exponent is the one of `SMOOTH_QUANT_ALPHAS` with the best min cosine; then, while that is below
`TARGET_COSINE`, the MatMul groups with the largest simulated int8 error (the same SmoothQuant formula, so the FFN
down-projections first on all-MiniLM-L6-v2, then attention outputs) are kept fp32, 1, 2, 4, ... of them (at most a
third), and NNCF runs again. The pooler and head stay fp32. all-MiniLM-L6-v2 (benchmarks/RESULTS.md, issue 13):
alpha 0.7 with 8 of 24 groups fp32, min cosine 0.9965 on the calibration texts, 0.9966 on verify's."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from poolx.errors import ExportError, ProviderUnavailableError
from poolx.exporter.quantize import (
    FP32_PREFIXES, Encode, _batches, _min_cosine, _probe, _run, activation_ranges, group_weights, simulated_errors,
    weight_groups,
)
from poolx.progress import step

TARGET_COSINE = 0.995  # min cosine against fp32 on the calibration texts; verify holds the graph to 0.995 too
# SmoothQuant exponents tried for the MatMuls (NNCF's own default for transformers, 0.95, left all-MiniLM-L6-v2's
# verify texts at min cosine 0.986 even with the FFN down-projections fp32; 0.7: 0.997, 0.5: 0.996)
SMOOTH_QUANT_ALPHAS = (0.5, 0.7)


@dataclass
class OpenVinoInt8Result:
    calibration_cosine: float  # min cosine against the fp32 graph on the calibration texts, run by OpenVINO
    quantized: int  # MatMuls with an int8 weight
    alpha: float  # the SmoothQuant exponent chosen
    kept_fp32: list[str] = field(default_factory=list)  # MatMul nodes left fp32 to hold the accuracy
    tried: dict[str, float] = field(default_factory=dict)  # "alpha A, K kept" -> min cosine on the calibration texts
    precision: str = "f32"  # what OpenVINO ran the rest of the graph in while calibrating

    def to_json(self) -> dict[str, Any]:
        import nncf

        return {
            "method": f"NNCF {nncf.__version__} post-training static quantization (transformer preset: SmoothQuant, "
            "per-channel int8 weights, per-tensor int8 activations) as QuantizeLinear/DequantizeLinear, for OpenVINO",
            "runtime": f"openvino ({self.precision} outside the int8 MatMuls)",
            "alpha": self.alpha, "calibration_min_cosine": round(self.calibration_cosine, 6),
            "quantized_matmuls": self.quantized, "kept_fp32": self.kept_fp32, "tried": self.tried,
        }


def import_nncf() -> Any:
    try:
        import nncf
    except ImportError:
        raise ProviderUnavailableError("int8 for OpenVINO needs NNCF and OpenVINO: pip install 'poolx[openvino]'") from None
    return nncf


def quantize_int8_openvino(
    model: Any, encode: Encode, texts: Sequence[str], output: str, min_cosine: float = TARGET_COSINE,
    alphas: Sequence[float] = SMOOTH_QUANT_ALPHAS,
) -> tuple[Any, OpenVinoInt8Result]:
    """The QDQ int8 version of the fp32 graph `model` (an onnx ModelProto, weights inline) for OpenVINO, holding
    `output`'s min cosine against the fp32 graph on the calibration `texts` to `min_cosine` (module docstring)."""
    import onnx

    nncf = import_nncf()
    from poolx.runtime.openvino import OpenVinoSession

    groups = weight_groups(model)
    if not groups:
        raise ExportError("the graph has no MatMul with constant weights to quantize; int8 would change nothing")
    names = {tensor: [model.graph.node[i].name for i in indices] for tensor, indices in groups.items()}
    fp32_scope = [n.name for n in model.graph.node if n.name.startswith(FP32_PREFIXES)]
    batches = _batches(encode, texts)
    prepared = _output_casts_as_identity(model)  # what NNCF is given, once for every attempt
    most = len(groups) // 3
    with tempfile.TemporaryDirectory(prefix="poolx-int8-openvino-") as tmp:
        work = Path(tmp)
        source = work / "fp32.onnx"
        onnx.save_model(model, str(source))
        reference = _run(source, output, batches)
        tried: dict[str, float] = {}

        def attempt(alpha: float, kept: Sequence[str]) -> tuple[float, Any, str]:
            step(f"int8 for OpenVINO: NNCF, SmoothQuant alpha {alpha}, {len(kept)} MatMul group(s) kept fp32, on "
                 f"{len(texts)} calibration texts")
            quantized = _nncf_quantize(nncf, prepared, batches, alpha, fp32_scope + [n for t in kept for n in names[t]])
            path = work / f"candidate-{len(tried)}.onnx"
            onnx.save_model(quantized, str(path))
            session = OpenVinoSession(path)  # measured on the kernels it is built for
            cosine = _min_cosine([dict(zip([output], session.run([output], feeds))) for feeds in batches], reference, output)
            tried[f"alpha {alpha}, {len(kept)} kept"] = round(cosine, 6)
            return cosine, quantized, session.precision

        results = {alpha: attempt(alpha, []) for alpha in alphas}
        alpha = max(alphas, key=lambda a: results[a][0])
        cosine, quantized, precision = results[alpha]
        kept: list[str] = []
        if cosine < min_cosine:  # rank the groups only when some must stay fp32
            step("int8 for OpenVINO: ranking the MatMul groups by simulated int8 error")
            probe = _probe(model, groups, work)
            weights = group_weights(model, groups)
            # with NNCF's SmoothQuant formula and the chosen alpha: without it the FFN up-projections, whose
            # outlier channel SmoothQuant evens out, would rank first (all-MiniLM-L6-v2); with it the down-projections
            errors = simulated_errors(probe, batches, weights, activation_ranges(probe, batches), alpha)
            ranked = sorted(groups, key=lambda t: -errors[t])
            while cosine < min_cosine and len(kept) < most:
                step(f"int8 for OpenVINO: min cosine {cosine:.4f} < {min_cosine}")
                kept = ranked[:min(max(1, 2 * len(kept)), most)]
                cosine, quantized, precision = attempt(alpha, kept)
    if cosine < min_cosine:
        raise ExportError(
            f"int8 for OpenVINO reaches min cosine {cosine:.4f} against fp32 on the calibration texts, below "
            f"{min_cosine} even with {len(kept)} MatMul groups kept fp32; use the plain fp32 graph on OpenVINO (bf16), "
            "or --calibration with your own texts"
        )
    kept_names = [n for t in kept for n in names[t]]
    return quantized, OpenVinoInt8Result(cosine, _int8_weight_matmuls(quantized), alpha, kept_names, tried, precision)


def _nncf_quantize(nncf: Any, model: Any, batches: list[dict[str, np.ndarray]], alpha: float, ignored: list[str]) -> Any:
    """NNCF's quantize with its transformer preset and SmoothQuant exponent `alpha` for MatMuls, the nodes
    `ignored` left fp32, its progress bars and INFO logs kept off poolx's output. `model` has been through
    `_output_casts_as_identity`."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return nncf.quantize(
                model, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(batches),
                ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
                advanced_parameters=AdvancedQuantizationParameters(
                    smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=alpha)),
            )
    finally:
        logger.setLevel(level)


def _output_casts_as_identity(model: Any) -> Any:
    """A copy of `model` whose no-op Casts that write a graph output (a pooler's `.float()` on a float tensor) are
    Identity nodes: NNCF 3.4's preprocessing removes every no-op Cast and fails with a KeyError on one whose output
    is a graph output (it looks for the output's value_info, which a graph output has not)."""
    import onnx

    from poolx.exporter.quantize import _inferred_shapes

    out = onnx.ModelProto()
    out.CopyFrom(model)
    types = {v.name: v.type.tensor_type.elem_type for v in (*_inferred_shapes(model), *model.graph.input)}
    outputs = {o.name for o in model.graph.output}
    for node in out.graph.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if node.op_type == "Cast" and node.output[0] in outputs and types.get(node.input[0]) == to:
            node.op_type = "Identity"
            del node.attribute[:]
    return out


def _int8_weight_matmuls(model: Any) -> int:
    """MatMuls whose weight input comes from a DequantizeLinear of a constant (NNCF stores such weights as int8)."""
    initializers = {t.name for t in model.graph.initializer}
    constant_dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in initializers}
    return sum(1 for n in model.graph.node if n.op_type == "MatMul" and any(i in constant_dq for i in n.input))

