"""What runs a graph: the execution providers poolx knows, each described once.

A `Provider` says everything a consumer needs to know about where a graph runs: the runtime (onnxruntime, or
OpenVINO for `openvino`), onnxruntime's name for it and the ones asked for after it, whether it is a GPU, the device that IO binding copies to, what one more model run costs
(the Embedder's batch planner weighs padding against it), its session options and, for TensorRT, the shape
profile. The Embedder, verify, bench, serve, Ray and Triton ask these objects; none compares provider strings.
Which provider may run which graph is the variant's business (`poolx.variants`).

onnxruntime and OpenVINO are imported only when a session is made or the available providers are asked for, so
this module stays light. Adding a provider means one entry here (plus its tests).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from poolx.errors import ProviderUnavailableError, UsageError

AUTO = "auto"


@dataclass(frozen=True)
class ShapeProfile:
    """min/opt/max (batch, length) of every token input: what TensorRT builds its engine for."""

    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]

    @classmethod
    def for_graph(cls, max_length: int, max_batch: int, opt_batch: int = 32, opt_length: int = 128) -> "ShapeProfile":
        """min 1×1, opt min(opt_batch, max_batch)×min(opt_length, max_length), max max_batch×max_length."""
        return cls((1, 1), (min(opt_batch, max_batch), min(opt_length, max_length)), (max_batch, max_length))

    def shapes(self, input_names: Sequence[str]) -> dict[str, str]:
        """onnxruntime's (and Triton's) `trt_profile_{min,opt,max}_shapes` strings: "input_ids:1x1,attention_mask:1x1"."""

        def text(shape: tuple[int, int]) -> str:
            return ",".join(f"{name}:{shape[0]}x{shape[1]}" for name in input_names)

        return {"trt_profile_min_shapes": text(self.min), "trt_profile_opt_shapes": text(self.opt),
                "trt_profile_max_shapes": text(self.max)}


@dataclass(frozen=True)
class Provider:
    """One place a graph runs, as poolx uses it: an onnxruntime execution provider, or OpenVINO (`runtime`).

    name: the short name users type. ort_name: onnxruntime's ("" for OpenVINO). then: onnxruntime providers asked for after it, for
    the nodes it does not take (TensorRT: CUDA). gpu: it runs on a GPU (Ray asks for one, Triton makes GPU
    instances). io_device: the device IO binding copies inputs and outputs to (None: plain `run` with numpy).
    run_cost: what one more model run costs in padded tokens (measured with MiniLM: on the CPU a run's fixed cost
    is ~1.8 ms, about 26 tokens' worth; on a GPU a small run is launch-bound, ~2.8 ms of BERT-base at batch 1,
    thousands of tokens). max_batch: the largest batch its engine is built for (TensorRT's profile), or None."""

    name: str
    ort_name: str
    then: tuple[str, ...] = ()
    gpu: bool = False
    io_device: str | None = None
    run_cost: int = 64
    max_batch: int | None = None
    runtime: str = "onnxruntime"  # or "openvino" (poolx.runtime.openvino)
    # the server gives each concurrent CPU batch one thread, except to providers that spread a run themselves (a
    # GPU; OpenVINO's streams over every core)
    spreads_runs: bool = False

    def __str__(self) -> str:
        return self.name

    @property
    def precision(self) -> str | None:
        """What OpenVINO computes a float graph in on this machine ("bf16" where the CPU has it, else "f32");
        None for onnxruntime providers, which compute in the graph's own precision."""
        if self.runtime != "openvino":
            return None
        from poolx.runtime.openvino import cpu_precision

        return cpu_precision()

    @property
    def description(self) -> str:
        """The name with the precision OpenVINO runs in: "openvino (bf16)"; the name alone otherwise."""
        return f"{self.name} ({self.precision})" if self.precision else self.name

    # ---- availability ---------------------------------------------------------------------------------------
    def ort_providers(self) -> list[str]:
        """The onnxruntime provider list to ask for (the CPU last, for what a GPU provider cannot run), or
        ProviderUnavailableError naming what this onnxruntime lacks."""
        if self.runtime != "onnxruntime":
            raise ValueError(f"{self.name} is not an onnxruntime provider")
        ort = import_onnxruntime()
        wanted = [self.ort_name, *self.then]
        available = set(ort.get_available_providers())
        missing = [p for p in wanted if p not in available]
        if missing:
            raise ProviderUnavailableError(
                f"provider {self.name!r} needs {', '.join(missing)}, which this onnxruntime ({ort.__version__}) lacks "
                f"(available: {', '.join(sorted(available))}); install onnxruntime-gpu (poolx[gpu]) on a GPU machine"
            )
        return wanted + ([CPU.ort_name] if self is not CPU else [])

    def available(self) -> bool:
        if self.runtime == "openvino":
            import importlib.util

            return importlib.util.find_spec("openvino") is not None
        try:
            self.ort_providers()
        except ProviderUnavailableError:
            return False
        return True

    def check_active(self, session: Any) -> None:
        """Raise if onnxruntime did not keep this provider (it can drop to the CPU with only a log line)."""
        if self.runtime == "onnxruntime" and self.ort_name not in session.get_providers():
            raise ProviderUnavailableError(
                f"onnxruntime did not start {self.ort_name} (active: {', '.join(session.get_providers())}); "
                "check the CUDA/TensorRT libraries onnxruntime-gpu needs"
            )

    # ---- session options ------------------------------------------------------------------------------------
    def options(
        self, *, device_id: int = 0, input_names: Sequence[str] = (), max_length: int = 0,
        cache: Path | None = None, fp16: bool = True,
    ) -> dict[str, dict[str, Any]]:
        """onnxruntime provider options by onnxruntime provider name: the device for GPU providers; for TensorRT
        fp16, engine and timing caches in `cache`, and one explicit shape profile per token input (`profile`).
        (TensorRT's options follow onnxruntime's TensorRT execution provider page; not run here: TensorRT cannot
        be installed on the machines poolx is developed on.)"""
        options: dict[str, dict[str, Any]] = {}
        if self.gpu:
            options[CUDA.ort_name] = {"device_id": str(device_id)}
        if self is TENSORRT:
            if cache is None or not input_names or max_length < 1:
                raise ValueError("TensorRT options need the graph's input names, max_length and a cache directory")
            options[self.ort_name] = {
                "device_id": str(device_id),
                "trt_fp16_enable": "True" if fp16 else "False",
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": str(cache),
                **self.profile(max_length).shapes(input_names),
            }
        return options

    def profile(self, max_length: int, max_batch: int | None = None) -> ShapeProfile:
        """The TensorRT shape profile for a graph of `max_length` tokens (at most `max_batch` or this provider's
        largest batch)."""
        return ShapeProfile.for_graph(max_length, max_batch or self.max_batch or 256)


CPU = Provider("cpu", "CPUExecutionProvider", run_cost=64)
CUDA = Provider("cuda", "CUDAExecutionProvider", gpu=True, io_device="cuda", run_cost=2048, spreads_runs=True)
TENSORRT = Provider(
    "tensorrt", "TensorrtExecutionProvider", then=("CUDAExecutionProvider",), gpu=True, io_device="cuda",
    run_cost=2048, max_batch=256, spreads_runs=True,
)
# OpenVINO's CPU plugin (poolx[openvino]): bf16 on AMX/AVX512-BF16 CPUs, f32 elsewhere; plain fp32 graphs only
OPENVINO = Provider("openvino", "", run_cost=64, runtime="openvino", spreads_runs=True)
PROVIDERS: dict[str, Provider] = {p.name: p for p in (CPU, CUDA, TENSORRT, OPENVINO)}


def get_provider(name: str | Provider) -> Provider:
    """The provider called `name` ("cpu", "cuda", "tensorrt"); a UsageError naming the choices otherwise."""
    if isinstance(name, Provider):
        return name
    try:
        return PROVIDERS[name]
    except (KeyError, TypeError):
        raise UsageError(f"unknown provider {name!r}; choose {AUTO}, {', '.join(PROVIDERS)}") from None


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ProviderUnavailableError(
            "onnxruntime is not installed: pip install 'poolx[cpu]' (or 'poolx[gpu]' for CUDA/TensorRT)"
        ) from None
    return onnxruntime


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags from /proc/cpuinfo ("avx512_vnni", "amx_bf16", ...); empty where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return frozenset(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return frozenset()


def openvino_preferred() -> bool:
    """Whether `auto` should run a plain fp32 graph with OpenVINO instead of onnxruntime's CPU provider: OpenVINO is
    installed and the CPU has bf16 (AMX/AVX512-BF16), where OpenVINO was measured 3.3-4x onnxruntime on poolx's own
    graph (issue 13). Without bf16 it computes in f32 and was not clearly faster (benchmarks/RESULTS.md)."""
    if not OPENVINO.available():
        return False
    return OPENVINO.precision == "bf16"


def gpu_available() -> bool:
    """Whether this onnxruntime can run CUDA (onnxruntime-gpu installed; whether a GPU answers shows when a
    session starts)."""
    return CUDA.available()


def default_trt_cache(graph_sha256: str | None, graph_file: str = "model.onnx") -> Path:
    """A TensorRT cache directory per graph (engines are specific to the graph, the GPU and the TensorRT version):
    ~/.cache/poolx/tensorrt/<graph sha256 prefix> (XDG_CACHE_HOME respected)."""
    digest = graph_sha256 or hashlib.sha256(graph_file.encode()).hexdigest()
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "poolx" / "tensorrt" / digest[:16]
