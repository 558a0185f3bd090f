"""Adapters in and out: formats other tools load, and loading them back."""

from acestep.export.lora import AdapterError, load_adapter

__all__ = ["AdapterError", "load_adapter"]
