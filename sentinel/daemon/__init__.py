"""Stage 4, the sidecar daemon: evidence sources -> per-process state -> an immutable snapshot.

``loop`` runs the poll thread (``Daemon``); ``state`` keeps what is known of each hooked process;
``journal`` persists it (the only SQL); the other modules read one source each (rings, GPU
coredumps, NVML, the kubelet's pod resources, py-spy stacks). Never imports torch.
"""

__all__ = []
