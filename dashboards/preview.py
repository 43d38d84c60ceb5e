"""Render a PNG preview of each dashboard's panels from the same queries, against a live
Prometheus (Grafana cannot be installed here; the README shows these previews).

    python dashboards/preview.py http://127.0.0.1:9090 OUTDIR [--minutes 5]

The end-to-end test renders them during its fault scenario; `SENTINEL_PREVIEW_DIR=dashboards`
makes it keep them in the repository.
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def promql(expr: str) -> str:
    return build.to_promql(expr, rate_interval="30s")  # every variable at "All"


def _legend(fmt: str, labels: dict) -> str:
    out = fmt or ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__")
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v)
    return re.sub(r"\{\{\w+\}\}", "-", out)[:60]  # labels the series does not have


def query_range(base: str, expr: str, minutes: float) -> list[dict]:
    end = time.time()
    q = urllib.parse.urlencode({"query": promql(expr), "start": end - minutes * 60, "end": end, "step": "2s"})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{q}", timeout=10) as r:
        data = json.loads(r.read())
    return data["data"]["result"] if data.get("status") == "success" else []


def render(base: str, out_dir: str, minutes: float = 5.0) -> list[Path]:
    out = []
    for which, (uid, title) in build.TITLES.items():
        panels = [p for p in build.PANELS if p[0] == which]
        cols = 2
        rows = (len(panels) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(14, 3.2 * rows), squeeze=False)
        fig.suptitle(f"{title} (preview from live Prometheus data)", fontsize=13)
        for ax, (_dash, ptitle, _kind, queries) in zip(axes.flat, panels):
            ax.set_title(ptitle, fontsize=10)
            drawn = 0
            for expr, legend in queries:
                for series in query_range(base, expr, minutes):
                    now = time.time()
                    ts = [(float(t) - now) for t, _ in series["values"]]
                    vs = [float(v) for _, v in series["values"]]
                    ax.plot(ts, vs, label=_legend(legend, series["metric"]))
                    drawn += 1
            if drawn:
                ax.legend(fontsize=7, loc="upper left")
                ax.set_xlabel("seconds from now", fontsize=8)
            else:
                ax.text(0.5, 0.5, "no data in this scenario", ha="center", va="center", transform=ax.transAxes,
                        color="grey")
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.tight_layout()
        path = Path(out_dir) / f"{uid}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        out.append(path)
    return out


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    minutes = float(sys.argv[sys.argv.index("--minutes") + 1]) if "--minutes" in sys.argv else 5.0
    for p in render(sys.argv[1], sys.argv[2], minutes):
        print(f"wrote {p}")
