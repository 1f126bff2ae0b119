"""onnxruntime's transformer optimizer on a traced graph: fusions, and the fp16 conversion of the fused graph.

- Fusion (`--optimize`): EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu. onnxruntime fuses
  attention on graphs from torch's TorchScript exporter with eager attention, which is how poolx traces;
  DeBERTa's disentangled attention is not fused (its LayerNorms and GELUs are). The optimizer's model type comes
  from the backbone adapter. RMSNorm backbones (Llama, Qwen, Mistral, Gemma, EuroBERT) get
  SimplifiedLayerNormalization and SkipSimplifiedLayerNormalization: the first is an op onnxruntime defines in the
  ONNX domain itself, which onnx does not know, so its schema (onnxruntime's own) is registered with onnx before
  the graph is checked (`register_onnxruntime_schemas`).
- On graphs of the dynamo exporter (poolx.exporter.dynamo) onnxruntime's optimizer fuses no attention (and
  crashes on ModernBERT's), so `fuse` runs onnxscript's ort fusions there (`optimize_for_ort`: Attention on
  BERT-style attention, MultiHeadAttention on rotary encoders and decoders (the rotation stays unfused ops),
  SkipLayerNormalization, BiasGelu, RMSNorm as the Simplified ops), which keep each node's torch
  scope metadata; the nodes are then named by scope again (the fused ones get new names). onnxruntime's optimizer
  runs after them (attention off) only where the backbone adapter says it adds something (`dynamo_onnxruntime`:
  BigBird's tanh-GELU as FastGelu); elsewhere it adds nothing, and it crashes on ModernBERT's graph (measured on
  every family with benchmarks/exporters.py).
- fp16 (for CUDA): the fused graph converted with onnxruntime's float16 converter, inputs and outputs kept
  float32. The fused LayerNorm kernels keep their statistics in float32; the pooler and the head (every node under
  the `/pooler/` and `/head/` scopes, WK's float64 Gram part included) stay float32. Dynamo graphs carry those
  scope names too (poolx.exporter.dynamo names their nodes from the `pkg.torch.onnx.name_scopes` metadata).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

from poolx.providers import Provider

FP32_SCOPES = ("/pooler/", "/head/")  # torch module scopes of everything after the backbone
# The ops counted as fusions (onnxruntime's optimizer's own statistics, plus GroupQueryAttention)
FUSED_OPS = (
    "EmbedLayerNormalization", "Attention", "MultiHeadAttention", "GroupQueryAttention", "Gelu", "FastGelu",
    "BiasGelu", "GemmFastGelu", "LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization", "RotaryEmbedding",
)


def fuse(
    model: Any, config: Any, target: Provider, *, attention: bool = True, model_type: str = "bert",
    exporter: str = "torchscript",
) -> tuple[Any, dict[str, int]]:
    """onnxruntime's transformer optimizer on an onnx ModelProto (python fusions only, opt_level 0, so the file
    stays portable across providers), for the optimizer's `model_type` (the backbone adapter's) and the target's
    device; on a dynamo graph onnxscript's fusions instead (`fuse_dynamo`). Returns an onnxruntime OnnxModel and
    the counts of fused ops."""
    if exporter == "dynamo":
        return fuse_dynamo(model, config, target, attention=attention, model_type=model_type)
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
    register_onnxruntime_schemas(optimized.model)
    counts = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
    return optimized, counts


def fuse_dynamo(
    model: Any, config: Any = None, target: Provider | None = None, *, attention: bool = True,
    model_type: str = "bert",
) -> tuple[Any, dict[str, int]]:
    """onnxscript's ort fusions (`optimize_for_ort`) on a dynamo-exporter ModelProto, then onnxruntime's optimizer
    (attention off) where the backbone adapter of `config` asks for it; returns an onnxruntime OnnxModel (for the
    fp16 step) and the counts of fused ops (FUSED_OPS present in the graph). onnxscript's fusions cannot be told
    to leave attention alone: on an int8 graph (`attention=False`) they fuse the attention between the quantized
    projections as MultiHeadAttention, which computes on float activations (verify holds it to int8's bound)."""
    import onnx_ir as ir
    from onnxruntime.transformers.onnx_model import OnnxModel
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    from poolx.exporter.dynamo import name_nodes_by_scope
    from poolx.models.backbones import adapter_for

    del attention  # see the docstring
    with quiet():
        fused, _ = optimize_for_ort(ir.from_proto(model))
        proto = ir.to_proto(fused)
    name_nodes_by_scope(proto)
    if config is not None and adapter_for(config).dynamo_onnxruntime:
        from onnxruntime.transformers import optimizer
        from onnxruntime.transformers.fusion_options import FusionOptions

        options = FusionOptions(model_type)
        options.enable_attention = False
        with quiet():
            proto = optimizer.optimize_model(
                proto, model_type=model_type, num_heads=int(config.num_attention_heads),
                hidden_size=int(config.hidden_size), optimization_options=options, opt_level=0,
                use_gpu=bool(target is not None and target.gpu),
            ).model
    _import_contrib_domain(proto)
    register_onnxruntime_schemas(proto)
    return OnnxModel(proto), fused_op_counts(proto)


def fused_op_counts(model: Any) -> dict[str, int]:
    """How many of each FUSED_OPS op `model` holds (those it holds)."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in FUSED_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _import_contrib_domain(model: Any) -> None:
    """Fused ops live in onnxruntime's com.microsoft domain; the file must import it to be valid ONNX."""
    import onnx

    if any(n.domain == "com.microsoft" for n in model.graph.node) and not any(
        o.domain == "com.microsoft" for o in model.opset_import
    ):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))


def register_onnxruntime_schemas(model: Any) -> list[str]:
    """Register with onnx the schemas of the ops in `model`'s ONNX domain that onnx does not define at the model's
    opset but onnxruntime does, taken from onnxruntime's own definitions; returns the ops registered.

    The optimizer writes onnxruntime's contrib ops into com.microsoft, which onnx's checker skips as a foreign
    domain, but a few into the ONNX domain itself: SimplifiedLayerNormalization (every RMSNorm backbone), and
    LayerNormalization below opset 17. onnx's checker rejects those as unregistered ops ("No Op registered for
    SimplifiedLayerNormalization with domain_version of 17") although onnxruntime runs them. Registering the
    schema onnxruntime runs them by keeps the check real: the checker still checks their inputs, outputs,
    attributes and types, and still rejects an op that neither library defines. The registration lasts for the
    process (the checker runs when the graph is written, after fusion)."""
    import onnx
    from onnx.defs import OpSchema

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        return []
    wanted = set()
    for node in model.graph.node:
        if node.domain in ("", "ai.onnx"):
            try:
                onnx.defs.get_schema(node.op_type, opset, "")
            except onnx.defs.SchemaError:
                wanted.add(node.op_type)
    if not wanted:
        return []
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_c

    schemas = getattr(ort_c, "get_all_operator_schema", None)  # a build without it: the checker says what it lacks
    if schemas is None:
        return []
    versions: dict[str, Any] = {}
    for schema in schemas():
        if schema.domain == "" and schema.name in wanted and schema.since_version <= opset:
            if schema.name not in versions or schema.since_version > versions[schema.name].since_version:
                versions[schema.name] = schema
    for schema in versions.values():
        onnx.defs.register_schema(_onnx_schema(schema, OpSchema))
    return sorted(versions)


def _onnx_schema(schema: Any, OpSchema: Any) -> Any:
    """onnxruntime's definition of an op (its pybind `schema`) as an onnx `OpSchema`."""
    import onnx

    def params(formal: Any) -> list:
        return [
            OpSchema.FormalParameter(
                p.name, p.typeStr, p.description, param_option=OpSchema.FormalParameterOption(int(p.option)),
                is_homogeneous=p.isHomogeneous,
            )
            for p in formal
        ]

    attributes = []
    for a in schema.attributes.values():
        default = a._default_value  # a serialized AttributeProto; empty when the attribute has no default
        if a.required or not default:
            kind = OpSchema.AttrType(int(a.type))
            attributes.append(OpSchema.Attribute(a.name, kind, a.description, required=a.required))
        else:
            attributes.append(OpSchema.Attribute(a.name, onnx.AttributeProto.FromString(default), a.description))
    constraints = [(t.type_param_str, list(t.allowed_type_strs), t.description) for t in schema.type_constraints]
    return OpSchema(
        schema.name, schema.domain, schema.since_version, schema.doc or "",
        inputs=params(schema.inputs), outputs=params(schema.outputs), type_constraints=constraints,
        attributes=attributes,
    )


def to_fp16(optimized: Any, exporter: str = "torchscript") -> int:
    """Convert the backbone of a fused OnnxModel to float16 in place; float32 inputs/outputs and pooler. Returns
    how many nodes were kept float32 on purpose."""
    keep = [n.name for n in optimized.model.graph.node if n.name.startswith(FP32_SCOPES)]
    if exporter == "dynamo":  # onnxscript types its initializers in value_info too: the converter would convert
        # those entries, then cast the pooler's weights fp16 -> fp32 instead of keeping them float32
        graph = optimized.model.graph
        weights = {t.name for t in graph.initializer}
        entries = [v for v in graph.value_info if v.name not in weights]
        del graph.value_info[:]
        graph.value_info.extend(entries)
    with quiet():
        optimized.convert_float_to_float16(keep_io_types=True, node_block_list=keep)
        optimized.topological_sort()  # the converter appends its Cast nodes at the end
    if exporter == "dynamo":
        # The converter types values from the graph's value_info (onnxruntime's symbolic shape inference does not
        # complete on dynamo graphs; onnxscript's fusions typed every value) and leaves some of those entries
        # float32 where it converted the value: drop them, onnx and onnxruntime infer types again.
        del optimized.model.graph.value_info[:]
    return len(keep)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """onnxruntime's optimizer logs per node and warns about model producers; keep the CLI clean."""
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime"), logging.getLogger("onnxruntime.transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
