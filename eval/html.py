"""One self-contained HTML page for a benchmark report: tables, and plots drawn as SVG images
embedded as data URIs (no plotting library, no file beside the page, nothing fetched).

`render_html(report)` takes the report dictionary that `mmq benchmark` / `mmq report` write as
JSON (see `mmq_rec.benchmark`). Opened with `#render-check` after its address, the page appends a
JSON summary of what rendered (tables, images, broken images, their sizes): the browser test reads
it from the DOM."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from typing import Any

from mmq_rec.eval.report import BUCKET_TITLES

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]
BUCKETS = ("all", "head", "tail", "long_tail", "cold")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}th,td{padding:.25em .6em;border-bottom:1px solid #eee;
text-align:right;white-space:nowrap}th:first-child,td:first-child{text-align:left}th{background:#f6f6f6}
tr.best td{font-weight:600}.note{color:#555;font-size:.9em}.answer{background:#f3f8ff;border-left:4px solid #1f77b4;
padding:.6em 1em}.published{background:#fff8ee;border-left:4px solid #ff7f0e;padding:.4em 1em}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.8em}img{display:block;margin:.5em 0}
"""

_CHECK = """
if (location.hash === "#render-check") {
  window.addEventListener("load", function () {
    var imgs = Array.prototype.slice.call(document.images);
    var out = {tables: document.querySelectorAll("table").length, images: imgs.length,
      broken: imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; }).length,
      sizes: imgs.map(function (i) { var r = i.getBoundingClientRect(); return [i.naturalWidth, r.width, r.height]; })};
    var pre = document.createElement("pre"); pre.id = "render-check"; pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  });
}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _fmt(v: float, digits: int = 4) -> str:
    return f"{v:.{digits}f}"


def _axis_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    step = (hi - lo) / n
    return [lo + i * step for i in range(n + 1)]


def _frame(width: int, height: int, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>'
            f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">{_esc(title)}</text>'
            + "".join(body) + "</svg>")


def _legend(names: Sequence[str], x: float, y: float) -> list[str]:
    out = []
    for i, name in enumerate(names):
        yy = y + 15 * i
        out.append(f'<rect x="{x}" y="{yy - 8}" width="10" height="10" fill="{PALETTE[i % len(PALETTE)]}"/>'
                   f'<text x="{x + 14}" y="{yy + 1}">{_esc(name)}</text>')
    return out


def _y_axis(left: float, top: float, plot_h: float, plot_w: float, ymax: float, label: str) -> list[str]:
    out = [f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>',
           f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#333"/>',
           f'<text transform="translate(14,{top + plot_h / 2}) rotate(-90)" text-anchor="middle">{_esc(label)}</text>']
    for t in _axis_ticks(0.0, ymax):
        y = top + plot_h - plot_h * t / ymax
        out.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{t:.3f}</text>')
    return out


def bar_chart(groups: Sequence[str], series: Mapping[str, Sequence[float]], title: str, ylabel: str,
              errors: Mapping[str, Sequence[float]] | None = None, width: int = 900, height: int = 340) -> str:
    """Grouped bars: one group per x label, one bar per series (± error whiskers)."""
    names = list(series)
    left, top, legend_w = 60, 30, 230
    plot_w, plot_h = width - left - legend_w - 10, height - top - 40
    ymax = max([v + (errors or {}).get(n, [0] * len(groups))[i] for n in names for i, v in enumerate(series[n])]
               + [1e-6]) * 1.1
    body = _y_axis(left, top, plot_h, plot_w, ymax, ylabel)
    gw = plot_w / max(len(groups), 1)
    bw = gw * 0.8 / max(len(names), 1)
    for gi, g in enumerate(groups):
        x0 = left + gi * gw + gw * 0.1
        body.append(f'<text x="{left + gi * gw + gw / 2:.1f}" y="{top + plot_h + 16}" text-anchor="middle">{_esc(g)}</text>')
        for si, n in enumerate(names):
            v = series[n][gi]
            h = plot_h * v / ymax
            x = x0 + si * bw
            body.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bw * 0.9:.1f}" height="{h:.1f}" '
                        f'fill="{PALETTE[si % len(PALETTE)]}"><title>{_esc(n)} {_esc(g)}: {v:.4f}</title></rect>')
            e = (errors or {}).get(n)
            if e and e[gi] > 0:
                cx, y1, y2 = x + bw * 0.45, top + plot_h - plot_h * (v + e[gi]) / ymax, top + plot_h - plot_h * max(v - e[gi], 0) / ymax
                body.append(f'<line x1="{cx:.1f}" y1="{y1:.1f}" x2="{cx:.1f}" y2="{y2:.1f}" stroke="#222"/>')
    body += _legend(names, left + plot_w + 20, top + 10)
    return _frame(width, height, title, body)


def line_chart(series: Mapping[str, Sequence[tuple[float, float]]], title: str, xlabel: str, ylabel: str,
               width: int = 900, height: int = 340, xticks: Sequence[str] | None = None) -> str:
    """One polyline with markers per series of (x, y) points."""
    names = [n for n in series if series[n]]
    left, top, legend_w = 60, 30, 230
    plot_w, plot_h = width - left - legend_w - 10, height - top - 45
    xs = [x for n in names for x, _ in series[n]] or [0.0, 1.0]
    xmin, xmax = min(xs), max(xs)
    xmax = xmax if xmax > xmin else xmin + 1
    ymax = max([y for n in names for _, y in series[n]] + [1e-6]) * 1.1
    body = _y_axis(left, top, plot_h, plot_w, ymax, ylabel)
    body.append(f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle">{_esc(xlabel)}</text>')

    def px(x: float) -> float:
        return left + plot_w * (x - xmin) / (xmax - xmin)

    if xticks:
        for i, label in enumerate(xticks):
            body.append(f'<text x="{px(xmin + i * (xmax - xmin) / max(len(xticks) - 1, 1)):.1f}" y="{top + plot_h + 16}" '
                        f'text-anchor="middle">{_esc(label)}</text>')
    else:
        whole = all(float(x).is_integer() for x in xs)
        ticks = range(int(xmin), int(xmax) + 1) if whole and xmax - xmin <= 20 else _axis_ticks(xmin, xmax)
        for t in ticks:
            body.append(f'<text x="{px(t):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{t:g}</text>')
    for si, n in enumerate(names):
        c = PALETTE[si % len(PALETTE)]
        pts = [(px(x), top + plot_h - plot_h * y / ymax) for x, y in series[n]]
        body.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="'
                    + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>')
        body += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{c}"/>' for x, y in pts]
    body += _legend(names, left + plot_w + 20, top + 10)
    return _frame(width, height, title, body)


def img(svg: str, alt: str) -> str:
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/svg+xml;base64,{data}">'


def _cell(row: Mapping[str, float], key: str, digits: int = 4) -> str:
    if key not in row:
        return "–"
    std = row.get(f"{key}_std")
    if row.get("runs", 1) > 1 and std is not None:
        return f"{row[key]:.{digits}f} ± {std:.{digits}f}"
    return f"{row[key]:.{digits}f}"


def metrics_table_html(systems: Mapping[str, Mapping[str, Any]], group: str, ks: Sequence[int]) -> str:
    cols = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]
    rows = {n: s["metrics"].get(group, {}) for n, s in systems.items()}
    key = f"recall@{10 if 10 in ks else ks[0]}"
    best = max((n for n in rows if rows[n].get("users")), key=lambda n: rows[n].get(key, -1), default=None)
    head = "".join(f"<th>{c.replace('recall', 'R').replace('ndcg', 'N')}</th>" for c in cols)
    out = [f"<table><tr><th>system</th><th>seeds</th><th>users</th>{head}<th>coverage@{ks[-1]}</th>"
           "<th>invalid IDs</th></tr>"]
    for n, row in rows.items():
        cls = ' class="best"' if n == best else ""
        if not row.get("users"):
            out.append(f"<tr><td>{_esc(n)}</td><td>{len(systems[n].get('seeds', []))}</td><td>0</td>"
                       + "<td>–</td>" * (len(cols) + 2) + "</tr>")
            continue
        cells = "".join(f"<td>{_cell(row, c)}</td>" for c in cols)
        out.append(f"<tr{cls}><td>{_esc(n)}</td><td>{len(systems[n].get('seeds', []))}</td><td>{row['users']:,}</td>"
                   f"{cells}<td>{_cell(row, f'coverage@{ks[-1]}', 3)}</td><td>{_cell(row, 'invalid_rate', 4)}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return ("<table><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")


def render_html(report: Mapping[str, Any]) -> str:
    """The whole page for a report dictionary (see `mmq_rec.benchmark.compose_report`)."""
    systems, ks = report["systems"], report["ks"]
    k = 10 if 10 in ks else ks[0]
    parts = [f"<h1>{_esc(report['title'])}</h1>",
             f"<p class='note'>{_esc(report.get('subtitle', ''))}</p>"]
    if report.get("answers"):
        parts.append("<div class='answer'><ul>" + "".join(f"<li>{_esc(a)}</li>" for a in report["answers"])
                     + "</ul></div>")
    for g in BUCKETS:
        if any(g in s["metrics"] for s in systems.values()):
            parts += [f"<h2>{_esc(BUCKET_TITLES[g])}</h2>", metrics_table_html(systems, g, ks)]
    groups = [g for g in BUCKETS if any(s["metrics"].get(g, {}).get("users") for s in systems.values())]
    parts += ["<h2>Figures</h2>", img(bar_chart(
        groups, {n: [s["metrics"].get(g, {}).get(f"recall@{k}", 0.0) for g in groups] for n, s in systems.items()},
        f"Recall@{k} by popularity bucket (mean over seeds, whiskers ± std)", f"Recall@{k}",
        {n: [s["metrics"].get(g, {}).get(f"recall@{k}_std", 0.0) for g in groups] for n, s in systems.items()}),
        f"Recall@{k} by bucket")]
    deciles = {n: [(d + 1, s["metrics"][f"decile_{d + 1}"][f"recall@{k}"]) for d in range(10)
                   if s["metrics"].get(f"decile_{d + 1}", {}).get("users")] for n, s in systems.items()}
    if any(deciles.values()):
        parts.append(img(line_chart(deciles, f"Recall@{k} by the target item's popularity decile "
                                             "(1 = most popular tenth of items)", "popularity decile",
                                    f"Recall@{k}"), "Recall by popularity decile"))
    curves = report.get("curves", {})
    for unit in ("step", "epoch"):
        series = {n: [tuple(p) for p in c["points"]] for n, c in curves.items() if c["unit"] == unit}
        if series:
            metric = next(c["metric"] for c in curves.values() if c["unit"] == unit)
            seed = f" (seed {report['curve_seed']})" if report.get("curve_seed") is not None else ""
            parts.append(img(line_chart(series, f"Validation {metric} during training{seed}", unit, metric),
                             f"Validation curves by {unit}"))
    if report.get("tokenizers"):
        rows = []
        for name, q in report["tokenizers"].items():
            for p, (u, e) in enumerate(zip(q.get("utilisation", []), q.get("entropy_normalised", []), strict=False)):
                rows.append([name, p, f"{u:.3f}", f"{e:.3f}", q.get("codebook_sizes", ["?"] * (p + 1))[p]])
        parts += ["<h2>Tokenizer quality per SID position</h2>",
                  _table(["tokenizer", "position", "utilisation", "normalised entropy", "codebook size"], rows),
                  _table(["tokenizer", "SID length", "collision rate", "largest collision group"],
                         [[n, q.get("sid_length"), q.get("collision_rate"), q.get("largest_collision_group")]
                          for n, q in report["tokenizers"].items()])]
    cost = [[n, s.get("kind", ""), ", ".join(map(str, s.get("seeds", []))),
             f"{s['train_minutes']:.1f}" if s.get("train_minutes") is not None else "–",
             f"{s['users_per_second']:.0f}" if s.get("users_per_second") else "–", s.get("device", "")]
            for n, s in systems.items()]
    parts += ["<h2>Cost</h2>", _table(["system", "kind", "seeds", "training minutes (mean per run)",
                                        "test users / s", "device"], cost)]
    if report.get("published"):
        parts += ["<h2>Published reference numbers (not run here)</h2>",
                  "<div class='published'><ul>" + "".join(f"<li>{_esc(p)}</li>" for p in report["published"])
                  + "</ul></div>"]
    env = report.get("environment", {})
    parts += ["<h2>Environment and configuration</h2>", _table(["", ""], [[k2, v] for k2, v in env.items()]),
              f"<p>Command: <code>{_esc(report.get('command', ''))}</code></p>",
              f"<details><summary>configuration</summary><pre>{_esc(report.get('config', ''))}</pre></details>"]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{_esc(report['title'])}</title><style>{_CSS}</style></head><body>"
            + "\n".join(parts) + f"<script>{_CHECK}</script></body></html>\n")
