"""`Embedder`: texts in, float32 embeddings out, through a poolx export on onnxruntime.

It tokenizes with the exported tokenizer (the `tokenizers` library, no transformers import), sorts the texts by
token length and batches them by a token budget (so short texts are not padded to long ones), runs each batch, and
puts the rows back in the caller's order. On CUDA and TensorRT inputs and outputs are bound with IO binding; on
TensorRT the engine is built with fp16, cached on disk, and given min/opt/max shape profiles from the manifest.
A provider that cannot run is an error naming what is missing, never a silent CPU run."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from poolx.errors import PoolxError, ProviderUnavailableError, UsageError
from poolx.manifest import Manifest
from poolx.runtime.providers import PROVIDERS, import_onnxruntime
from poolx.runtime.session import create_session
from poolx.runtime.tokenizer import TextEncoder
from poolx.spec import EMBEDDING

DEFAULT_BATCH = 32
DEFAULT_MAX_TOKENS = 16384  # padded tokens per batch: bounds memory when batch_size × max_length is large
OPT_BATCH, OPT_LENGTH = 32, 128  # the TensorRT profile's optimum shape (clipped to the model's limits)
MAX_BATCH = 256  # the TensorRT profile's largest batch
# What one more model run costs, in padded tokens (measured with MiniLM: on the CPU a run's fixed cost is ~1.8 ms,
# about 26 tokens' worth; on a GPU a small run is launch-bound, ~2.8 ms of BERT-base at batch 1, thousands of tokens).
RUN_COST = {"cpu": 64, "cuda": 2048, "tensorrt": 2048}


class RuntimeFailure(PoolxError):
    """onnxruntime failed while running a batch (out of memory, a shape TensorRT's profile does not cover)."""

    exit_code = 1


class Embedder:
    """Embeds texts with the export in `directory`.

    provider: "auto" (CUDA when onnxruntime-gpu can run it and the graph is not int8, else CPU; the choice is in
    `.provider`; if onnxruntime-gpu is installed but cannot start CUDA here, auto says so in a warning and runs on
    the CPU), "cpu", "cuda" or "tensorrt" (the plain fp32 export only). threads: CPU intra-op threads (default:
    onnxruntime's). max_tokens: padded tokens per batch (default 16384). trt_cache: TensorRT engine cache directory
    (default ~/.cache/poolx/tensorrt/<graph sha256 prefix>). trt_fp16: let TensorRT build fp16 kernels (default on).
    spinning: let onnxruntime's CPU threads spin-wait between runs (lowest latency for back-to-back runs; a server
    turns it off so its event loop keeps a core).
    """

    def __init__(
        self, directory: str | os.PathLike[str], provider: str = "auto", *, threads: int | None = None,
        device_id: int = 0, max_tokens: int | None = None, trt_cache: str | os.PathLike[str] | None = None,
        trt_fp16: bool = True, check_files: bool = True, spinning: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.manifest = Manifest.read(self.directory)
        if check_files:
            self.manifest.check_files(self.directory)
        self.precision = str(self.manifest.graph.get("precision", "fp32"))
        self.provider = choose_provider(provider, self.precision, bool(self.manifest.graph.get("optimized")))
        self.device_id = device_id
        if max_tokens is not None and max_tokens < 1:
            raise UsageError(f"max_tokens must be at least 1, got {max_tokens}")
        self.max_tokens = max_tokens or DEFAULT_MAX_TOKENS
        graph = self.directory / self.manifest.graph_file
        options: dict[str, dict[str, Any]] = {"CUDAExecutionProvider": {"device_id": str(device_id)}}
        if self.provider == "tensorrt":
            cache = Path(trt_cache) if trt_cache else default_trt_cache(self.manifest)
            options["TensorrtExecutionProvider"] = tensorrt_options(self.manifest, cache, fp16=trt_fp16, device_id=device_id)
        try:
            self.session = create_session(graph, self.provider, threads, options, spinning)
        except ProviderUnavailableError as e:
            if provider != "auto":
                raise
            warnings.warn(f"auto: {e}; running on the CPU", stacklevel=2)
            self.provider = "cpu"
            self.session = create_session(graph, "cpu", threads, spinning=spinning)
        if self.precision == "fp16" and self.provider == "cpu":
            warnings.warn("this fp16 graph is built for CUDA; on the CPU onnxruntime runs it slowly", stacklevel=2)
        self.text_encoder = TextEncoder(self.directory, self.manifest)
        self.max_length = self.text_encoder.max_length
        self.width = int(self.manifest.pooling["output_dim"])
        self.truncated = 0  # texts cut to max_length so far
        self._warned = False

    def embed(
        self, texts: Sequence[str], batch_size: int = DEFAULT_BATCH, normalize: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """(len(texts), width) float32, row i for texts[i]. Texts longer than max_length are truncated (counted in
        `.truncated`, warned about once per Embedder); an empty string is embedded as the model sees it (only the
        special tokens). `progress(n)` is called after each batch with the number of texts it held."""
        if isinstance(texts, str):
            raise UsageError("embed() takes a list of texts, not one string; wrap it: embed([text])")
        texts = list(texts)
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise UsageError(f"text {bad} is a {type(texts[bad]).__name__}, not a string")
        encodings = self.text_encoder.encode(texts) if texts else []
        self._count_truncated(encodings)
        return self.embed_encoded(encodings, batch_size, normalize, progress)

    def embed_encoded(
        self, encodings: Sequence[Any], batch_size: int = DEFAULT_BATCH, normalize: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """`embed` for texts already tokenized with `.text_encoder.encode` (a server tokenizes as requests arrive)."""
        if batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {batch_size}")
        out = np.empty((len(encodings), self.width), dtype=np.float32)
        if not len(encodings):
            return out
        for rows in self.plan([len(e.ids) for e in encodings], batch_size):
            feeds = self.text_encoder.arrays([encodings[i] for i in rows])
            out[rows] = self._run(feeds)
            if progress:
                progress(len(rows))
        return l2_normalize(out) if normalize else out

    def plan(self, lengths: Sequence[int], batch_size: int) -> list[list[int]]:
        """Batches of text indices, longest texts first, each at most batch_size texts (and at most the TensorRT
        profile's largest batch) and max_tokens padded tokens (a batch is padded to its longest text). A batch also
        ends where cutting it saves more padding than a run costs (RUN_COST): the texts left, up to a batch, would
        each be padded (longest − this text's length) tokens less. On mixed lengths (a server's merged requests, a
        corpus's tail) padding every text to the longest one costs 2-4x on the CPU (benchmarks/RESULTS.md)."""
        budget = self.max_tokens
        if self.provider == "tensorrt":
            batch_size = min(batch_size, MAX_BATCH)
        run_cost = RUN_COST[self.provider]
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches: list[list[int]] = []
        current: list[int] = []
        for position, i in enumerate(order):  # lengths only fall, so the first text of a batch is its longest
            head = lengths[current[0]] if current else 0
            if current and (
                len(current) >= batch_size or (len(current) + 1) * head > budget
                or (head - lengths[i]) * min(len(order) - position, batch_size) > run_cost
            ):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        return batches

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        try:
            if self.provider == "cpu":
                return self.session.run([EMBEDDING], feeds)[0]
            return run_bound(self.session, feeds, EMBEDDING, "cuda", self.device_id)
        except Exception as e:  # onnxruntime's Fail/RuntimeException/...: out of memory, a shape outside a profile
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            shape = "x".join(str(d) for d in feeds["input_ids"].shape)
            raise RuntimeFailure(f"onnxruntime failed on a batch of {shape} tokens on {self.provider}: {first}") from None

    def _count_truncated(self, encodings: Sequence[Any]) -> None:
        cut = sum(1 for e in encodings if e.overflowing)
        self.truncated += cut
        if cut and not self._warned:
            self._warned = True
            warnings.warn(
                f"{cut} text(s) longer than {self.max_length} tokens were truncated to {self.max_length} "
                "(said once per Embedder; see .truncated for the running count)", stacklevel=3,
            )


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Each row divided by its L2 norm, in place (a zero row stays zero); returns `vectors`."""
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors


def choose_provider(provider: str, precision: str, optimized: bool = False) -> str:
    """The provider a graph runs on: "auto" resolved, and combinations that would silently run elsewhere refused:
    onnxruntime's CUDA provider has no int8 MatMul kernels (an int8 graph would fall back to the CPU), and TensorRT
    takes the plain fp32 export only (it fuses and runs fp16 itself; onnxruntime's fused contrib ops would split the
    graph, and explicit shape profiles then fail on the pieces' inputs)."""
    if provider not in ("auto", *PROVIDERS):
        raise UsageError(f"unknown provider {provider!r}; choose auto, {', '.join(PROVIDERS)}")
    if provider == "tensorrt" and (optimized or precision != "fp32"):
        raise UsageError(
            "TensorRT takes the plain fp32 export (it fuses and builds fp16 engines itself); export without "
            "--optimize/--precision for it, or use --provider cuda for this graph"
        )
    if provider == "auto":
        available = import_onnxruntime().get_available_providers()
        return "cuda" if "CUDAExecutionProvider" in available and precision != "int8" else "cpu"
    if provider != "cpu" and precision == "int8":
        raise ProviderUnavailableError(
            f"an int8 graph runs on the CPU only (onnxruntime has no int8 MatMul kernels for {provider}); "
            "export --precision fp16 for CUDA, or use --provider cpu"
        )
    return provider


def run_bound(session: Any, feeds: dict[str, np.ndarray], output: str, device: str, device_id: int = 0) -> np.ndarray:
    """One run with IO binding: inputs copied to `device` once, the output allocated there and copied back."""
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(value))
    binding.bind_output(output, device, device_id)
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()[0]


def tensorrt_options(manifest: Manifest, cache: Path, *, fp16: bool = True, device_id: int = 0) -> dict[str, Any]:
    """onnxruntime's TensorRT provider options for an export: fp16, engine and timing caches in `cache`, and one
    explicit shape profile per graph input: min 1×1, opt min(32, MAX_BATCH)×min(128, max_length), max
    MAX_BATCH×max_length. (Documented in onnxruntime's TensorRT execution provider page; not run here: TensorRT
    cannot be installed on the machines poolx is developed on.)"""
    max_length = manifest.max_length
    names = manifest.io.input_names

    def shapes(batch: int, length: int) -> str:
        return ",".join(f"{n}:{batch}x{length}" for n in names)

    return {
        "device_id": str(device_id),
        "trt_fp16_enable": "True" if fp16 else "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
        "trt_profile_min_shapes": shapes(1, 1),
        "trt_profile_opt_shapes": shapes(min(OPT_BATCH, MAX_BATCH), min(OPT_LENGTH, max_length)),
        "trt_profile_max_shapes": shapes(MAX_BATCH, max_length),
    }


def default_trt_cache(manifest: Manifest) -> Path:
    """A cache directory per graph (engines are specific to the graph, the GPU and the TensorRT version)."""
    digest = manifest.files.get(manifest.graph_file) or hashlib.sha256(manifest.graph_file.encode()).hexdigest()
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "poolx" / "tensorrt" / digest[:16]
