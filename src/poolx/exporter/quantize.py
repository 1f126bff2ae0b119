"""int8 for the CPU: onnxruntime's dynamic-quantization graph on the backbone's MatMuls (DynamicQuantizeLinear +
MatMulInteger, per-channel weights), after a SmoothQuant-style rescaling that moves activation outliers into the
weights. The graph is the one `onnxruntime.quantization.quantize_dynamic` writes, bit for bit (tested), built here
with the weights quantized in vectorized numpy: its Python loop over every output channel took most of an int8
export's time, once per rescaling exponent tried.

Why the rescaling: transformer activations carry a few outlier channels (all-MiniLM-L6-v2: channel 99 of the
LayerNorm outputs reaches ~30 while the rest stay below ~3). Dynamic quantization gives each activation tensor one
scale, so the outlier flattens every other channel into a handful of int8 steps: plain per-channel dynamic int8
reaches only ~0.97 min cosine on the verify texts. For a MatMul ``X·W`` and a per-input-channel vector ``s``,
``X·W = (X / s)·(diag(s)·W)`` exactly; with ``s_j = amax(X_j)^α / amax(W_j)^(1-α)`` the activation range is evened
out and the weights (quantized per output column) absorb it. ``X / s`` is one Mul in front of each group of
MatMuls that share an input (Q, K and V share one).

The channel maxima are measured by running the fp32 graph on calibration texts (`calibration.CALIBRATION_TEXTS`, or
the user's own); α is chosen from a small grid by the min cosine against the fp32 graph on those texts. The
pooler, the head and everything outside the backbone stay fp32. Weights are symmetric int8 (onnxruntime's fast
U8S8 kernels); on a CPU without VNNI, whose U8S8 kernels may saturate, asymmetric uint8 when int8 weights cannot
reach the bound (`weight_kinds`)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from poolx.errors import ExportError
from poolx.parity.runners import OnnxRunner, Outputs, compare_runs
from poolx.progress import step
from poolx.spec import BATCH, TensorSpec
from poolx.variants import INT8

ALPHAS = (None, 0.5, 0.6, 0.7, 0.8)  # rescaling exponents tried; None: no rescaling
TARGET_COSINE = 0.995  # min cosine against fp32 on the calibration texts; verify holds int8 to 0.99
CALIBRATION_BATCH = 8
FP32_PREFIXES = ("/pooler/", "/head/")  # node-name scopes the quantizer leaves alone (torch module names)

Encode = Callable[[Sequence[str]], dict[str, np.ndarray]]


@dataclass
class QuantizeResult:
    alpha: float | None  # the rescaling exponent chosen (None: no rescaling won)
    calibration_cosine: float  # min cosine against the fp32 graph on the calibration texts
    quantized: int  # MatMuls now int8
    kept_fp32: list[str] = field(default_factory=list)  # MatMul nodes left fp32 to hold the accuracy
    tried: dict[str, float] = field(default_factory=dict)  # alpha -> min cosine with every group int8
    signed_weights: bool = True  # symmetric int8 weights (U8S8 kernels), else asymmetric uint8 (U8U8 kernels): weight_kinds

    def to_json(self) -> dict[str, Any]:
        kind = "symmetric QInt8" if self.signed_weights else "asymmetric QUInt8 (int8 weights missed the bound on this CPU without VNNI)"
        return {
            "method": f"dynamic quantization (onnxruntime's graph): int8 MatMuls, per-channel {kind} weights, "
            "per-tensor uint8 activations, after SmoothQuant-style per-channel rescaling",
            "weights": "int8" if self.signed_weights else "uint8", "alpha": self.alpha, "calibration_min_cosine": round(self.calibration_cosine, 6),
            "quantized_matmuls": self.quantized, "kept_fp32": self.kept_fp32, "alphas_tried": self.tried,
        }


def quantize_int8(
    model: Any, encode: Encode, texts: Sequence[str], output: str,
    alphas: Sequence[float | None] = ALPHAS, min_cosine: float = TARGET_COSINE,
) -> tuple[Any, QuantizeResult]:
    """The int8 version of the fp32 graph `model` (an onnx ModelProto, weights inline). The rescaling exponent is the one
    of `alphas` whose int8 graph has the best min cosine of `output` against the fp32 graph on the calibration
    texts; then, while that cosine is below `min_cosine`, the MatMul group with the largest simulated int8 error is
    kept fp32 (at most a third of them; FFN down-projections, whose inputs follow GELU, are the usual ones)."""
    import onnx

    groups = weight_groups(model)
    if not groups:
        raise ExportError("the graph has no MatMul with constant weights to quantize; int8 would change nothing")
    weights = group_weights(model, groups)
    batches = _batches(encode, texts)
    with tempfile.TemporaryDirectory(prefix="poolx-int8-") as tmp:
        work = Path(tmp)
        source = work / "fp32.onnx"
        onnx.save_model(model, str(source))
        probe = _probe(model, groups, work)
        amax = activation_ranges(probe, batches)
        reference = _run(source, output, batches)
        attempts = 0
        errors_at: dict[float | None, dict[str, float]] = {}  # each group's simulated int8 error, per alpha

        def attempt(alpha: float | None, kept: Sequence[str], signed: bool) -> tuple[float, Path]:
            nonlocal attempts
            attempts += 1
            path = work / f"candidate-{attempts}.onnx"  # kept, so the winner need not be quantized again
            smoothed = _smoothed(model, groups, weights, amax, dict.fromkeys(groups, alpha))
            _quantize(smoothed, path, [model.graph.node[i].name for t in kept for i in groups[t]], signed)
            return _min_cosine(_run(path, output, batches), reference, output), path

        for signed in weight_kinds():
            kind = "int8" if signed else "uint8"
            candidates = {}
            for k, alpha in enumerate(alphas, 1):
                step(f"int8: {kind} weights, rescaling alpha {alpha} ({k} of {len(alphas)}) on {len(texts)} calibration texts")
                candidates[alpha] = attempt(alpha, [], signed)
            tried = {alpha: cosine for alpha, (cosine, _) in candidates.items()}
            alpha = max(alphas, key=lambda a: tried[a])
            cosine, path = candidates[alpha]
            kept: list[str] = []
            if cosine < min_cosine:  # simulate each group's int8 error only when some must stay fp32
                if alpha not in errors_at:  # the uint8 pass may pick another alpha than the int8 one
                    errors_at[alpha] = simulated_errors(probe, batches, weights, amax, alpha)
                worst_first = sorted(groups, key=lambda t: -errors_at[alpha][t])
                while cosine < min_cosine and len(kept) < len(groups) // 3:
                    step(f"int8: min cosine {cosine:.4f} < {min_cosine}; keeping {len(kept) + 1} MatMul group(s) fp32")
                    kept.append(worst_first[len(kept)])
                    cosine, path = attempt(alpha, kept, signed)
            if cosine >= min_cosine:
                break
        quantized = onnx.load(str(path))
    if cosine < min_cosine:
        raise ExportError(
            f"int8 reaches min cosine {cosine:.4f} against fp32 on the calibration texts, below {min_cosine} even "
            f"with {len(kept)} MatMul groups kept fp32; use --precision fp32, or --calibration with your own texts"
        )
    return quantized, QuantizeResult(
        alpha, cosine, sum(1 for n in quantized.graph.node if n.op_type == "MatMulInteger"),
        [model.graph.node[i].name for t in kept for i in groups[t]],
        {"none" if a is None else str(a): round(c, 6) for a, c in tried.items()}, signed,
    )


def weight_kinds() -> tuple[bool, ...]:
    """The weight kinds int8 tries, fastest first: symmetric int8 (True), then, on a CPU without VNNI, asymmetric
    uint8 (False). onnxruntime runs int8 weights with its U8S8 kernels, uint8 weights with U8U8 kernels, which took
    1.5-2x as long on MiniLM at 32 x 128 in a side run on an AVX512-VNNI AMD EPYC (uint8 forced; not a committed
    figure). Without VNNI the U8S8 kernels (AVX2 `vpmaddubsw`) add pairs of uint8 x int8 products in saturating
    int16, so int8 weights may miss the bound there (an earlier session measured 0.9865 on an AVX2 EPYC, before
    groups could be kept fp32): the measured cosine on the exporting CPU decides, and uint8 is the fallback.
    Whether MiniLM keeps int8 weights on an AVX2 CPU was not measured (no such CPU in the session that made
    this change)."""
    return (True,) if has_vnni() else (True, False)


def weight_groups(model: Any) -> dict[str, list[int]]:
    """input tensor name -> indices of the backbone MatMul nodes that multiply it by a 2-D constant weight."""
    initializers = {t.name: t for t in model.graph.initializer}
    groups: dict[str, list[int]] = {}
    for index, node in enumerate(model.graph.node):
        if node.op_type != "MatMul" or node.name.startswith(FP32_PREFIXES):
            continue
        weight = initializers.get(node.input[1])
        if weight is not None and len(weight.dims) == 2:
            groups.setdefault(node.input[0], []).append(index)
    return groups


def group_weights(model: Any, groups: dict[str, list[int]]) -> dict[str, list[np.ndarray]]:
    """input tensor name -> the weights of its group's MatMuls (`weight_groups`), as numpy arrays."""
    from onnx import numpy_helper

    initializers = {t.name: t for t in model.graph.initializer}
    return {tensor: [numpy_helper.to_array(initializers[model.graph.node[i].input[1]]) for i in indices]
            for tensor, indices in groups.items()}


def _probe(model: Any, groups: dict[str, list[int]], work: Path) -> tuple[Any, list[str]]:
    """A session on a copy of `model` that also outputs every group's input, and those inputs' names."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for name in groups:
        if name not in known:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    path = work / "probe.onnx"
    onnx.save_model(probe, str(path))
    return OnnxRunner(path, names=list(groups)), list(groups)


def _activations(probe: Any, batches: list[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """Per batch: every group's input as (tokens, channels), padding positions included (the dynamic quantizer's
    per-tensor scale sees them too)."""
    runner, names = probe
    for feeds in batches:
        values = runner.run(feeds)
        yield {n: values[n].reshape(-1, values[n].shape[-1]) for n in names}


def activation_ranges(probe: Any, batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-channel max |x| of every group's input over the calibration batches."""
    amax: dict[str, np.ndarray] = {}
    for acts in _activations(probe, batches):
        for name, x in acts.items():
            amax[name] = np.maximum(amax.get(name, 0.0), np.abs(x).max(axis=0))
    return amax


def smoothing_scale(amax: np.ndarray, weights: list[np.ndarray], alpha: float | None) -> np.ndarray:
    """s_j = amax(X_j)^α / amax(W_j)^(1-α) per input channel j (ones when alpha is None)."""
    if alpha is None:
        return np.ones_like(amax, dtype=np.float32)
    w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    return (np.maximum(amax, 1e-5) ** alpha / np.maximum(w_max, 1e-5) ** (1 - alpha)).astype(np.float32)


def simulated_errors(
    probe: Any, batches: list[dict[str, np.ndarray]], weights: dict[str, list[np.ndarray]],
    amax: dict[str, np.ndarray], alpha: float | None, rows: int = 256,
) -> dict[str, float]:
    """Relative error ||int8(X/s)·int8(sW) - X·W|| / ||X·W|| of every group, simulating what onnxruntime computes
    (per-tensor asymmetric uint8 activations over the whole batch, per-column symmetric int8 weights), on `rows`
    sampled tokens per batch."""
    rng = np.random.default_rng(0)
    num = dict.fromkeys(weights, 0.0)
    den = dict.fromkeys(weights, 0.0)
    scales = {t: smoothing_scale(amax[t], weights[t], alpha) for t in weights}
    quantized = {t: [_fake_quant_weight(w * scales[t][:, None]) for w in weights[t]] for t in weights}
    for acts in _activations(probe, batches):
        for t, x in acts.items():
            pick = rng.choice(len(x), size=min(rows, len(x)), replace=False)
            xs = x / scales[t]
            lo, hi = min(0.0, float(xs.min())), max(0.0, float(xs.max()))
            step = (hi - lo) / 255 or 1.0
            zero = np.clip(np.round(-lo / step), 0, 255)
            xq = (np.clip(np.round(xs[pick] / step) + zero, 0, 255) - zero) * step
            for w, wq in zip(weights[t], quantized[t]):
                exact = x[pick] @ w
                den[t] += float((exact * exact).sum())
                num[t] += float(((xq @ wq - exact) ** 2).sum())
    return {t: (num[t] / max(den[t], 1e-30)) ** 0.5 for t in weights}


def _fake_quant_weight(w: np.ndarray) -> np.ndarray:
    step = np.maximum(np.abs(w).max(axis=0, keepdims=True), 1e-12) / 127
    return np.clip(np.round(w / step), -127, 127) * step


def _smoothed(
    model: Any, groups: dict[str, list[int]], weights: dict[str, list[np.ndarray]], amax: dict[str, np.ndarray],
    alpha: dict[str, float | None],
) -> Any:
    """A copy of `model` with X·W rewritten as (X·(1/s))·(diag(s)·W) for every group whose alpha is not None.
    Node order is kept, with each Mul inserted before its first consumer."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    initializers = {t.name: t for t in out.graph.initializer}
    inserted: dict[str, Any] = {}  # scaled tensor -> the Mul that makes it, placed before its first consumer
    for index, (tensor, indices) in enumerate(groups.items()):
        if alpha[tensor] is None:
            continue
        s = smoothing_scale(amax[tensor], weights[tensor], alpha[tensor])
        inv, scaled = f"poolx_smooth_{index}_inv", f"poolx_smooth_{index}_x"
        for i, w in zip(indices, weights[tensor]):
            node = out.graph.node[i]
            initializers[node.input[1]].CopyFrom(numpy_helper.from_array(w * s[:, None], node.input[1]))
            node.input[0] = scaled
        out.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv))
        inserted[scaled] = onnx.helper.make_node("Mul", [tensor, inv], [scaled], name=f"poolx_smooth_{index}/Mul")
    ordered = []
    for node in out.graph.node:  # each Mul right before its first consumer keeps the graph topologically sorted
        for name in node.input:
            if name in inserted:
                ordered.append(inserted.pop(name))
        ordered.append(node)
    del out.graph.node[:]
    out.graph.node.extend(ordered)
    return out


def has_vnni() -> bool:
    """Whether this CPU has VNNI (AVX512-VNNI, AVX-VNNI or AMX-INT8). Without it onnxruntime's U8S8 MatMul kernels
    (AVX2 `vpmaddubsw`) add pairs of uint8×int8 products in saturating int16: with full-range int8 weights the sums
    can clip (`weight_kinds` then measures whether they do). Read from /proc/cpuinfo; elsewhere assume VNNI is
    absent."""
    from poolx.providers import cpu_flags

    return not cpu_flags().isdisjoint({"avx512_vnni", "avx_vnni", "amx_int8"})


def _quantize(model: Any, target: Path, keep_fp32: Sequence[str] = (), signed: bool = True) -> None:
    """Write the int8 graph of `model` to `target`: the graph onnxruntime's dynamic quantizer (`quantize_dynamic`,
    per-channel, MatMul only) writes, built here with the weights quantized in vectorized numpy (`quantize_matmuls`)
    instead of its Python loop over every output channel, which took most of an int8 export's time."""
    import onnx

    excluded = {n.name for n in model.graph.node if n.name.startswith(FP32_PREFIXES)} | set(keep_fp32)
    onnx.save_model(quantize_matmuls(model, excluded, signed), str(target))


def quantize_weight(weight: np.ndarray, signed: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(quantized weight, scale, zero point) per output column of a (K, N) float32 weight, exactly as onnxruntime's
    quantizer computes them (`compute_scale_zp`, `quantize_nparray`): symmetric int8 in [-127, 127] with zero point
    0 when `signed`, else asymmetric uint8 over [min(0, w), max(0, w)]; a column of zeros gets scale 1."""
    rmin = np.minimum(weight.min(axis=0), 0.0).astype(np.float32)
    rmax = np.maximum(weight.max(axis=0), 0.0).astype(np.float32)
    if signed:
        qmin, qmax, dtype = -127, 127, np.int8
        rmax = np.maximum(np.abs(rmin), np.abs(rmax))
        rmin = -rmax
    else:
        qmin, qmax, dtype = 0, 255, np.uint8
    scale64 = (rmax.astype(np.float64) - rmin.astype(np.float64)) / float(qmax - qmin)
    degenerate = scale64 < np.finfo(np.float32).tiny
    scale64 = np.where(degenerate, 1.0, scale64)
    if signed:
        zero = np.zeros_like(scale64)
    else:
        zero = np.where(degenerate, 0.0, np.round(qmin - rmin.astype(np.float64) / scale64))
    scale = scale64.astype(np.float32)
    quantized = np.clip(np.round(weight / scale) + zero.astype(np.float32), qmin, qmax).astype(dtype)
    return quantized, scale, zero.astype(dtype)


def quantize_matmuls(model: Any, excluded: set[str], signed: bool) -> Any:
    """A copy of `model` with every MatMul by a 2-D constant weight (outside `excluded`) made dynamic int8:
    DynamicQuantizeLinear on its input (one per input tensor, shared by the MatMuls that read it), MatMulInteger
    with the per-column quantized weight, Cast to float and Mul by input scale x weight scale: the node pattern
    onnxruntime's quantizer writes and its session fuses (MatMulIntegerToFloat / DynamicQuantizeMatMul)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    # The shapes of the fp32 graph's tensors, as onnxruntime's quantizer records them: its session fuses by them
    # (without them each MatMul's bias Add stays a node of its own).
    shapes = _inferred_shapes(model)
    if shapes:
        del out.graph.value_info[:]
        out.graph.value_info.extend(shapes)
    initializers = {t.name: t for t in out.graph.initializer}
    dynamic: dict[str, tuple[str, str, str]] = {}  # input -> its quantized, scale and zero-point names
    replaced: set[str] = set()
    nodes = []
    for node in out.graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is None or len(weight.dims) != 2 or node.name in excluded:
            nodes.append(node)
            continue
        x, w, y = node.input[0], node.input[1], node.output[0]
        if x not in dynamic:
            dynamic[x] = (f"{x}_quantized", f"{x}_scale", f"{x}_zero_point")
            nodes.append(helper.make_node("DynamicQuantizeLinear", [x], list(dynamic[x]), name=f"{x}_QuantizeLinear"))
        xq, xs, xz = dynamic[x]
        if w not in replaced:
            q, scale, zero = quantize_weight(numpy_helper.to_array(weight).astype(np.float32), signed)
            out.graph.initializer.extend([
                numpy_helper.from_array(q, f"{w}_quantized"), numpy_helper.from_array(scale, f"{w}_scale"),
                numpy_helper.from_array(zero, f"{w}_zero_point"),
            ])
            replaced.add(w)
        scales, integer, cast = f"{node.name}_quant_scales_mul:0", f"{y}_output_quantized", f"{y}_output_quantized_cast_output"
        nodes += [
            helper.make_node("Mul", [xs, f"{w}_scale"], [scales], name=f"{node.name}_quant_scales_mul"),
            helper.make_node("MatMulInteger", [xq, f"{w}_quantized", xz, f"{w}_zero_point"], [integer], name=f"{node.name}_quant"),
            helper.make_node("Cast", [integer], [cast], name=f"{node.name}_quant_output_scale_mul_cast", to=TensorProto.FLOAT),
            helper.make_node("Mul", [cast, scales], [y], name=f"{node.name}_quant_output_scale_mul"),
        ]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    still_used = {i for n in out.graph.node for i in n.input}
    kept = [t for t in out.graph.initializer if t.name not in replaced or t.name in still_used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    return out


def _inferred_shapes(model: Any) -> list[Any]:
    """onnx's shape inference of `model` (its value_info entries), run on a copy whose large weights carry only
    their type and dims: the same shapes (inference reads the values of small constants only, such as Reshape
    targets) in a tenth of the time on MiniLM, and for graphs over protobuf's 2 GB too. [] if inference fails."""
    import onnx

    light = onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import, functions=model.functions)
    for part in ("node", "input", "output", "value_info"):
        getattr(light.graph, part).extend(getattr(model.graph, part))
    for tensor in model.graph.initializer:
        if len(tensor.raw_data) > 1024 or tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.EXTERNAL:
            light.graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
        else:
            light.graph.initializer.append(tensor)
    try:
        return list(onnx.shape_inference.infer_shapes(light).graph.value_info)
    except Exception:  # onnx raises several types; the session fuses less without the shapes, the graph is the same
        return []


def _batches(encode: Encode, texts: Sequence[str]) -> list[dict[str, np.ndarray]]:
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    return [encode([texts[i] for i in order[k:k + CALIBRATION_BATCH]]) for k in range(0, len(order), CALIBRATION_BATCH)]


def _run(graph: Path, output: str, batches: list[dict[str, np.ndarray]]) -> list[Outputs]:
    runner = OnnxRunner(graph, names=[output])
    return [runner.run(feeds) for feeds in batches]


def _min_cosine(got: list[Outputs], reference: list[Outputs], output: str) -> float:
    """The int8 graph's min row cosine against the fp32 graph over the calibration batches (the comparison
    verify uses, with int8's bound)."""
    spec = [TensorSpec(output, "float32", (BATCH, "width"))]
    cases = [f"calibration batch {i}" for i in range(len(got))]
    return compare_runs(got, reference, cases, spec, INT8.tolerance)[0].min_cosine
