"""The public status page (`GET /status`): the status document as one HTML page with its
plots drawn as inline SVG on the server, so every number and chart is there without
JavaScript. Every value is escaped where it is written. Pure."""
from __future__ import annotations

from html import escape
from typing import Iterable

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;
color:#1d2330;background:#fbfbfd}
h1{font-size:1.5rem;margin:0 0 .25rem}h2{font-size:1.15rem;margin:2rem 0 .5rem}
.muted{color:#667}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(21rem,1fr));
gap:1rem}.card{background:#fff;border:1px solid #e3e5ea;border-radius:.5rem;padding:1rem}
table{border-collapse:collapse;width:100%}td,th{padding:.2rem .4rem;text-align:left;
border-bottom:1px solid #eef0f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
svg{display:block;margin-top:.25rem}.bad{color:#b42318}
figure{margin:.75rem 0 0}figcaption{font-size:.8rem;color:#667}
"""

# The plotted series and their colours: what settled, and what did not.
SERIES = (("settled", "#2f7d32"), ("failed", "#b42318"), ("rejected", "#8a6d00"))


def page(document: dict) -> str:
    classes = document["classes"]
    cards = "".join(_class_card(kind, figures) for kind, figures in classes.items()
                    if kind != "unknown" or figures["last_day"]["rejected"])
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        "<link rel=icon href='data:,'>"
        f"<title>Proofline status</title><style>{STYLE}</style></head><body>"
        "<h1>Proofline network status</h1>"
        f"<p class=muted>Generated {escape(document['generated_at'])}; "
        "<a href='status.json'>as JSON</a>.</p>"
        f"<h2>Job classes</h2><div class=grid>{cards}</div>"
        f"<h2>Workers online</h2>{_workers(document['workers'])}"
        f"<h2>Queues</h2>{_queues(document['queues'])}"
        f"<h2>Settlement</h2>{_settlement(document['settlement'])}"
        "</body></html>")


def _class_card(kind: str, figures: dict) -> str:
    hour, day = figures["last_hour"], figures["last_day"]
    rows = [("settled", hour["settled"], day["settled"]),
            ("failed", hour["failed"], day["failed"]),
            ("rejected", hour["rejected"], day["rejected"]),
            ("validation failure rate", _share(hour["validation_failure_rate"]),
             _share(day["validation_failure_rate"])),
            ("retry rate", _share(hour["retry_rate"]), _share(day["retry_rate"])),
            ("time to settled, median", _seconds(hour["time_to_settled_p50_s"]),
             _seconds(day["time_to_settled_p50_s"])),
            ("time to settled, p95", _seconds(hour["time_to_settled_p95_s"]),
             _seconds(day["time_to_settled_p95_s"]))]
    for symbol in sorted({*hour["cost_per_validated_result"], *day["cost_per_validated_result"]}):
        rows.append((f"cost per validated result ({symbol})",
                     hour["cost_per_validated_result"].get(symbol) or "–",
                     day["cost_per_validated_result"].get(symbol) or "–"))
    for reason in sorted({*hour["failed_by_reason"], *day["failed_by_reason"]}):
        rows.append((f"failed: {reason}", hour["failed_by_reason"].get(reason, 0),
                     day["failed_by_reason"].get(reason, 0)))
    body = "".join(f"<tr><td>{escape(str(name))}</td><td class=n>{escape(str(a))}</td>"
                   f"<td class=n>{escape(str(b))}</td></tr>" for name, a, b in rows)
    plots = (_plot("hour", "last hour per minute", "Last hour, a bar per minute",
                   figures["per_minute"], 60)
             + _plot("day", "last day per hour", "Last day, a bar per hour",
                     figures["per_hour"], 24))
    return (f"<section class=card id='class-{escape(kind, quote=True)}'>"
            f"<h3>{escape(kind)}</h3><table><tr><th></th><th class=n>last hour</th>"
            f"<th class=n>last day</th></tr>{body}</table>{plots}</section>")


def _plot(css: str, title: str, caption: str, points: dict[str, list[int]], count: int,
          width: int = 300, height: int = 60) -> str:
    """`count` bars, oldest left, each its series stacked, under a visible caption saying
    which window it is; a text title (with the window's totals) and one per bar for readers
    without the picture."""
    shown = [(name, colour, points.get(name, [0] * count)) for name, colour in SERIES]
    peak = max([sum(values) for values in zip(*(v for _, _, v in shown))] + [1])
    step = width / count
    bars = []
    for index in range(count):
        base = 0.0
        for name, colour, values in shown:
            value = values[index]
            if value:
                tall = height * value / peak
                bars.append(f"<rect x='{index * step:.1f}' y='{height - base - tall:.1f}' "
                            f"width='{max(step - 1, 1):.1f}' height='{tall:.1f}' "
                            f"fill='{colour}'><title>{escape(name)}: {value}</title></rect>")
                base += tall
    label = f"{title}: " + ", ".join(f"{name} {sum(values)}" for name, _, values in shown)
    return (f"<figure><figcaption>{escape(caption)}</figcaption>"
            f"<svg class='{escape(css, quote=True)}' role=img "
            f"aria-label='{escape(label, quote=True)}' width='{width}' height='{height}' "
            f"viewBox='0 0 {width} {height}'><title>{escape(label)}</title>{''.join(bars)}"
            "</svg></figure>")


def _workers(rows: Iterable[dict]) -> str:
    body = "".join(f"<tr><td>{escape(r['job_class'])}</td><td>{escape(r['region'])}</td>"
                   f"<td>{escape(r['tier'])}</td><td class=n>{r['online']}</td></tr>"
                   for r in rows)
    return ("<table><tr><th>class</th><th>region</th><th>tier</th><th class=n>online</th>"
            f"</tr>{body}</table>")


def _queues(queues: dict[str, dict]) -> str:
    body = "".join(
        f"<tr><td>{escape(name)}</td><td class=n>{escape(str(q['waiting']))}</td><td class=n>"
        f"{escape(str(q['in_flight']))}</td><td class=n>{escape(_age(q['oldest_age_s']))}</td>"
        f"<td class='n{' bad' if q['dead_letters'] else ''}'>"
        f"{escape(str(q['dead_letters']))}</td></tr>" for name, q in sorted(queues.items()))
    return ("<table><tr><th>queue</th><th class=n>waiting</th><th class=n>in flight</th>"
            "<th class=n>oldest message</th><th class=n>dead letters</th></tr>"
            f"{body}</table>")


def _settlement(settlement: dict) -> str:
    if not settlement["enabled"]:
        return "<p class=muted>This stage settles no payments on chain.</p>"
    rows = [("releases, last day", settlement["releases_last_day"]),
            ("refunds, last day", settlement["refunds_last_day"]),
            ("open escrows", settlement["open_escrows"]),
            ("chain follower lag (blocks)", _or_dash(settlement["follower_lag_blocks"]))]
    body = "".join(f"<tr><td>{escape(name)}</td><td class=n>{escape(str(value))}</td></tr>"
                   for name, value in rows)
    return f"<table>{body}</table>"


def _share(rate: float | None) -> str:
    return "–" if rate is None else f"{rate:.1%}"


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"≤ {value:g} s"


def _age(seconds: float | None) -> str:
    """An age in the unit a reader takes in at a glance ("–": CloudWatch has no figure)."""
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _or_dash(value) -> str:
    return "–" if value is None else str(value)
