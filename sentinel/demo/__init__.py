"""``sentinel demo`` and its workloads: the only part of the sidecar package that may import torch
(in the workload processes it starts, never in the daemon)."""

__all__ = []
