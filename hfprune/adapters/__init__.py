"""Architecture adapters: the only place that knows how a model family is laid out."""

from .base import ADAPTERS, ArchAdapter, get_adapter
from .bert import BertFamilyAdapter


__all__ = ["ADAPTERS", "ArchAdapter", "BertFamilyAdapter", "get_adapter"]
