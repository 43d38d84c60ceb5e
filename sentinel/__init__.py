"""Sentinel: CUDA-fault observability for LLM serving fleets (the sidecar daemon and CLI).

This package never imports torch. The in-process hooks live in ``sentinel_hooks``.
"""

__all__ = []

__version__ = "0.1.0"
