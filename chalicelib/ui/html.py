"""The job page as one HTML document: the state, the charge, the outputs (a transcode's
ladder plays in the page), the timeline with compute and money on one line of time, each
routing decision and each verdict. Every value a client, a worker or a chain wrote is
escaped where it is written; the page's only script is the stage's own (`assets/job.js`,
and the vendored hls.js it drives). Pure."""
from __future__ import annotations

import json
from datetime import datetime
from html import escape
from typing import Any

from chalicelib.ui.timeline import Money, decisions, job_rows, task_rows, verdicts

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:76rem;padding:0 1rem;
color:#1d2330;background:#fbfbfd}h1{font-size:1.4rem;margin:0 0 .25rem}
h2{font-size:1.1rem;margin:2rem 0 .5rem}.muted{color:#667}.card{background:#fff;
border:1px solid #e3e5ea;border-radius:.5rem;padding:1rem;margin:.5rem 0}
table{border-collapse:collapse;width:100%}td,th{padding:.2rem .4rem;text-align:left;
border-bottom:1px solid #eef0f3;vertical-align:top}td.n{text-align:right;
font-variant-numeric:tabular-nums}code,.mono{font:12px ui-monospace,monospace;
word-break:break-all}.state{display:inline-block;padding:.05rem .5rem;border-radius:1rem;
background:#eef0f3}.settled,.passed{color:#2f7d32}.failed,.rejected{color:#b42318}
video{width:100%;max-width:48rem;background:#000;border-radius:.4rem}
button{margin:.25rem .25rem 0 0}form.inline{display:inline}
"""
TERMINAL = ("settled", "failed", "rejected", "cancelled")


def page(document: dict, events: list[dict], *, csrf: str, explorer_url: str | None,
         player: dict | None) -> str:
    """`document`: the job as `GET /jobs/{id}` returns it; `events`: its timeline;
    `player`: `{"src", "renditions": [{name, width, height, bandwidth}]}` for a playable
    package, else None."""
    job_id = document["job_id"]
    escrow = document.get("escrow") or None
    money = Money(escrow["symbol"], escrow["decimals"]) if escrow else None
    created = _created(document)
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        "<link rel=icon href='data:,'>"
        f"<title>{escape(job_id)} · Proofline</title><style>{STYLE}</style></head><body>"
        f"{_header(document, csrf)}"
        f"<h2>Charge</h2>{_charge(document)}"
        f"<h2>Outputs</h2>{_outputs(document, player)}"
        f"<h2>Timeline</h2>{_timeline(events, created, money, explorer_url)}"
        f"{_attempts(document)}"
        f"<h2>Routing</h2>{_routing(events)}"
        f"<h2>Verification</h2>{_verification(document, events)}"
        f"{_tasks(events)}"
        "<script src='../assets/hls.min.js'></script>"
        "<script src='../assets/job.js'></script>"
        "</body></html>")


def error_page(status: int, reason: str, message: str) -> str:
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>{status} · Proofline</title><style>{STYLE}</style></head><body>"
            f"<h1>{status}: {escape(reason)}</h1><p>{escape(message)}</p>"
            "<p class=muted>A job's page opens with <code>proofline ui JOB</code>, signed in "
            "as the job's client (or an operator).</p></body></html>")


def signed_out_page() -> str:
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>Signed out · Proofline</title><style>{STYLE}</style></head><body>"
            "<h1>Signed out</h1><p>This browser's page session has ended. "
            "<code>proofline ui JOB</code> opens a job's page again.</p></body></html>")


def _header(doc: dict, csrf: str) -> str:
    state = str(doc["state"])
    manifest = doc.get("manifest") or {}
    forms = ""
    if state not in TERMINAL:
        forms += (f"<form class=inline method=post action='{escape(doc['job_id'])}/cancel'>"
                  f"<input type=hidden name=csrf value='{escape(csrf)}'>"
                  "<button id=cancel>Cancel this job</button></form>")
    forms += ("<form class=inline method=post action='../sign-out'>"
              f"<input type=hidden name=csrf value='{escape(csrf)}'>"
              "<button id=sign-out>Sign out</button></form>")
    rows = [("kind", doc.get("kind")), ("client", manifest.get("client_did") or "—"),
            ("profile", doc.get("profile") or "—"), ("attempt", doc.get("attempt")),
            ("worker", doc.get("worker") or "—"), ("created", doc.get("created_at")),
            ("updated", doc.get("updated_at"))]
    if manifest.get("prompt") is not None:
        rows.append(("prompt", manifest["prompt"]))
    return (f"<h1>{escape(doc['job_id'])} <span id=state class='state {escape(state)}'>"
            f"{escape(state)}</span></h1>"
            f"{'<p id=reason>' + escape(str(doc['reason'])) + '</p>' if doc.get('reason') else ''}"
            f"{_pairs(rows, 'job')}{forms}")


def _charge(doc: dict) -> str:
    pay = doc.get("payment")
    if not pay:
        return (f"<p id=charge class=muted>No escrow: payment policy "
                f"{escape(str(doc.get('payment_policy')))}.</p>")
    symbol = pay["symbol"]
    rows = [(name, f"{pay[key]} {symbol}" if pay.get(key) is not None else "—")
            for name, key in (("escrowed at most", "max_price"), ("held on chain now", "held"),
                              ("price", "price"), ("charged", "charged"),
                              ("fee (within the charge)", "fee"), ("refunded", "refunded"))]
    return _pairs(rows, "charge")


def _outputs(doc: dict, player: dict | None) -> str:
    parts = []
    if player is not None:
        ladder = ", ".join(f"{escape(r['name'])} ({r['width']}×{r['height']})"
                           for r in player["renditions"])
        parts.append(
            "<div class=card><video id=player controls muted playsinline "
            f"data-src='{escape(player['src'])}'></video>"
            f"<p>Ladder: {ladder}.</p><div id=levels></div>"
            "<p id=player-status class=muted>Loading the player…</p>"
            "<noscript>The ladder plays with JavaScript; its files are linked below."
            "</noscript></div>")
    rows = []
    for output in doc.get("outputs") or []:
        link = (f"<a href='{escape(output['download_url'])}'>download</a>"
                if output.get("download_url") else "held until paid for")
        rows.append(f"<tr><td>{escape(output['name'])}</td><td class=mono>"
                    f"{escape(output['sha256'])}</td><td class=n>{output['size_bytes']}</td>"
                    f"<td>{link}</td></tr>")
    if not rows:
        parts.append("<p class=muted>No outputs yet.</p>")
    else:
        parts.append("<table id=outputs><tr><th>name</th><th>sha256</th><th>bytes</th>"
                     f"<th></th></tr>{''.join(rows)}</table>")
    return "".join(parts)


def _timeline(events: list[dict], created, money: Money | None,
              explorer_url: str | None) -> str:
    rows = []
    for row in job_rows(events, created, money):
        tx = ""
        if row.tx:
            tx = (f"<a href='{escape(explorer_url.rstrip('/'))}/tx/{row.tx}'>{row.tx[:12]}…</a>"
                  if explorer_url else f"<span class=mono title='{row.tx}'>{row.tx[:12]}…</span>")
        rows.append(f"<tr><td class=n>+{row.at_s:.1f} s</td><td>{escape(row.state)}</td>"
                    f"<td>{escape(row.type)}</td><td>{escape(row.summary)}</td>"
                    f"<td>{escape(row.money)}</td><td>{tx}</td></tr>")
    return ("<table id=timeline><tr><th>at</th><th>state</th><th>event</th><th>what</th>"
            f"<th>money</th><th>tx</th></tr>{''.join(rows)}</table>")


def _attempts(doc: dict) -> str:
    rows = "".join(
        f"<tr><td class=n>{a.get('number')}</td><td>{escape(str(a.get('worker')))}</td>"
        f"<td class={escape(str(a.get('state')))}>{escape(str(a.get('state')))}</td>"
        f"<td>{escape(str(a.get('reason') or ''))}</td></tr>" for a in doc.get("attempts") or [])
    return (f"<h2>Attempts</h2><table id=attempts><tr><th>#</th><th>worker</th><th>state</th>"
            f"<th>reason</th></tr>{rows}</table>") if rows else ""


def _routing(events: list[dict]) -> str:
    found = decisions(events)
    if not found:
        return "<p class=muted>Not routed yet.</p>"
    cards = []
    for decision in found:
        ranked = "".join(
            f"<tr><td>{escape(str(r.get('worker')))}"
            f"{' ✓' if r.get('worker') in decision['chosen'] else ''}</td>"
            f"<td class=n>{escape(str(r.get('score')))}</td>"
            f"<td class=n>{escape(str(r.get('price')))}</td>"
            f"<td>{escape(_kv(r.get('factors') or {}))}</td></tr>"
            for r in decision["ranked"])
        excluded = "".join(f"<tr><td colspan=4>{count} excluded: {escape(why)} "
                           f"(<span class=mono>{escape(', '.join(first))}</span>"
                           f"{'…' if count > len(first) else ''})</td></tr>"
                           for why, count, first in decision["excluded"])
        what = decision["type"] + (f" ({decision['task']})" if decision["task"] else "")
        cards.append(
            f"<div class='card routing'><b>{escape(what)}</b>"
            f"{' (fallback)' if decision['fallback'] else ''}: {escape(decision['reason'])}"
            "<table><tr><th>worker</th><th>score</th><th>price</th><th>factors</th></tr>"
            f"{ranked}{excluded}</table></div>")
    return "".join(cards)


def _verification(doc: dict, events: list[dict]) -> str:
    parts = []
    guarantee = doc.get("verification") or {}
    if guarantee.get("statement"):
        parts.append(f"<p id=guarantee>Audited {guarantee.get('audited')} of "
                     f"{guarantee.get('population')} {escape(str(guarantee.get('unit')))}: "
                     f"{escape(guarantee['statement'])}.</p>")
    for verdict in verdicts(events):
        checks = " ".join(f"<span class={'passed' if ok else 'failed'}>"
                          f"{'✓' if ok else '✗'} {escape(name)}</span>"
                          for name, ok in verdict["checks"].items())
        parts.append(
            f"<div class='card verdict'><b class={'passed' if verdict['passed'] else 'failed'}>"
            f"{escape(str(verdict['policy']))}: {'passed' if verdict['passed'] else 'failed'}"
            f"</b>{' — ' + escape(str(verdict['reason'])) if verdict['reason'] else ''}"
            f"<p>{checks}</p><p class=mono>{escape(_kv(verdict['measured']))}</p></div>")
    return "".join(parts) or "<p class=muted>Not verified yet.</p>"


def _tasks(events: list[dict]) -> str:
    rows = task_rows(events)
    if not rows:
        return ""
    body = "".join(
        f"<tr><td>{escape(t.task)}</td><td>{escape(t.rendition)}</td>"
        f"<td class=n>{t.attempts}</td><td>{escape(', '.join(t.workers))}</td>"
        f"<td class={escape(t.verdict)}>{escape(t.verdict)}"
        f"{' — ' + escape(str(t.reason)) if t.reason else ''}"
        f"{''.join('<br>' + escape(note) for note in t.notes)}</td>"
        f"<td class=mono>{escape(_kv(_highlights(t.measured)))}</td>"
        f"<td class=mono>{escape(t.ffmpeg or '')}</td></tr>" for t in rows)
    return ("<h2>Segment tasks</h2><table id=tasks><tr><th>task</th><th>rendition</th>"
            "<th>attempts</th><th>worker</th><th>verdict</th><th>measured</th>"
            "<th>FFmpeg (as its worker says)</th></tr>"
            f"{body}</table>")


_HIGHLIGHTS = ("frame_count", "frames_expected", "bitrate_kbps", "bitrate_target_kbps",
               "ssim_min", "psnr_min", "audited", "content_audited", "trusted", "check_cpu_s")


def _highlights(measured: dict) -> dict:
    return {k: measured[k] for k in _HIGHLIGHTS if k in measured}


def _pairs(rows: list[tuple[str, Any]], table_id: str) -> str:
    body = "".join(f"<tr><th>{escape(name)}</th><td>{escape(str(value))}</td></tr>"
                   for name, value in rows)
    return f"<table id={table_id}>{body}</table>"


def _kv(values: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v) if isinstance(v, str) else v}"
                     for k, v in values.items())


def _created(document: dict) -> datetime:
    return datetime.fromisoformat(str(document["created_at"]).replace("Z", "+00:00"))
