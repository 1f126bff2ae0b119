"""`export`: a model source + pooler -> an export directory (graph, tokenizer, pooler weights, manifest), written
atomically: everything goes into a hidden temporary sibling that is renamed into place only once the graph has
been checked against eager PyTorch. An interrupted or failed export leaves nothing at the output path."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from poolx.errors import ExportError, PoolxError, UsageError, first_line
from poolx.exporter.trace import (
    EXTERNAL_DATA_FILE, GRAPH_FILE, check_exporter, check_opset, default_opset, io_spec, trace, write_graph,
)
from poolx.manifest import MANIFEST, Manifest, checksum_tree, source_weights
from poolx.models.encoder import PooledEncoder
from poolx.models.loading import ModelSource, default_max_length, load_tokenizer, resolve_source
from poolx.models.registry import get_pooler_class
from poolx.progress import step
from poolx.providers import OPENVINO
from poolx.staging import staged_directory
from poolx.variants import FP16, INT8, Variant

@dataclass
class ExportResult:
    directory: Path
    manifest: Manifest
    seconds: float
    untrained: bool  # the pooler/head has learned parameters that were freshly initialised
    notes: list[str]  # what the user should know about how the model was read (e.g. a replaced pooling step)


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


def export(
    model: str | os.PathLike[str] | None,
    output: str | os.PathLike[str],
    *,
    pooling: str | None = None,
    num_labels: int | None = None,
    raw_outputs: Sequence[str] = (),
    opset: int | None = None,
    max_length: int | None = None,
    force: bool = False,
    seed: int = 0,
    external_data: str = "auto",
    precision: str = "fp32",
    optimize: bool = False,
    target: str | None = None,
    variant: Variant | None = None,
    calibration: Sequence[str] | None = None,
    normalize: bool = False,
    exporter: str | None = None,
    **options: Any,
) -> ExportResult:
    """Export `model` (None: the packaged all-MiniLM-L6-v2; a Hugging Face or poolx directory; a cached hub id)
    with a pooler into the directory `output`: the fp32 graph, or a fused, fp16 (CUDA) or int8 (CPU) variant of
    it, given as `variant` or as `precision`/`optimize`/`target` (`Variant.resolve`); int8 calibrates on
    `calibration` texts (default the built-in ones). A sentence-transformers directory is exported with its
    pipeline (Pooling, Dense, Normalize; `pooling` replaces its Pooling step) and its prompts; `normalize` adds L2
    normalization to the graph of any model. `exporter` is torch's "torchscript" or "dynamo" exporter (None: the
    backbone adapter's choice among those that write `opset`); `opset` None is the exporter's default (17, 18).
    Raises a PoolxError subclass on any failure, leaving no output."""
    start = time.perf_counter()
    output = _check_output(Path(output), force)
    if variant is None:
        variant = Variant.resolve(precision, optimize, target)
    variant.check_outputs(raw_outputs)
    if calibration is not None and variant.precision is not INT8:
        raise UsageError("--calibration is for --precision int8")
    check_exporter(exporter)
    if opset is not None:  # before loading: the named exporter's range, else torchscript's (14..20, dynamo's within)
        check_opset(opset, exporter or "torchscript")
    if external_data not in ("auto", "always", "never"):
        raise UsageError(f"external_data must be auto, always or never, got {external_data!r}")

    if pooling is not None:
        get_pooler_class(pooling)  # an unknown name fails before any model is loaded
    source = resolve_source(model)
    _check_not_source(output, source)
    tokenizer = load_tokenizer(source)
    encoder = PooledEncoder.from_pretrained(source, pooling, num_labels, seed=seed, normalize=normalize, **options).eval()
    pipeline = encoder.st_pipeline
    notes = []
    if pipeline is not None and encoder.pooling_replaced:
        notes.append(
            f"--pooling {encoder.pooler.name} replaces the directory's sentence-transformers Pooling "
            f"({'+'.join(pipeline.modes)}); the steps after it are kept: {' -> '.join(pipeline.after_pooling()) or 'none'}"
        )
    spec = io_spec(encoder, raw_outputs)
    exporter = exporter or encoder.adapter.exporter_for(opset)
    opset = default_opset(exporter) if opset is None else opset
    check_opset(opset, exporter)
    limit = encoder.position_limit
    if max_length is None:
        max_length = default_max_length(source, limit, tokenizer)
    elif not 2 <= max_length <= limit:
        raise UsageError(f"max_length {max_length} is out of range for this model; use 2..{limit}")

    with staged_directory(output) as tmp:
        step(f"tracing the model ({exporter} exporter)")
        graph = trace(encoder, spec, tokenizer, tmp, opset, exporter)
        tokenizer.padding_side = encoder.adapter.padding_side  # what the graph's poolers assume and the runtime does
        tokenizer.save_pretrained(tmp)
        from poolx.models.head import save_head

        head = save_head(tmp, encoder)  # pooler.safetensors + the pooling object a model's poolx.json holds
        prompts = {"prompts": pipeline.prompts, "default_prompt_name": pipeline.default_prompt_name} if pipeline else {}
        manifest = Manifest(
            source=_describe_source(source, encoder),
            pooling={**head, "seed": seed},
            graph={"file": GRAPH_FILE, "opset": opset, "exporter": exporter, "external_data": None,
                   "attention": "eager", "fusions": None, "quantization": None},
            io=spec,
            tokenizer={
                "max_length": max_length, "pad_token": tokenizer.pad_token,
                "pad_token_id": int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
                "padding_side": encoder.adapter.padding_side, **prompts,
            },
            versions=library_versions(),
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            variant=variant,
        )
        if not variant.is_plain:
            graph = build_variant(graph, variant, encoder, manifest, tmp, calibration)
        if write_graph(graph, tmp / GRAPH_FILE, spec, external_data):
            manifest.graph["external_data"] = EXTERNAL_DATA_FILE
        manifest.write(tmp)  # the gate reads the directory as verify would
        from poolx.parity.verify import quick_check

        step("checking the graph against eager PyTorch")
        quick_check(tmp, encoder, manifest)  # the exporter's own parity gate: nothing is moved into place without it
        manifest.files = checksum_tree(tmp)
        manifest.write(tmp)
    untrained = not source.is_poolx and (encoder.pooler.has_parameters or encoder.head is not None)
    return ExportResult(output, manifest, time.perf_counter() - start, untrained, notes)


def build_variant(
    model: Any, variant: Variant, encoder: PooledEncoder, manifest: Manifest, directory: Path,
    calibration: Sequence[str] | None,
) -> Any:
    """The variant of the traced fp32 ModelProto `model`, with how it was made recorded in the manifest's graph
    section: int8 quantizes the unfused graph (its int8 MatMuls run faster there; for OpenVINO with NNCF), then
    applies the fusions that still apply when fused; fp32 and fp16 fuse, and fp16 converts the fused graph. The
    fusions are those of the graph's exporter (manifest.graph["exporter"])."""
    from poolx.exporter.fuse import fuse, to_fp16

    exporter = manifest.graph.get("exporter", "torchscript")
    try:
        if variant.precision is INT8:
            from poolx.exporter.calibration import CALIBRATION_TEXTS
            from poolx.exporter.quantize import quantize_int8
            from poolx.runtime.tokenizer import TextEncoder
            from poolx.spec import EMBEDDING

            if variant.target is OPENVINO:  # NNCF's static QDQ graph, calibrated on OpenVINO's kernels
                from poolx.exporter.calibration import static_calibration_texts
                from poolx.exporter.quantize_openvino import quantize_int8_openvino

                texts = list(calibration) if calibration else static_calibration_texts()
                model, result = quantize_int8_openvino(model, TextEncoder(directory, manifest), texts, EMBEDDING)
            else:
                texts = list(calibration) if calibration else list(CALIBRATION_TEXTS)
                model, result = quantize_int8(model, TextEncoder(directory, manifest), texts, EMBEDDING)
            manifest.graph["quantization"] = {**result.to_json(), "calibration_texts": len(texts)}
            if variant.fused:
                optimized, manifest.graph["fusions"] = fuse(
                    model, encoder.backbone.config, variant.target, attention=False, model_type=encoder.adapter.optimizer_model_type,
                    exporter=exporter,
                )
                model = optimized.model
        elif variant.fused:
            optimized, manifest.graph["fusions"] = fuse(
                model, encoder.backbone.config, variant.target, model_type=encoder.adapter.optimizer_model_type,
                exporter=exporter,
            )
            if variant.precision is FP16:
                manifest.graph["fp32_nodes"] = to_fp16(optimized, exporter)
            model = optimized.model
    except PoolxError:
        raise
    except Exception as e:  # onnxruntime's optimizer and quantizer raise many types
        first = first_line(e)[:300]
        raise ExportError(f"building the {variant.label} graph failed: {first}") from None
    return model


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
        **({"sentence_transformers": {
            "pipeline": encoder.st_pipeline.describe(), "pooling_replaced": encoder.pooling_replaced,
        }} if encoder.st_pipeline is not None else {}),
    }
