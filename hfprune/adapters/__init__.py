"""Architecture adapters: the only place that knows how a model family is laid out.

Importing this package registers every family (one module each).
"""

from . import bert, deberta, modernbert, vit  # noqa: F401  (registers the adapters)
from .base import ADAPTERS, ArchAdapter, EncoderAdapter, Sublayer, encoder_structure, get_adapter, get_encoder_adapter


__all__ = [
    "ADAPTERS",
    "ArchAdapter",
    "EncoderAdapter",
    "Sublayer",
    "encoder_structure",
    "get_adapter",
    "get_encoder_adapter",
]
