"""`write_triton_repo`: a poolx export as a Triton Inference Server model repository of three models:

    REPO/NAME/            ensemble: TEXT strings in, `embedding` out (the two steps below)
    REPO/NAME_tokenizer/  Python backend: 1/model.py (triton_tokenizer.py), 1/tokenizer.json, 1/poolx_tokenizer.json
    REPO/NAME_onnx/       onnxruntime backend: 1/model.onnx (and its external-data file, under its own name)

The configs are protobuf text written from plain dicts by `to_pbtxt`. On a GPU the plain fp32 graph runs on
TensorRT (fp16, engine cache, the shape profile of `poolx.providers.TENSORRT`) with CUDA for what TensorRT cannot
take; optimized and fp16 graphs run on CUDA; int8 graphs on CPU instances. The server image needs `tokenizers`
(pip install it in the image, or give the tokenizer model an EXECUTION_ENV_PATH).

Not run here: Triton itself (no server, no GPU on the machines poolx is developed on), so neither the server's
loading of these configs nor TensorRT. tests/test_triton.py checks that every config.pbtxt parses with Triton's
own protobuf schema (tritonclient's model_config_pb2) into the expected fields, that the ONNX model's config
matches the graph, and runs model.py through a stand-in for `triton_python_backend_utils`: its ids equal
TextEncoder's, and onnxruntime on the repository's model.onnx with them gives the Embedder's embeddings."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

from poolx import __version__
from poolx.deploy.triton_tokenizer import SETTINGS, TEXT
from poolx.errors import BrokenExportError, PoolxError, UsageError
from poolx.manifest import Manifest
from poolx.providers import CPU, CUDA, TENSORRT
from poolx.spec import BATCH, EMBEDDING, TensorSpec
from poolx.staging import staged_directory

KINDS = ("auto", "gpu", "cpu")
OUTPUT = "embedding"  # the ensemble's output; its input is TEXT, the tokenizer model's
VERSION = "1"
PAD_MULTIPLE = 16  # the tokenizer pads each request to a multiple of this, so more requests batch together
QUEUE_DELAY_US = 1000  # how long the ONNX model's dynamic batcher waits for more requests
TRT_WORKSPACE_BYTES = 1 << 32
TRT_CACHE = "/tmp/{name}_trt_cache"  # one level: onnxruntime's TensorRT provider creates only the last directory
TRITON_TYPES = {
    "int64": "TYPE_INT64", "int32": "TYPE_INT32", "float32": "TYPE_FP32", "float16": "TYPE_FP16",
    "float64": "TYPE_FP64", "bool": "TYPE_BOOL",
}


class Enum(str):
    """A protobuf enum value (TYPE_FP32, KIND_GPU): written bare, not quoted."""


def write_triton_repo(
    directory: str | os.PathLike[str], repo: str | os.PathLike[str], *, name: str | None = None,
    max_batch_size: int = 64, force: bool = False, kind: str = "auto",
) -> Path:
    """Write the Triton model repository `repo` for the export in `directory`; returns `repo` (absolute).
    name: the ensemble's name (default: the export directory's name, reduced to [A-Za-z0-9_-]). kind: where the
    ONNX model runs, "auto" (GPU, or the CPU for an int8 graph), "gpu" or "cpu". An existing non-empty `repo` is
    replaced only with `force`, and only once the new one is complete."""
    directory = Path(directory)
    if max_batch_size < 1:
        raise UsageError(f"max_batch_size must be at least 1, got {max_batch_size}")
    name = model_name(directory, name)
    manifest = Manifest.read(directory)
    manifest.check_files(directory)
    device = device_kind(manifest, kind)
    repo = _check_repo(Path(repo), directory, force)
    notes = [f"written by poolx {__version__} from the export {directory.name} ({manifest.source['name']})"]
    with staged_directory(repo) as tmp:
        _write_model(tmp, onnx_config(manifest, name, max_batch_size, device), onnx_files(directory, manifest),
                     notes + onnx_notes(manifest, device))
        _write_model(tmp, tokenizer_config(manifest, name, max_batch_size), tokenizer_files(directory, manifest), notes)
        _write_model(tmp, ensemble_config(manifest, name, max_batch_size), {}, notes)
    return repo


def onnx_files(directory: Path, manifest: Manifest) -> dict[str, Path]:
    """The graph as model.onnx (Triton's default name) and its external-data file under the name it references."""
    files = {"model.onnx": directory / manifest.graph_file}
    if manifest.graph.get("external_data"):
        files[manifest.graph["external_data"]] = directory / manifest.graph["external_data"]
    return files


def tokenizer_files(directory: Path, manifest: Manifest) -> dict[str, Path | str]:
    if not (directory / "tokenizer.json").is_file():
        raise BrokenExportError(f"{directory} has no tokenizer.json; re-export it")
    settings = {
        "max_length": manifest.max_length, "pad_id": int(manifest.tokenizer["pad_token_id"]),
        "input_names": manifest.io.input_names, "pad_multiple": min(PAD_MULTIPLE, manifest.max_length),
        "prompt": manifest.prompt(),  # the export's default prompt, prepended as the Embedder does
    }
    return {
        "model.py": Path(__file__).with_name("triton_tokenizer.py"),
        "tokenizer.json": directory / "tokenizer.json",
        SETTINGS: json.dumps(settings, indent=2) + "\n",
    }


def model_name(directory: Path, name: str | None) -> str:
    if name is None:
        return re.sub(r"[^A-Za-z0-9_-]+", "_", Path(os.path.abspath(directory)).name).strip("_") or "poolx"
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise UsageError(f"model name {name!r} may hold only letters, digits, '_' and '-'")
    return name


def device_kind(manifest: Manifest, kind: str) -> str:
    """"gpu" or "cpu" for the ONNX model's instances: GPU instances when CUDA may run the graph's variant (so not
    for int8), as the Embedder decides."""
    if kind not in KINDS:
        raise UsageError(f"unknown kind {kind!r}; choose {', '.join(KINDS)}")
    if CPU not in manifest.variant.runs_on and CUDA not in manifest.variant.runs_on:
        raise UsageError(
            f"this {manifest.variant.label} graph runs on OpenVINO only, and the repository is for Triton's onnxruntime "
            "backend; export the plain graph or --precision int8 (for onnxruntime) for Triton"
        )
    on_gpu = CUDA in manifest.variant.runs_on
    if kind == "gpu" and not on_gpu:
        try:
            manifest.variant.check_provider(CUDA)
        except PoolxError as e:
            raise UsageError(f"kind gpu: {e}") from None
    return kind if kind != "auto" else "gpu" if on_gpu else "cpu"


def onnx_config(manifest: Manifest, name: str, max_batch_size: int, device: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": f"{name}_onnx", "platform": "onnxruntime_onnx", "backend": "onnxruntime",
        "max_batch_size": max_batch_size,
        "input": [tensor_config(t) for t in manifest.io.inputs],
        "output": [tensor_config(t) for t in manifest.io.outputs],
        "instance_group": [{"kind": Enum(f"KIND_{device.upper()}"), "count": 1}],
        "dynamic_batching": {
            "preferred_batch_size": sorted({TENSORRT.profile(manifest.max_length, max_batch_size).opt[0], max_batch_size}),
            "max_queue_delay_microseconds": QUEUE_DELAY_US,
        },
    }
    if device == "gpu" and TENSORRT in manifest.variant.runs_on:
        accelerator = tensorrt_accelerator(manifest, name, max_batch_size)
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [accelerator]}}
    return config


def onnx_notes(manifest: Manifest, device: str) -> list[str]:
    """The comment lines of the ONNX model's config.pbtxt: where the graph runs, and why."""
    if device != "gpu":  # Triton's KIND_CPU
        if CUDA not in manifest.variant.runs_on:
            return [f"CPU instances: onnxruntime has no {manifest.variant.precision} MatMul kernels for CUDA."]
        return ["CPU instances."]
    if TENSORRT not in manifest.variant.runs_on:
        return ["CUDA only: TensorRT takes the plain fp32 export (onnxruntime's fused ops would split this graph)."]
    return [
        "TensorRT builds fp16 engines on first load (minutes) and caches them in trt_engine_cache_path; mount a",
        "volume there to keep them across restarts. With a GPU instance the onnxruntime backend registers the CUDA",
        "execution provider after TensorRT, so nodes TensorRT cannot take run on CUDA. Parameter keys as in",
        "triton-inference-server/onnxruntime_backend (README, src/onnxruntime.cc); older backends reject unknown ones.",
    ]


def tensorrt_accelerator(manifest: Manifest, name: str, max_batch_size: int) -> dict[str, Any]:
    """The TensorRT accelerator: fp16, engine and timing caches, and one shape profile per graph input, the
    profile the Embedder gives TensorRT (`poolx.providers.TENSORRT.profile`) up to Triton's max_batch_size."""
    cache = TRT_CACHE.format(name=name)
    profile = TENSORRT.profile(manifest.max_length, max_batch_size).shapes(manifest.io.input_names)
    return {"name": "tensorrt", "parameters": pb_map({
        "precision_mode": "FP16",
        "max_workspace_size_bytes": str(TRT_WORKSPACE_BYTES),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": cache,
        **profile,
    })}


def tokenizer_config(manifest: Manifest, name: str, max_batch_size: int) -> dict[str, Any]:
    return {
        "name": f"{name}_tokenizer", "backend": "python", "max_batch_size": max_batch_size,
        "input": [{"name": TEXT, "data_type": Enum("TYPE_STRING"), "dims": [1]}],
        "output": [{"name": t.name, "data_type": triton_type(t), "dims": [-1]} for t in manifest.io.inputs],
        "instance_group": [{"kind": Enum("KIND_CPU"), "count": 1}],
        "dynamic_batching": {},
    }


def ensemble_config(manifest: Manifest, name: str, max_batch_size: int) -> dict[str, Any]:
    embedding = next(t for t in manifest.io.outputs if t.name == EMBEDDING)
    tokens = {n: n for n in manifest.io.input_names}
    return {
        "name": name, "platform": "ensemble", "max_batch_size": max_batch_size,
        "input": [{"name": TEXT, "data_type": Enum("TYPE_STRING"), "dims": [1]}],
        "output": [{**tensor_config(embedding), "name": OUTPUT}],
        "ensemble_scheduling": {"step": [
            {"model_name": f"{name}_tokenizer", "model_version": -1, "input_map": pb_map({TEXT: TEXT}),
             "output_map": pb_map(tokens)},
            {"model_name": f"{name}_onnx", "model_version": -1, "input_map": pb_map(tokens),
             "output_map": pb_map({EMBEDDING: OUTPUT})},
        ]},
    }


def tensor_config(tensor: TensorSpec) -> dict[str, Any]:
    """A ModelInput/ModelOutput: the spec's dims without the batch dimension (Triton's max_batch_size adds it),
    dynamic ones -1."""
    if not tensor.shape or tensor.shape[0] != BATCH:
        raise UsageError(
            f"the graph's {tensor.name} {list(tensor.shape)} does not lead with the batch dimension, which Triton "
            f"batches along; re-export without {tensor.name} in --outputs"
        )
    dims = [d if isinstance(d, int) else -1 for d in tensor.shape[1:]]
    return {"name": tensor.name, "data_type": triton_type(tensor), "dims": dims}


def triton_type(tensor: TensorSpec) -> Enum:
    if tensor.dtype not in TRITON_TYPES:
        raise UsageError(f"the graph's {tensor.name} has dtype {tensor.dtype}, which poolx cannot map to Triton")
    return Enum(TRITON_TYPES[tensor.dtype])


def pb_map(mapping: dict[str, str]) -> list[dict[str, str]]:
    """A protobuf map field: repeated {key, value} entries."""
    return [{"key": k, "value": v} for k, v in mapping.items()]


def to_pbtxt(message: dict[str, Any], indent: int = 0) -> str:
    """Protobuf text format of a message given as a dict: a dict value is a message, a list a repeated field, an
    Enum bare, a string quoted."""
    pad, lines = "  " * indent, []
    for key, value in message.items():
        items = value if isinstance(value, list) else [value]
        if all(isinstance(item, dict) for item in items):
            for item in items:
                body = to_pbtxt(item, indent + 1)
                lines += [f"{pad}{key} {{", body, f"{pad}}}"] if body else [f"{pad}{key} {{}}"]
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [{', '.join(map(_scalar, value))}]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(lines)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (Enum, int)):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    raise TypeError(f"cannot write {value!r} in protobuf text format")


def _write_model(repo: Path, config: dict[str, Any], files: dict[str, Path | str], notes: Sequence[str]) -> None:
    """REPO/<config name>/config.pbtxt (the notes as comments) and version 1 holding `files` (a Path is copied,
    a str written)."""
    model = repo / config["name"]
    (model / VERSION).mkdir(parents=True)
    (model / "config.pbtxt").write_text("".join(f"# {n}\n" for n in notes) + to_pbtxt(config) + "\n")
    for file_name, content in files.items():
        target = model / VERSION / file_name
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        else:
            target.write_text(content)


def _check_repo(repo: Path, export: Path, force: bool) -> Path:
    """Refuse a repository path that must not be written: one overlapping the export or the current directory,
    a file, or a non-empty directory without `force` (and with it, one that is not a model repository)."""
    repo = Path(os.path.abspath(repo.expanduser()))
    real, source, cwd = repo.resolve(), export.resolve(), Path.cwd().resolve()
    if real == source or source in real.parents or real in source.parents:
        raise UsageError(f"{repo} overlaps the export {export}; choose another directory for the repository")
    if real == cwd or real in cwd.parents:
        raise UsageError(f"{repo} is the current directory or one of its parents; name a new directory")
    if repo.exists() or repo.is_symlink():
        if not repo.is_dir():
            raise UsageError(f"{repo} exists and is not a directory; choose another path for the repository")
        entries = list(repo.iterdir())
        if entries and not force:
            raise UsageError(f"{repo} already exists; pass --force to replace it, or choose another path")
        if not all((e / "config.pbtxt").is_file() for e in entries):
            raise UsageError(
                f"{repo} is not a Triton model repository (an entry without config.pbtxt); --force replaces only "
                "a model repository, choose another path"
            )
    return repo
