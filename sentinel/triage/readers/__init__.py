"""One reader per artifact kind (cuda-gdb transcripts, Flight Recorder dumps): each parses its own
format into plain data for ``sentinel.triage.records``."""

__all__ = []
