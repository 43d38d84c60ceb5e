"""GPU tests run on the lent device (tests/gpu/run.sh). bench/ holds the shared Triton kernels."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
