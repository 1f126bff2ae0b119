"""Execution providers by short name, and a check that a session really runs on what was asked for
(onnxruntime can drop from CUDA to CPU with only a log line; poolx raises instead)."""

from __future__ import annotations

from typing import Any

from poolx.errors import ProviderUnavailableError

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ProviderUnavailableError(
            "onnxruntime is not installed: pip install 'poolx[cpu]' (or 'poolx[gpu]' for CUDA/TensorRT)"
        ) from None
    return onnxruntime


def resolve(provider: str) -> list[str]:
    """Short name -> the onnxruntime provider list to ask for, or ProviderUnavailableError naming what is missing.
    TensorRT is asked for with CUDA after it, which is how onnxruntime runs nodes TensorRT does not take."""
    ort = import_onnxruntime()
    if provider not in PROVIDERS:
        raise ProviderUnavailableError(f"unknown provider {provider!r}; choose one of: {', '.join(PROVIDERS)}")
    wanted = [PROVIDERS[provider]] + (["CUDAExecutionProvider"] if provider == "tensorrt" else [])
    available = set(ort.get_available_providers())
    missing = [p for p in wanted if p not in available]
    if missing:
        raise ProviderUnavailableError(
            f"provider {provider!r} needs {', '.join(missing)}, which this onnxruntime ({ort.__version__}) lacks "
            f"(available: {', '.join(sorted(available))}); install onnxruntime-gpu (poolx[gpu]) on a GPU machine"
        )
    return wanted + (["CPUExecutionProvider"] if provider != "cpu" else [])


def check_active(session: Any, provider: str) -> None:
    """Raise if the session did not keep the provider that was asked for."""
    if PROVIDERS[provider] not in session.get_providers():
        raise ProviderUnavailableError(
            f"onnxruntime did not start {PROVIDERS[provider]} (active: {', '.join(session.get_providers())}); "
            "check the CUDA/TensorRT libraries onnxruntime-gpu needs"
        )
