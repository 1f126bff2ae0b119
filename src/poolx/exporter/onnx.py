"""`export`: a model source + pooler -> an export directory (graph, tokenizer, pooler weights, manifest), written
atomically: everything goes into a hidden temporary sibling that is renamed into place only once the graph has
been checked against eager PyTorch. An interrupted or failed export leaves nothing at the output path."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from poolx.errors import ExportError, PoolxError, UsageError
from poolx.manifest import MANIFEST, Manifest, checksum_tree, sha256_file
from poolx.models.encoder import RAW_OUTPUTS, PooledEncoder, has_pooler_head
from poolx.models.registry import get_pooler_class
from poolx.models.loading import ModelSource, default_max_length, load_tokenizer, position_limit, resolve_source
from poolx.spec import IOSpec
from poolx.staging import staged_directory

GRAPH_FILE = "model.onnx"
EXTERNAL_DATA_FILE = "model.onnx.data"
POOLER_WEIGHTS = "pooler.safetensors"
OPSETS = range(14, 21)  # what torch's TorchScript exporter writes; 17+ keeps LayerNormalization one node
DEFAULT_OPSET = 17
EXTERNAL_DATA_THRESHOLD = 1 << 30  # bytes of weights above which they go to model.onnx.data (protobuf caps at 2 GiB)


@dataclass
class ExportResult:
    directory: Path
    manifest: Manifest
    seconds: float
    untrained: bool  # the pooler/head has learned parameters that were freshly initialised


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
    if "pooler_output" in raw_outputs and not has_pooler_head(encoder.backbone):
        raise UsageError(f"{type(encoder.backbone).__name__} has no pooler head, so it has no pooler_output to export")
    config = encoder.backbone.config
    return IOSpec.build(
        width=encoder.width, num_layers=encoder.num_layers, num_heads=int(config.num_attention_heads),
        output_dim=encoder.pooler.output_dim, num_labels=encoder.num_labels,
        token_type_ids=encoder.uses_token_type_ids,
        raw_outputs=[r for r in RAW_OUTPUTS if r in raw_outputs],  # canonical order, no duplicates
    )


def library_versions() -> dict[str, str]:
    import numpy
    import onnx
    import tokenizers
    import transformers

    from poolx import __version__

    versions = {
        "poolx": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
        "onnx": onnx.__version__, "tokenizers": tokenizers.__version__, "numpy": numpy.__version__,
    }
    with contextlib.suppress(ImportError):
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    return versions


def source_weights(path: Path) -> dict[str, str]:
    """sha256 of the weight files of a model directory, so verify knows it rebuilds from the same weights."""
    names = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin"))
    return {p.name: sha256_file(p) for p in names}


def export(
    model: str | os.PathLike[str] | None,
    output: str | os.PathLike[str],
    *,
    pooling: str | None = None,
    num_labels: int | None = None,
    raw_outputs: Sequence[str] = (),
    opset: int = DEFAULT_OPSET,
    max_length: int | None = None,
    force: bool = False,
    seed: int = 0,
    external_data: str = "auto",
    precision: str = "fp32",
    optimize: bool = False,
    target: str | None = None,
    calibration: Sequence[str] | None = None,
    **options: Any,
) -> ExportResult:
    """Export `model` (None: the packaged all-MiniLM-L6-v2; a Hugging Face or poolx directory; a cached hub id)
    with a pooler into the directory `output`: the fp32 graph, or with `optimize`/`precision`/`target` a fused,
    fp16 (CUDA) or int8 (CPU) variant of it (`optimize.Variant`); int8 calibrates on `calibration` texts (default
    the built-in ones). Raises a PoolxError subclass on any failure, leaving no output."""
    from poolx.exporter.optimize import Variant

    start = time.perf_counter()
    output = _check_output(Path(output), force)
    variant = Variant.resolve(precision, optimize, target, raw_outputs)
    if opset not in OPSETS:
        raise UsageError(f"opset {opset} is not supported; use {OPSETS.start}..{OPSETS.stop - 1} (default {DEFAULT_OPSET})")
    if external_data not in ("auto", "always", "never"):
        raise UsageError(f"external_data must be auto, always or never, got {external_data!r}")

    if pooling is not None:
        get_pooler_class(pooling)  # an unknown name fails before any model is loaded
    source = resolve_source(model)
    _check_not_source(output, source)
    tokenizer = load_tokenizer(source)
    encoder = PooledEncoder.from_pretrained(source, pooling, num_labels, seed=seed, **options).eval()
    spec = io_spec(encoder, raw_outputs)
    limit = position_limit(encoder.backbone.config, tokenizer)
    if max_length is None:
        max_length = default_max_length(source, encoder.backbone.config, tokenizer)
    elif not 2 <= max_length <= limit:
        raise UsageError(f"max_length {max_length} is out of range for this model; use 2..{limit}")

    with staged_directory(output) as tmp:
        graph = _trace(encoder, spec, tokenizer, tmp, opset)
        tokenizer.padding_side = "right"  # what the graph's poolers assume, and what the runtime does
        tokenizer.save_pretrained(tmp)
        head_state = encoder.head_state_dict()
        if head_state:
            from safetensors.torch import save_file

            save_file(head_state, str(tmp / POOLER_WEIGHTS))
        manifest = Manifest(
            source=_describe_source(source, encoder),
            pooling={
                "name": encoder.pooler.name, "options": encoder.pooler.config(),
                "output_dim": encoder.pooler.output_dim, "num_labels": encoder.num_labels,
                "weights": POOLER_WEIGHTS if head_state else None, "seed": seed,
            },
            graph={"file": GRAPH_FILE, "opset": opset, "exporter": "torchscript", "external_data": None,
                   "attention": "eager"},
            io=spec,
            tokenizer={
                "max_length": max_length, "pad_token": tokenizer.pad_token,
                "pad_token_id": int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
                "padding_side": "right",
            },
            versions=library_versions(),
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        )
        if not variant.is_plain:
            graph = _build_variant(graph, variant, encoder, manifest, tmp, calibration)
        if _finalize_graph(graph, tmp / GRAPH_FILE, spec, external_data):
            manifest.graph["external_data"] = EXTERNAL_DATA_FILE
        manifest.write(tmp)  # the parity check reads the directory as verify would
        from poolx.exporter.verify import quick_check

        quick_check(tmp, encoder, manifest)
        manifest.files = checksum_tree(tmp)
        manifest.write(tmp)
    untrained = bool(head_state) and not source.is_poolx
    return ExportResult(output, manifest, time.perf_counter() - start, untrained)


def _check_output(output: Path, force: bool) -> Path:
    """Refuse, before any model is loaded, an output that cannot or must not be written. Returns it absolute."""
    output = Path(os.path.abspath(output.expanduser()))
    cwd = Path.cwd().resolve()
    if output.resolve() == cwd or output.resolve() in cwd.parents:
        raise ExportError(f"--output {output} is the current directory or one of its parents; name a new directory")
    if output.exists() or output.is_symlink():
        if not output.is_dir():
            raise ExportError(f"{output} exists and is not a directory; choose another --output")
        if not force:
            raise ExportError(f"{output} already exists; pass --force to replace it, or choose another --output")
        if any(output.iterdir()) and not (output / MANIFEST).is_file():
            raise ExportError(
                f"{output} is not a poolx export (no {MANIFEST}) and not empty; --force replaces only an export, "
                "choose another --output"
            )
    ancestor = output.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ExportError(f"cannot create {output}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ExportError(f"cannot create {output}: {ancestor} is not writable; choose another --output")
    return output


def _check_not_source(output: Path, source: ModelSource) -> None:
    out = output.resolve()
    if out == source.path or out in source.path.parents:
        raise ExportError(f"--output {output} would overwrite the model it exports from; choose another directory")


def example_inputs(tokenizer: Any, spec: IOSpec, batch: int = 2, length: int = 16) -> tuple[torch.Tensor, ...]:
    """The tracing example: real text, one row padded, shape (2, 16). verify never uses this shape."""
    texts = ["The export example.", "A second, slightly longer text traced with padding at its end."][:batch]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    if "token_type_ids" not in enc:
        enc["token_type_ids"] = torch.zeros_like(enc["input_ids"])
    return tuple(enc[name].to(torch.int64) for name in spec.input_names)


def _trace(encoder: PooledEncoder, spec: IOSpec, tokenizer: Any, directory: Path, opset: int) -> Any:
    """Trace with torch's TorchScript exporter into a scratch folder of `directory`; returns the onnx ModelProto
    (weights loaded, the scratch folder removed)."""
    import onnx

    module = GraphModule(encoder, spec).eval()
    args = example_inputs(tokenizer, spec)
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
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ExportError(f"torch.onnx.export failed for pooler {encoder.pooler.name!r}: {first}") from None
    model = onnx.load(str(path))  # also loads any external data torch wrote for > 2 GiB models
    shutil.rmtree(scratch)
    return model


def _build_variant(
    model: Any, variant: Any, encoder: PooledEncoder, manifest: Manifest, directory: Path,
    calibration: Sequence[str] | None,
) -> Any:
    """Fuse / convert / quantize the traced graph (`optimize.build`) and record how in the manifest."""
    from poolx.exporter.calibration import CALIBRATION_TEXTS
    from poolx.exporter.optimize import build
    from poolx.runtime.tokenizer import TextEncoder
    from poolx.spec import EMBEDDING

    texts = list(calibration) if calibration else list(CALIBRATION_TEXTS)
    encode = TextEncoder(directory, manifest) if variant.precision == "int8" else None
    try:
        model, info = build(model, variant, encoder.backbone.config, encode, texts, EMBEDDING)
    except PoolxError:
        raise
    except Exception as e:  # onnxruntime's optimizer and quantizer raise many types
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ExportError(f"building the {variant.name} graph failed: {first}") from None
    manifest.graph.update(info)
    return model


def _finalize_graph(model: Any, path: Path, spec: IOSpec, external_data: str) -> bool:
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


def _describe_source(source: ModelSource, encoder: PooledEncoder) -> dict[str, Any]:
    config = encoder.backbone.config
    return {
        "name": source.name,
        "path": str(source.path),
        "poolx_model": source.is_poolx,
        "model_type": getattr(config, "model_type", None),
        "architecture": type(encoder.backbone).__name__,
        "width": encoder.width,
        "num_layers": encoder.num_layers,
        "weights_sha256": source_weights(source.path),
    }
