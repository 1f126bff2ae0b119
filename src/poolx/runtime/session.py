"""onnxruntime sessions over a poolx export, with the provider checked after creation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from poolx.errors import BrokenExportError, ProviderUnavailableError
from poolx.runtime.providers import check_active, import_onnxruntime, resolve


def create_session(
    graph: str | Path, provider: str = "cpu", threads: int | None = None,
    provider_options: dict[str, dict[str, Any]] | None = None, spinning: bool = True,
) -> Any:
    """An `onnxruntime.InferenceSession` on `graph` that really runs on `provider`; `provider_options` maps an
    onnxruntime provider name (e.g. "TensorrtExecutionProvider") to its options. spinning=False stops the CPU
    provider's intra-op threads from spin-waiting after a run (they otherwise take cores a server's event loop
    needs)."""
    ort = import_onnxruntime()
    options_of = provider_options or {}
    providers = [(p, options_of[p]) if p in options_of else p for p in resolve(provider)]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(graph), sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph, InvalidProtobuf, EPFail)
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        if provider != "cpu":  # the provider (TensorRT engine build, CUDA libraries) failed, not the file
            raise ProviderUnavailableError(f"onnxruntime could not start {graph} on {provider}: {first}") from None
        raise BrokenExportError(f"onnxruntime cannot load {graph}: {first}; re-export it") from None
    check_active(session, provider)
    return session
