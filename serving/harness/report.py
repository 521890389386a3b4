"""The HTML report of a harness run: one self-contained file (inline CSS and SVG, no scripts, no assets).

Every string that comes from the run (file names, app name, messages, labels, predictions) goes through
`html.escape`, since file names and app output are arbitrary.
"""
import datetime
import html
import math

import numpy as np

MAX_FAILURES_SHOWN = 100

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #1d232a; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.2em; margin-top: 1.8em;
     border-bottom: 1px solid #d5dbe1; padding-bottom: .2em; } h3 { font-size: 1em; margin-top: 1.2em; }
.meta { color: #5b6670; margin-top: 0; }
table { border-collapse: collapse; margin: .5em 0; font-size: .92em; }
th, td { border: 1px solid #d5dbe1; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f1f4f7; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.zero { color: #b8c0c8; } td.diag { background: #dff3e4; font-weight: 600; } td.off { background: #fbe3e1; }
.warn { color: #9a3412; } .none { color: #8a949e; font-style: italic; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; white-space: pre-wrap; }
svg text { font-family: system-ui, sans-serif; font-size: 11px; fill: #1d232a; }
"""

_MARK_COLOURS = {"p50": "#2563eb", "p90": "#d97706", "p99": "#dc2626"}
# Curve colours, in order; the first curve (the mean, or the only one) is also drawn thicker.
_CURVE_COLOURS = ("#1d4ed8", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2", "#be185d", "#65a30d",
                  "#475569", "#b45309")


def write_report(path, summary, records):
    """Render the report of ``summary`` and ``records`` (the results.jsonl records) and write it to ``path``."""
    # backslashreplace: a lone surrogate in an app's result shows as "\udcNN" rather than losing the report.
    with open(path, "w", encoding="utf-8", errors="backslashreplace") as handle:
        handle.write(render_report(summary, records))


def render_report(summary, records):
    """The report as an HTML string: summary, latency histogram, errors, and scores when present."""
    app = summary.get("app", "")
    latencies = [r["latency_ms"] for r in records if r.get("latency_ms") is not None]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>serving test: {_e(app)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>serving test: {_e(app)}</h1>",
        _meta_line(summary),
        "<h2>Summary</h2>",
        _summary_table(summary),
        "<h2>Latency</h2>",
        latency_histogram_svg(latencies, summary.get("latency_ms")),
        "<h2>Errors</h2>",
        _errors_section(summary, records),
    ]
    scores = summary.get("scores")
    if scores is not None:
        parts += ["<h2>Scores</h2>", _scores_section(scores)]
    parts.append("</body></html>\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------- sections


def _meta_line(summary):
    items = []
    if summary.get("started_at"):
        items.append(f"started {_e(summary['started_at'])}")
    scores = summary.get("scores") or {}
    if scores.get("labels"):
        items.append(f"labels <span class=\"mono\">{_e(scores['labels'])}</span>")
    generated = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    items.append(f"report generated {_e(generated)}")
    return f'<p class="meta">{" · ".join(items)}</p>'


def _summary_table(summary):
    latency = summary.get("latency_ms") or {}
    rows = [
        ("app", _e(summary.get("app", ""))),
        ("images", _num(summary.get("n_images"))),
        ("ok", _num(summary.get("n_ok"))),
        ("errors", _num(summary.get("n_errors"))),
        ("images / s", _num(summary.get("images_per_s"), 2)),
        ("wall time (s)", _num(summary.get("wall_s"), 2)),
        ("concurrency", _num(summary.get("concurrency"))),
    ]
    rows += [(f"latency {key} (ms)", _num(latency.get(key), 2)) for key in ("p50", "p90", "p99", "mean", "max")]
    return _table(None, [[_e(name), _cell(value, numeric=True)] for name, value in rows])


def _errors_section(summary, records):
    by_code = summary.get("errors_by_code") or {}
    if not by_code:
        return "<p>No errors.</p>"
    example = {}
    for record in records:
        if "error" in record:
            example.setdefault(str(record["code"]), record["error"])
    out = [_table(["code", "count", "first message"],
                  [[_cell(_e(code), numeric=True), _cell(_num(count), numeric=True),
                    f'<span class="mono">{_e(example.get(code, ""))}</span>'] for code, count in by_code.items()])]
    failures = [r for r in records if "error" in r]
    shown = failures[:MAX_FAILURES_SHOWN]
    more = f", first {len(shown)}" if len(shown) < len(failures) else ""
    out.append(f"<h3>Failed images ({len(failures)}{more})</h3>")
    out.append(_table(["file", "code", "message"],
                      [[f'<span class="mono">{_e(r["file"])}</span>', _cell(_e(r["code"]), numeric=True),
                        f'<span class="mono">{_e(r["error"])}</span>'] for r in shown]))
    return "\n".join(out)


def _scores_section(scores):
    task = scores.get("task")
    if "error" in scores:
        return f'<p class="warn">Scores ({_e(task or "unknown task")}) not computed: {_e(scores["error"])}</p>'
    coverage = [
        ("scored images", _num(scores.get("n_scored"))),
        ("unlabelled images", _num(scores.get("n_unlabelled"))),
        ("labels without an image", _num(scores.get("n_labels_without_image"))),
    ]
    if task == "text":
        return _text_scores(scores, coverage)
    if task == "class":
        return _class_scores(scores, coverage)
    return _detection_scores(scores, coverage)


def _text_scores(scores, coverage):
    headline = [
        ("task", "text"),
        ("result key", _e(scores.get("text_key") or "")),
        ("exact match (sequence accuracy)", _pct(scores.get("exact_match"))),
        ("character error rate", _pct(scores.get("cer"))),
        ("edits / reference chars", f"{_num(scores.get('total_edits'))} / {_num(scores.get('total_reference_chars'))}"),
    ] + coverage
    rows = [[_mono(m["file"]), _mono(m["expected"]),
             _mono(m["predicted"]) if m.get("predicted") is not None
             else f'<span class="none">{"failed" if m.get("failed") else "nothing read"}</span>',
             _cell(_num(m.get("edits")), numeric=True)] for m in scores.get("mismatches", [])]
    return "\n".join([
        _headline_table(headline),
        _text_pr_section(scores),
        _mismatch_heading(scores),
        _table(["file", "expected", "predicted", "edits"], rows) if rows else "<p>None.</p>",
    ])


def _text_pr_section(scores):
    curve = scores.get("pr_curve")
    if not curve:
        return ('<p class="none">No precision-recall curve: the results carry no confidence '
                "(<code>score</code> or <code>confidence</code>).</p>")
    points = [[_cell(_num(p["threshold"], 2), numeric=True), _cell(_pct(p["precision"]), numeric=True),
               _cell(_pct(p["recall"]), numeric=True), _cell(_num(p["accepted"]), numeric=True)]
              for p in curve.get("operating_points", [])]
    key = _e(scores.get("score_key") or "score")
    return "\n".join([
        f"<h3>Precision-recall as the threshold on <code>{key}</code> moves</h3>",
        "<p>Accepted: reads whose confidence reaches the threshold. Precision: share of accepted reads that are "
        "exactly right; recall: share of labelled images read exactly right and accepted. Average precision "
        f"{_num(curve.get('ap'), 4)}.</p>",
        pr_curve_svg([("text", curve["recall"], curve["precision"])]),
        _table(["threshold", "precision", "recall", "accepted"], points),
    ])


def _class_scores(scores, coverage):
    headline = [("task", "class"), ("top-1 accuracy", _pct(scores.get("accuracy")))] + coverage
    per_class = [[_e(name), _cell(_num(c["n"]), numeric=True), _cell(_num(c["correct"]), numeric=True),
                  _cell(_pct(c["accuracy"]), numeric=True)] for name, c in scores.get("per_class", {}).items()]
    columns = scores.get("classes", [])
    confusion = scores.get("confusion", {})
    matrix_rows = []
    for expected, row in confusion.items():
        cells = [f"<th>{_e(expected)}</th>"]
        for predicted in columns:
            count = row.get(predicted, 0)
            css = "zero" if count == 0 else ("diag" if predicted == expected else "off")
            cells.append(f'<td class="num {css}">{count}</td>')
        matrix_rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "<tr><th>expected \\ predicted</th>" + "".join(f"<th>{_e(c)}</th>" for c in columns) + "</tr>"
    matrix = f"<table>{header}{''.join(matrix_rows)}</table>" if matrix_rows else "<p>Nothing scored.</p>"
    mismatches = [[_mono(m["file"]), _e(m["expected"]), _e(m["predicted"])] for m in scores.get("mismatches", [])]
    return "\n".join([
        _headline_table(headline),
        "<h3>Per class</h3>",
        _table(["class", "images", "correct", "accuracy"], per_class) if per_class else "<p>Nothing scored.</p>",
        "<h3>Confusion matrix</h3>",
        matrix,
        _mismatch_heading(scores),
        _table(["file", "expected", "predicted"], mismatches) if mismatches else "<p>None.</p>",
    ])


def _detection_scores(scores, coverage):
    headline = [
        ("task", "detection"),
        ("mAP@[.5:.95]", _num(scores.get("map"), 4)),
        ("mAP@.5", _num(scores.get("map50"), 4)),
        ("detections", _num(scores.get("n_detections"))),
        ("detections dropped (unreadable box or unknown class)", _num(scores.get("n_detections_dropped"))),
        ("max detections per image", _num(scores.get("max_detections"))),
    ] + coverage
    per_class = [[_e(name), _cell(_num(c["n_gt"]), numeric=True), _cell(_num(c["n_det"]), numeric=True),
                  _cell(_num(c["ap50"], 4), numeric=True), _cell(_num(c["ap"], 4), numeric=True)]
                 for name, c in scores.get("per_class", {}).items()]
    parts = [
        _headline_table(headline),
        "<h3>Per class</h3>",
        _table(["class", "ground truth boxes", "detections", "AP@.5", "AP@[.5:.95]"], per_class),
    ]
    curve = scores.get("pr_curve")
    if curve:
        curves = [("mean", curve["recall"], curve["precision"])]
        curves += [(name, curve["recall"], precision) for name, precision in (curve.get("per_class") or {}).items()]
        parts += ["<h3>Precision-recall at IoU .5 (per class and their mean)</h3>", pr_curve_svg(curves)]
    return "\n".join(parts)


def _mismatch_heading(scores):
    total, shown = scores.get("n_mismatches", 0), len(scores.get("mismatches", []))
    more = f", first {shown}" if shown < total else ""
    return f"<h3>Mismatches ({total}{more})</h3>"


# ---------------------------------------------------------------------------------------------- SVG


def latency_histogram_svg(latencies_ms, marks=None, *, max_bins=40, width=760, height=280):
    """An inline SVG histogram of latencies (ms) with vertical lines at ``marks``' p50, p90 and p99.

    ``marks`` is a dict like the summary's latency_ms; missing marks are skipped. Returns a short paragraph
    instead of an SVG when there are no latencies.
    """
    values = np.asarray([v for v in latencies_ms if v is not None and math.isfinite(v)], dtype=float)
    if values.size == 0:
        return '<p class="none">No latencies measured.</p>'
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-9:
        # All calls took the same time: give the single bar some width instead of dividing by zero.
        lo, hi = max(0.0, lo - 0.5), hi + 0.5
    n_bins = max(1, min(max_bins, math.ceil(math.sqrt(values.size))))
    counts, edges = np.histogram(values, bins=n_bins, range=(lo, hi))
    left, right, top, bottom = 56, 16, 44, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = int(counts.max())

    def x_of(ms):
        return left + (ms - lo) / (hi - lo) * plot_w

    def y_of(count):
        return top + plot_h - count / peak * plot_h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="latency histogram">']
    for count, start, end in zip(counts, edges[:-1], edges[1:]):
        if count == 0:
            continue
        x0, x1 = x_of(start), x_of(end)
        out.append(f'<rect x="{x0:.1f}" y="{y_of(count):.1f}" width="{max(x1 - x0 - 1, 1):.1f}" '
                   f'height="{top + plot_h - y_of(count):.1f}" fill="#94a3b8">'
                   f"<title>{_ms(start)}–{_ms(end)} ms: {int(count)}</title></rect>")
    # Axes, ticks and labels.
    base_y = top + plot_h
    out.append(f'<line x1="{left}" y1="{base_y}" x2="{left + plot_w}" y2="{base_y}" stroke="#1d232a"/>')
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base_y}" stroke="#1d232a"/>')
    for i in range(6):
        ms = lo + (hi - lo) * i / 5
        x = x_of(ms)
        out.append(f'<line x1="{x:.1f}" y1="{base_y}" x2="{x:.1f}" y2="{base_y + 4}" stroke="#1d232a"/>')
        out.append(f'<text x="{x:.1f}" y="{base_y + 16}" text-anchor="middle">{_ms(ms)}</text>')
    for count in sorted({0, peak // 2, peak}):
        y = y_of(count)
        out.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" stroke="#1d232a"/>')
        out.append(f'<text x="{left - 7}" y="{y + 4:.1f}" text-anchor="end">{count}</text>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">latency (ms)</text>')
    out.append(f'<text x="14" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 14 {top + plot_h / 2:.1f})">images</text>')
    # Percentile marks; labels are staggered vertically because p90 and p99 are often close together.
    for row, name in enumerate(("p50", "p90", "p99")):
        value = (marks or {}).get(name)
        if value is None:
            continue
        x = min(max(x_of(value), left), left + plot_w)
        colour = _MARK_COLOURS[name]
        out.append(f'<line x1="{x:.1f}" y1="{top - 4 - 12 * (2 - row)}" x2="{x:.1f}" y2="{base_y}" '
                   f'stroke="{colour}" stroke-width="1.5" stroke-dasharray="4 3"/>')
        anchor = "end" if x > left + plot_w * 0.85 else "start"
        dx = -3 if anchor == "end" else 3
        out.append(f'<text x="{x + dx:.1f}" y="{top - 6 - 12 * (2 - row)}" text-anchor="{anchor}" '
                   f'style="fill:{colour}">{name} {_ms(value)} ms</text>')
    out.append("</svg>")
    return "\n".join(out)


def pr_curve_svg(curves, *, size=320, legend_width=170):
    """An inline SVG of precision-recall curves: ``curves`` is a list of ``(label, recall, precision)``; negative
    or None precisions (undefined points) are skipped. Recall spans 0..1; precision too, unless every point is at
    0.5 or more: then its axis starts just below the lowest (in steps of 0.05), so a curve between 0.98 and 1 is
    not a flat line along the top. The first curve is drawn thicker; with more than one, a legend names them."""
    left, right, top, bottom = 48, 16, 16, 40
    plot = size - max(left + right, top + bottom)
    base_y = top + plot
    width = size + (legend_width if len(curves) > 1 else 0)
    valid = [p for _, _, precision in curves for p in precision if p is not None and p >= 0]
    lowest = min(valid, default=0.0)
    y_lo = max(0.0, math.floor(lowest * 20 - 1e-9) / 20) if lowest >= 0.5 else 0.0

    def y_of(p):
        return base_y - (p - y_lo) / (1.0 - y_lo) * plot

    def point(r, p):
        return f"{left + r * plot:.1f},{y_of(p):.1f}"

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{size}" '
           f'viewBox="0 0 {width} {size}" role="img" aria-label="precision-recall curve">',
           f'<rect x="{left}" y="{top}" width="{plot}" height="{plot}" fill="none" stroke="#d5dbe1"/>']
    for index, (label, recall, precision) in enumerate(curves):
        colour = _CURVE_COLOURS[index % len(_CURVE_COLOURS)]
        points = " ".join(point(r, p) for r, p in zip(recall, precision) if p is not None and p >= 0)
        stroke = 2.5 if index == 0 else 1.5
        out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="{stroke}">'
                   f"<title>{_e(label)}</title></polyline>")
        if len(curves) > 1:
            y = top + 8 + 16 * index
            out.append(f'<line x1="{size + 4}" y1="{y}" x2="{size + 24}" y2="{y}" stroke="{colour}" '
                       f'stroke-width="{stroke}"/>')
            out.append(f'<text x="{size + 30}" y="{y + 4}">{_e(label)}</text>')
    for tick in (0.0, 0.5, 1.0):
        out.append(f'<text x="{left + tick * plot:.1f}" y="{base_y + 14}" text-anchor="middle">{tick:g}</text>')
    for tick in (y_lo, (y_lo + 1.0) / 2, 1.0):
        out.append(f'<text x="{left - 6}" y="{y_of(tick) + 4:.1f}" text-anchor="end">{tick:.3g}</text>')
    out.append(f'<text x="{left + plot / 2:.1f}" y="{base_y + 32}" text-anchor="middle">recall</text>')
    out.append(f'<text x="12" y="{top + plot / 2:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 12 {top + plot / 2:.1f})">precision</text>')
    out.append("</svg>")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- helpers


def _e(value):
    return html.escape(str(value), quote=True)


def _mono(value):
    return f'<span class="mono">{_e(value)}</span>'


def _num(value, digits=0):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return '<span class="none">n/a</span>'
    if isinstance(value, int) and not digits:
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _pct(value):
    return '<span class="none">n/a</span>' if value is None else f"{100.0 * value:.2f}%"


def _ms(value):
    """Latency for axis labels: about three significant digits."""
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(content, numeric=False):
    return f'<td class="num">{content}</td>' if numeric else f"<td>{content}</td>"


def _table(headers, rows):
    """Rows are lists of cells: strings already escaped, wrapped in <td> unless they are already cells."""
    out = ["<table>"]
    if headers:
        out.append("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr>")
    for row in rows:
        cells = [c if c.startswith(("<td", "<th")) else f"<td>{c}</td>" for c in row]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _headline_table(rows):
    return _table(None, [[f"<th>{_e(name)}</th>", _cell(value, numeric=True)] for name, value in rows])
