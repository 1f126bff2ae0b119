"""OpenVINO running a poolx graph on the CPU, behind the interface poolx uses of an onnxruntime session.

OpenVINO reads the exported `model.onnx` itself (no conversion step, no second file) and compiles it for the CPU
plugin in the best precision the CPU has: bf16 where it has AVX512-BF16 or AMX (OpenVINO's default there; its
MatMuls then run on AMX tiles, which onnxruntime's CPU provider does not use), f32 otherwise. That precision is the
provider's, said by `.precision` and in the Embedder's, verify's and the server's reports; verify holds a bf16 run
to `BF16_TOLERANCE` against eager fp32.

Why the `openvino` package and not onnxruntime-openvino's execution provider: both read the same graph and were
within 10% of each other in issue 13's measurements (32 x 128: 100 vs 97 ms; 10,000 texts: 930 vs 846 texts/s,
the package ahead with two streams), but onnxruntime-openvino installs its own `onnxruntime` module, which cannot
sit beside poolx[cpu]'s or poolx[gpu]'s onnxruntime in one environment; the package is an extra like any other.

A session holds a small pool of infer requests (OpenVINO's optimal number for the compiled model): `run` is safe
from several threads at once, as an onnxruntime session's is, and concurrent runs (the server's) use the CPU
plugin's streams."""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any, Sequence

from poolx.errors import BrokenExportError, ProviderUnavailableError, first_line

BF16, F32 = "bf16", "f32"


def import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise ProviderUnavailableError("OpenVINO is not installed: pip install 'poolx[openvino]'") from None
    return openvino


_PRECISION: str | None = None


def cpu_precision() -> str:
    """The precision OpenVINO's CPU plugin runs a float graph in on this machine: bf16 where the CPU has it
    (AVX512-BF16 or AMX, reported by the plugin as BF16), else f32."""
    global _PRECISION
    if _PRECISION is None:
        core = import_openvino().Core()
        _PRECISION = BF16 if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else F32
    return _PRECISION


class OpenVinoSession:
    """A graph compiled by OpenVINO for the CPU. `run(names, feeds)`, `get_outputs()`, `get_providers()` as an
    onnxruntime session has them; `.precision` is what it computes in ("bf16" or "f32"). threads: CPU threads
    (default: all). throughput: compile for several parallel streams (a server's concurrent requests, a corpus's
    batches) instead of the lowest latency of one request (every core on each run); `.parallel` is how many runs
    it takes at once (OpenVINO's optimal number of infer requests: 1 for latency)."""

    def __init__(self, graph: str | Path, threads: int | None = None, throughput: bool = False,
                 precision: str | None = None) -> None:
        ov = import_openvino()
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "THROUGHPUT" if throughput else "LATENCY",
            "INFERENCE_PRECISION_HINT": precision or cpu_precision(),
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:  # read as ONNX first: OpenVINO would try its other frontends (TensorFlow's logs) on an unreadable file
            outputs = _graph_outputs(graph)
        except Exception as e:  # protobuf's DecodeError, OSError, onnx's errors
            raise BrokenExportError(f"{graph} is not a readable ONNX file ({first_line(e)[:200]}); re-export") from None
        try:
            self.model = ov.Core().compile_model(str(graph), "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError: "Exception from <source file>:" then its message
            lines = [line for line in str(e).splitlines() if line.strip() and not line.startswith("Exception from ")]
            raise BrokenExportError(f"OpenVINO cannot compile {graph}: {(lines or [first_line(e)])[0][:300]}") from None
        # what the plugin compiled, not what was asked: a CPU without bf16 runs f32 whatever the hint says
        # (an `openvino.Type`: its str() is "<Type: 'bfloat16'>", so it is compared with the type, not a name)
        self.precision = BF16 if self.model.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16 else F32
        self.parallel = max(1, int(self.model.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))  # runs at once
        self._requests: queue.Queue = queue.Queue()
        for _ in range(self.parallel):
            self._requests.put(self.model.create_infer_request())
        # a port has every name of its tensor; the graph's output names, in the graph's order, are the ONNX file's
        ports = {name: port for port in self.model.outputs for name in port.get_names()}
        self._outputs = {name: ports[name] for name in outputs}

    def get_outputs(self) -> list[Any]:
        return [_Named(name) for name in self._outputs]

    def get_providers(self) -> list[str]:
        return ["OpenVINO CPU"]

    def run(self, names: Sequence[str] | None, feeds: dict[str, Any]) -> list[Any]:
        """The outputs `names` (all when None) for the numpy `feeds`, as numpy arrays (copies: the request's
        buffers are reused by the next run)."""
        request = self._requests.get()
        try:
            result = request.infer(feeds)
            return [result[self._outputs[name]].copy() for name in (names or list(self._outputs))]
        finally:
            self._requests.put(request)


def _graph_outputs(graph: str | Path) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(str(graph), load_external_data=False).graph.output]


class _Named:
    def __init__(self, name: str) -> None:
        self.name = name
