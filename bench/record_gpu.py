"""Record a GPU run's results (fetched from the device) in bench/RESULTS.md and bench/results/.

    python bench/record_gpu.py DIR      # DIR holds gpu_probes.json / gpu_probes.md from tests/gpu/run.sh
"""

from __future__ import annotations

import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS_DIR, update_results_md  # noqa: E402


def main(src: str) -> int:
    with open(os.path.join(src, "gpu_probes.json")) as f:
        result = json.load(f)
    with open(os.path.join(src, "gpu_probes.md")) as f:
        table = f.read()
    slug = result["device"].split()[1].lower() if result["device"].startswith("NVIDIA") else "gpu"
    key = f"{result['date']}-{slug}-gpu-probes"
    os.makedirs(RESULTS_DIR, exist_ok=True)
    shutil.copy(os.path.join(src, "gpu_probes.json"), os.path.join(RESULTS_DIR, f"{key}.json"))
    tests = os.path.join(src, "gpu-tests.log")
    if os.path.exists(tests):
        shutil.copy(tests, os.path.join(RESULTS_DIR, f"{key}-tests.log"))
    title, _, body = table.partition("\n")
    section = (f"## {result['date']}: GPU probe overhead on {result['device']} (`bench/gpu_probes.py`)\n\n"
               f"{title}. Raw: `bench/results/{key}.json`; the GPU test log beside it.\n{body}")
    update_results_md(key, section)
    print(f"recorded {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
