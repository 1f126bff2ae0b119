"""Sessions over a poolx graph (onnxruntime, or OpenVINO for `openvino`), on the provider asked for and no other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from poolx.errors import BrokenExportError, ProviderUnavailableError, first_line
from poolx.providers import CPU, Provider, get_provider, import_onnxruntime


def create_session(
    graph: str | Path, provider: str | Provider = CPU, threads: int | None = None,
    provider_options: dict[str, dict[str, Any]] | None = None, spinning: bool = True, throughput: bool | None = None,
) -> Any:
    """An `onnxruntime.InferenceSession` on `graph` that really runs on `provider` (checked after creation: a
    provider onnxruntime dropped is an error). `provider_options` maps an onnxruntime provider name to its options
    (`Provider.options`). spinning=False stops the CPU provider's intra-op threads from spin-waiting after a run
    (they otherwise take cores a server's event loop needs). OpenVINO (`openvino`) gives an `OpenVinoSession` with
    the same interface, compiled for `throughput` (parallel streams; default: where spinning is off, as a server
    asks) or else for the latency of one run."""
    provider = get_provider(provider)
    if provider.runtime == "openvino":
        from poolx.runtime.openvino import OpenVinoSession

        return OpenVinoSession(graph, threads, throughput=not spinning if throughput is None else throughput)
    ort = import_onnxruntime()
    options_of = provider_options or {}
    providers = [(p, options_of[p]) if p in options_of else p for p in provider.ort_providers()]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(graph), sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph, InvalidProtobuf, EPFail)
        first = first_line(e)[:300]
        if provider.gpu:  # the provider (TensorRT engine build, CUDA libraries) failed, not the file
            raise ProviderUnavailableError(f"onnxruntime could not start {graph} on {provider}: {first}") from None
        raise BrokenExportError(f"onnxruntime cannot load {graph}: {first}; re-export it") from None
    provider.check_active(session)
    return session


def run_bound(session: Any, feeds: dict[str, Any], output: str, device: str, device_id: int = 0) -> Any:
    """One run with IO binding: inputs copied to `device` once, the output allocated there and copied back."""
    import numpy as np

    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(value))
    binding.bind_output(output, device, device_id)
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()[0]
