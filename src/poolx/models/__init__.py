"""Poolers, their registry, and the backbone + pooler + head wrapper."""

from poolx.models.base import BackboneFeatures, Pooler
from poolx.models.encoder import RAW_OUTPUTS, PooledEncoder
from poolx.models.registry import create_pooler, get_pooler_class, list_poolers, register_pooler

__all__ = [
    "RAW_OUTPUTS",
    "BackboneFeatures",
    "PooledEncoder",
    "Pooler",
    "create_pooler",
    "get_pooler_class",
    "list_poolers",
    "register_pooler",
]
