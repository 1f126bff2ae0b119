"""poolx: a Hugging Face encoder plus a pooling head as one ONNX graph, verified against eager PyTorch.

The public API is imported lazily, so `import poolx` (and `poolx --help`) imports neither torch nor onnxruntime.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {
    "Embedder": "poolx.runtime.embedder",
    "PooledEncoder": "poolx.models.encoder",
    "create_pooler": "poolx.models.registry",
    "list_poolers": "poolx.models.registry",
    "register_pooler": "poolx.models.registry",
    "Pooler": "poolx.models.base",
    "export": "poolx.exporter.export",
    "verify": "poolx.parity.verify",
    "IOSpec": "poolx.spec",
    "Variant": "poolx.variants",
    "Provider": "poolx.providers",
    "Manifest": "poolx.manifest",
    "PoolxError": "poolx.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'poolx' has no attribute {name!r}")
