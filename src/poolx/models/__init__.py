"""Poolers, their registry and option declarations, backbone adapters, the pooler/head layout on disk, and the
backbone + pooler + head wrapper.

Imported lazily, like `poolx` itself: the registry and the option declarations (poolx.models.registry,
poolx.models.options) are torch-free, and `poolx export --help` reads them without importing torch."""

from __future__ import annotations

from typing import Any

_API = {
    "BackboneAdapter": "poolx.models.backbones",
    "adapter_for": "poolx.models.backbones",
    "BackboneFeatures": "poolx.models.base",
    "Pooler": "poolx.models.base",
    "RAW_OUTPUTS": "poolx.models.encoder",
    "PooledEncoder": "poolx.models.encoder",
    "PoolingConfig": "poolx.models.head",
    "INT_LIST": "poolx.models.options",
    "L": "poolx.models.options",
    "Option": "poolx.models.options",
    "PoolerSpec": "poolx.models.registry",
    "create_pooler": "poolx.models.registry",
    "describe_poolers": "poolx.models.registry",
    "get_pooler_class": "poolx.models.registry",
    "get_spec": "poolx.models.registry",
    "list_poolers": "poolx.models.registry",
    "register_pooler": "poolx.models.registry",
}

__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'poolx.models' has no attribute {name!r}")
