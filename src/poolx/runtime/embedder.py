"""`Embedder`: texts in, float32 embeddings out, through a poolx export on onnxruntime.

It tokenizes with the exported tokenizer (the `tokenizers` library, no transformers import), sorts the texts by
token length and batches them by a token budget (so short texts are not padded to long ones), runs each batch, and
puts the rows back in the caller's order. On CUDA and TensorRT inputs and outputs are bound with IO binding; on
TensorRT the engine is built with fp16, cached on disk, and given min/opt/max shape profiles from the manifest.
A provider that cannot run is an error naming what is missing, never a silent CPU run."""

from __future__ import annotations

import contextlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from poolx.errors import PoolxError, ProviderUnavailableError, UsageError, first_line
from poolx.manifest import Manifest
from poolx.providers import CPU, Provider, default_trt_cache
from poolx.runtime.session import create_session, run_bound
from poolx.runtime.tokenizer import TextEncoder
from poolx.spec import EMBEDDING

DEFAULT_BATCH = 32
DEFAULT_MAX_TOKENS = 16384  # padded tokens per batch: bounds memory when batch_size × max_length is large


class RuntimeFailure(PoolxError):
    """onnxruntime failed while running a batch (out of memory, a shape TensorRT's profile does not cover)."""

    exit_code = 1


class Embedder:
    """Embeds texts with the export in `directory`.

    provider: "auto" (the graph variant's choice: CUDA when onnxruntime-gpu can run it at full speed, else CPU; if
    onnxruntime-gpu is installed but cannot start CUDA here, auto says so in a warning and runs on the CPU), "cpu",
    "cuda" or "tensorrt", checked against the variant (`Variant.check_provider`: no int8 graph on CUDA, TensorRT
    for the plain fp32 export only). `.provider` is the `poolx.providers.Provider` it runs on. threads: CPU intra-op threads (default:
    onnxruntime's). max_tokens: padded tokens per batch (default 16384). trt_cache: TensorRT engine cache directory
    (default ~/.cache/poolx/tensorrt/<graph sha256 prefix>). trt_fp16: let TensorRT build fp16 kernels (default on).
    spinning: let onnxruntime's CPU threads spin-wait between runs (lowest latency for back-to-back runs; a server
    turns it off so its event loop keeps a core). throughput: on OpenVINO, compile for several batches at once (its
    streams; default: when spinning is off) and let `embed` run that many batches concurrently, for a corpus;
    else for the latency of one batch. onnxruntime runs batches one at a time, each over all its threads.
    """

    def __init__(
        self, directory: str | os.PathLike[str], provider: str = "auto", *, threads: int | None = None,
        device_id: int = 0, max_tokens: int | None = None, trt_cache: str | os.PathLike[str] | None = None,
        trt_fp16: bool = True, check_files: bool = True, spinning: bool = True, throughput: bool | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.manifest = Manifest.read(self.directory)
        if check_files:
            self.manifest.check_files(self.directory)
        self.variant = self.manifest.variant
        self.provider: Provider = self.variant.choose(provider)
        self.device_id = device_id
        if max_tokens is not None and max_tokens < 1:
            raise UsageError(f"max_tokens must be at least 1, got {max_tokens}")
        if threads is not None and threads < 1:
            raise UsageError(f"threads must be at least 1 (or None: all cores), got {threads}")
        self.max_tokens = max_tokens or DEFAULT_MAX_TOKENS
        graph = self.directory / self.manifest.graph_file
        cache = Path(trt_cache) if trt_cache else default_trt_cache(self.manifest.files.get(self.manifest.graph_file))
        try:
            options = self.provider.options(
                device_id=device_id, input_names=self.manifest.io.input_names, max_length=self.manifest.max_length,
                cache=cache, fp16=trt_fp16,
            )
            self.session = create_session(graph, self.provider, threads, options, spinning, throughput)
        except ProviderUnavailableError as e:
            if provider != "auto":
                raise
            warnings.warn(f"auto: {e}; running on the CPU", stacklevel=2)
            self.provider = CPU
            self.session = create_session(graph, CPU, threads, spinning=spinning)
        slow = self.variant.slow_on(self.provider)
        if slow:
            warnings.warn(slow, stacklevel=2)
        self.text_encoder = TextEncoder(self.directory, self.manifest)
        self.max_length = self.text_encoder.max_length
        self.width = int(self.manifest.pooling["output_dim"])
        # sentence-transformers prompts recorded at export ("query: " ...), prepended as text, as encode() does
        self.prompts: dict[str, str] = self.manifest.prompts
        self.default_prompt_name: str | None = self.manifest.tokenizer.get("default_prompt_name")
        self.normalized = self.manifest.normalizes  # the graph L2-normalizes
        self.truncated = 0  # texts cut to max_length so far
        self._warned = False

    def prompt(self, name: str | None = None) -> str:
        """The text prepended to each text: the export's prompt `name` (a sentence-transformers directory's
        `prompts`), or by default its default prompt ("" when it has none), as `SentenceTransformer.encode` does.
        An unknown name is a UsageError naming the ones there are."""
        return self.manifest.prompt(name)

    def encode(self, texts: Sequence[str], prompt_name: str | None = None) -> list[Any]:
        """The texts tokenized as the graph takes them, with the prompt prepended (see `prompt`)."""
        return self.text_encoder.encode(texts, self.prompt(prompt_name))  # a long text is cut before it is tokenized

    def embed(
        self, texts: Sequence[str], batch_size: int = DEFAULT_BATCH, normalize: bool = False,
        progress: Callable[[int], None] | None = None, prompt_name: str | None = None,
    ) -> np.ndarray:
        """(len(texts), width) float32, row i for texts[i]. The export's default prompt, or `prompt_name`, is
        prepended to each text (see `prompt`). Texts longer than max_length are truncated (counted in
        `.truncated`, warned about once per Embedder); an empty string is embedded as the model sees it (its
        special tokens; with a tokenizer that adds none, the pad token, attended). Vectors are unit length when
        the export normalizes (`.normalized`) or `normalize` is set.
        `progress(n)` is called after each batch with the number of texts it held."""
        if isinstance(texts, str):
            raise UsageError("embed() takes a list of texts, not one string; wrap it: embed([text])")
        texts = list(texts)
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise UsageError(f"text {bad} is a {type(texts[bad]).__name__}, not a string")
        encodings = self.encode(texts, prompt_name) if texts else []
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
        batches = self.plan([len(e.ids) for e in encodings], batch_size)
        run = lambda rows: self._run(self.text_encoder.arrays([encodings[i] for i in rows]))  # noqa: E731
        parallel = getattr(self.session, "parallel", 1)  # OpenVINO compiled for throughput: its streams at once
        with ThreadPoolExecutor(parallel) if parallel > 1 and len(batches) > 1 else contextlib.nullcontext() as pool:
            for rows, vectors in zip(batches, pool.map(run, batches) if pool else map(run, batches)):
                out[rows] = vectors
                if progress:
                    progress(len(rows))
        return l2_normalize(out) if normalize and not self.normalized else out

    def plan(self, lengths: Sequence[int], batch_size: int) -> list[list[int]]:
        """Batches of text indices, longest texts first, each at most batch_size texts (and at most the TensorRT
        provider's largest batch, TensorRT's profile) and max_tokens padded tokens (a batch is padded to its longest text). A batch also
        ends where cutting it saves more padding than a run costs (`Provider.run_cost`): the texts left, up to a batch, would
        each be padded (longest − this text's length) tokens less. On mixed lengths (a server's merged requests, a
        corpus's tail) padding every text to the longest one costs 2-4x on the CPU (benchmarks/RESULTS.md)."""
        budget = self.max_tokens
        if self.provider.max_batch:
            batch_size = min(batch_size, self.provider.max_batch)
        run_cost = self.provider.run_cost
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
            if self.provider.io_device is None:
                return self.session.run([EMBEDDING], feeds)[0]
            return run_bound(self.session, feeds, EMBEDDING, self.provider.io_device, self.device_id)
        except Exception as e:  # onnxruntime's Fail/RuntimeException/...: out of memory, a shape outside a profile
            first = first_line(e)[:300]
            shape = "x".join(str(d) for d in feeds["input_ids"].shape)
            raise RuntimeFailure(f"{self.provider.runtime} failed on a batch of {shape} tokens on {self.provider}: {first}") from None

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
