"""Tracing: a PooledEncoder -> an ONNX graph with the I/O spec's names, dtypes and dynamic axes, with eager
attention (the one that can output `attentions`), through one of torch's two exporters:

- "torchscript" (`dynamo=False`): the graph onnxruntime's transformer optimizer fuses (attention included, for
  BERT-style self-attention). Deprecated by torch (it warns on every export) but still shipped.
- "dynamo" (`torch.export` + `dynamo=True`, poolx.exporter.dynamo): the graph onnxscript's ort fusions rewrite
  (attention fused on rotary encoders and decoders too); opset 18 and later.

The backbone adapter names the default for its family (`BackboneAdapter.exporter`). Then the graph is written
(weights inline or as external data) and checked with onnx's checker."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from poolx.errors import ExportError, PoolxError, UsageError, first_line
from poolx.models.encoder import RAW_OUTPUTS, PooledEncoder
from poolx.spec import EXPORT_EXAMPLE_SHAPE, IOSpec

GRAPH_FILE = "model.onnx"
EXTERNAL_DATA_FILE = "model.onnx.data"
OPSETS = range(14, 21)  # what torch's TorchScript exporter writes; 17+ keeps LayerNormalization one node
DEFAULT_OPSET = 17
EXPORTERS = ("torchscript", "dynamo")


def check_exporter(exporter: str | None) -> None:
    if exporter is not None and exporter not in EXPORTERS:
        raise UsageError(f"unknown exporter {exporter!r}; choose one of: {', '.join(EXPORTERS)}")


def default_opset(exporter: str) -> int:
    from poolx.exporter import dynamo

    return dynamo.DEFAULT_OPSET if exporter == "dynamo" else DEFAULT_OPSET


def check_opset(opset: int, exporter: str) -> None:
    """`opset` is one `exporter` writes, else UsageError."""
    if exporter == "dynamo":
        from poolx.exporter import dynamo

        dynamo.check_opset(opset)
        dynamo.check_torch()
    elif opset not in OPSETS:
        raise UsageError(f"opset {opset} is not supported; use {OPSETS.start}..{OPSETS.stop - 1} (default {DEFAULT_OPSET})")
EXTERNAL_DATA_THRESHOLD = 1 << 30  # bytes of weights above which they go to model.onnx.data (protobuf caps at 2 GiB)


class GraphModule(nn.Module):
    """What gets traced: positional inputs in spec order -> a tuple of outputs in spec order."""

    def __init__(self, encoder: PooledEncoder, spec: IOSpec) -> None:
        super().__init__()
        self.encoder = encoder
        self.raw_outputs = spec.raw_outputs
        self.output_names = tuple(spec.output_names)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        out = self.encoder.encode(input_ids, attention_mask, token_type_ids, raw_outputs=self.raw_outputs)
        return tuple(out[name] for name in self.output_names)


def io_spec(encoder: PooledEncoder, raw_outputs: Sequence[str] = ()) -> IOSpec:
    """The I/O spec of `encoder` with the requested raw backbone outputs (validated here)."""
    unknown = [r for r in raw_outputs if r not in RAW_OUTPUTS]
    if unknown:
        raise UsageError(f"unknown output {unknown[0]!r}; extra outputs are: {', '.join(RAW_OUTPUTS)}")
    if "pooler_output" in raw_outputs and not encoder.has_pooler_head:
        raise UsageError(f"{type(encoder.backbone).__name__} has no pooler head, so it has no pooler_output to export")
    config = encoder.backbone.config
    return IOSpec.build(
        width=encoder.width, num_layers=encoder.num_layers, num_heads=int(config.num_attention_heads),
        output_dim=encoder.output_dim, num_labels=encoder.num_labels,
        token_type_ids=encoder.uses_token_type_ids,
        raw_outputs=[r for r in RAW_OUTPUTS if r in raw_outputs],  # canonical order, no duplicates
    )


def example_inputs(tokenizer: Any, spec: IOSpec, batch: int = EXPORT_EXAMPLE_SHAPE[0], length: int = EXPORT_EXAMPLE_SHAPE[1]) -> tuple[torch.Tensor, ...]:
    """The tracing example: real text, one row padded, shape (2, 16). verify never uses this shape."""
    texts = ["The export example.", "A second, slightly longer text traced with padding at its end."][:batch]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    if "token_type_ids" not in enc:
        enc["token_type_ids"] = torch.zeros_like(enc["input_ids"])
    return tuple(enc[name].to(torch.int64) for name in spec.input_names)


def trace(
    encoder: PooledEncoder, spec: IOSpec, tokenizer: Any, directory: Path, opset: int, exporter: str = "torchscript",
) -> Any:
    """Export with `exporter` ("torchscript": into a scratch folder of `directory`, removed after); returns the
    onnx ModelProto (weights loaded)."""
    import onnx

    module = GraphModule(encoder, spec).eval()
    args = example_inputs(tokenizer, spec)
    if exporter == "dynamo":
        from poolx.exporter.dynamo import export_dynamo

        return export_dynamo(module, args, spec, opset, f"pooler {encoder.pooler.name!r}")
    scratch = directory / ".trace"
    scratch.mkdir()
    path = scratch / GRAPH_FILE
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings and the exporter's deprecation notice
            torch.onnx.export(
                module, args, str(path), dynamo=False, opset_version=opset, do_constant_folding=True,
                input_names=spec.input_names, output_names=spec.output_names, dynamic_axes=spec.dynamic_axes(),
            )
    except PoolxError:
        raise
    except Exception as e:  # the exporter raises many types; the first line says what failed
        first = first_line(e)[:300]
        raise ExportError(f"torch.onnx.export failed for pooler {encoder.pooler.name!r}: {first}") from None
    model = onnx.load(str(path))  # also loads any external data torch wrote for > 2 GiB models
    shutil.rmtree(scratch)
    return model


def write_graph(model: Any, path: Path, spec: IOSpec, external_data: str) -> bool:
    """Write the spec's dims onto the graph's inputs and outputs (the tracer leaves some fixed sizes, such as the
    number of attention heads, as generated symbols; verify checks that the real shapes agree), store the weights
    inline or as external data at `path`, and check the file with onnx's checker. Returns whether the weights
    went to EXTERNAL_DATA_FILE."""
    import onnx

    for declared, values in ((spec.inputs, model.graph.input), (spec.outputs, model.graph.output)):
        for tensor, value in zip(declared, values):
            dims = value.type.tensor_type.shape.dim
            if len(dims) != len(tensor.shape):
                raise ExportError(f"the traced {tensor.name} has rank {len(dims)}, expected {len(tensor.shape)}")
            for dim, want in zip(dims, tensor.shape):
                if isinstance(want, str):
                    dim.dim_param = want
                else:
                    dim.dim_value = want
    weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    external = external_data == "always" or (external_data == "auto" and weight_bytes > EXTERNAL_DATA_THRESHOLD)
    onnx.save_model(
        model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
        location=EXTERNAL_DATA_FILE, size_threshold=0,
    )
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # onnx raises ValidationError and others
        raise ExportError(f"the exported graph is not valid ONNX: {str(e).splitlines()[0][:300]}") from None
    return external


