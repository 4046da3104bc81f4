"""Shapes of API responses that need more than a model dump (presigned links)."""
from __future__ import annotations

import json

from chalicelib.aws.blobs import S3Uri
from chalicelib.aws.store import JobView
from chalicelib.context import Ports
from chalicelib.errors import Conflict
from chalicelib.jobs.lifecycle import class_rates
from chalicelib.jobs.uploads import QUARANTINE
from chalicelib.models import State
from chalicelib.settlement.money import from_base_units
from chalicelib.verification import guarantee


def handed_out(view: JobView) -> bool:
    """Whether a job's outputs may be downloaded: always without escrow; with escrow, once
    the money is committed to the worker on chain (released, held for the dispute window,
    or in dispute). A job whose client reclaimed its funds, or that is verified but not yet
    paid, keeps its outputs."""
    job = view.job
    if job.escrow is None:
        return True
    if job.state in (State.SETTLED, State.DISPUTED):
        return job.escrow.charged != 0            # 0: forfeited, the client was refunded
    return job.state == State.VERIFIED and any(e.type == "settlement.scheduled"
                                               for e in view.events)


def job_document(ports: Ports, view: JobView) -> dict:
    """The job, its attempts, and a short-lived download link per promoted output (once
    they are paid for), and for an escrow job what is held, charged, refunded and the fee."""
    doc = view.job.model_dump(mode="json")
    paid_for = handed_out(view)
    for output in doc["outputs"]:
        output["download_url"] = ports.blobs.presign_get(
            S3Uri.parse(output["uri"]), ports.settings.presign_seconds) if paid_for else None
    if view.job.escrow is not None:
        doc["payment"] = payment(view.job)
    doc["attempts"] = [a.model_dump(mode="json") for a in view.attempts]
    if view.tasks:
        doc["progress"] = progress(view.tasks)
    doc["metrics"] = job_metrics(view)
    doc["verification"] = guarantee.summarize(
        {"type": e.type, "data": e.data} for e in view.events)
    if view.job.kind != "unknown":
        doc["class_stats"] = class_rates(ports, view.job.kind)
    return doc


METRIC_KEYS = ("queue_s", "cold_start_s", "warm", "ttfb_s", "model_s", "cost_usd",
               "batch_jobs", "batch_texts", "duration_ms")


def job_metrics(view: JobView) -> dict:
    """Queue time, cold start, time to first byte, total and cost of the successful attempt,
    from the timeline."""
    done = [e for e in view.events if e.type == "execution.completed"]
    metrics = {k: done[-1].data[k] for k in METRIC_KEYS if done and k in done[-1].data}
    if view.job.state.terminal:
        metrics["total_s"] = round((view.job.updated_at - view.job.created_at).total_seconds(), 3)
    return metrics


def progress(tasks) -> dict:
    """Tasks passed / total, overall and per rendition (the audio track counts as one)."""
    groups: dict[str, list[int]] = {}
    for task in tasks:
        done_total = groups.setdefault(task.rendition or "audio", [0, 0])
        done_total[0] += task.state == "passed"
        done_total[1] += 1
    return {"passed": sum(d for d, _ in groups.values()),
            "total": sum(t for _, t in groups.values()),
            "failed": sum(t.state == "failed" for t in tasks),
            "by_rendition": {k: {"passed": d, "total": t} for k, (d, t) in groups.items()}}


def payment(job) -> dict:
    """An escrow job's money in its token's units (decimal strings): held on chain now,
    and once settled what was charged, the fee within it, and what went back."""
    terms = job.escrow
    settled = terms.charged is not None or terms.refunded is not None
    held = 0 if settled or not terms.funded_tx else terms.amount
    as_units = lambda units: None if units is None else str(  # noqa: E731
        from_base_units(units, terms.decimals))
    return {"symbol": terms.symbol, "max_price": as_units(terms.amount),
            "price": as_units(terms.price), "held": as_units(held),
            "charged": as_units(terms.charged), "fee": as_units(terms.fee),
            "refunded": as_units(terms.refunded)}


PACKAGE_LIMIT = 8 * 1024 * 1024


def package_document(ports: Ports, view: JobView) -> dict:
    """Every file of a job's verified package, each with a short-lived download link; the
    listing is the package.json the job's output hash pins."""
    output = next((o for o in view.job.outputs if o.name == "package.json"), None)
    if output is not None and not handed_out(view):
        raise Conflict(f"job {view.job.job_id}'s package is handed out once it is paid for "
                       f"(state {view.job.state})", reason="payment_pending")
    if output is None:
        raise Conflict(f"job {view.job.job_id} has no verified package (state {view.job.state})",
                       reason="no_package")
    listing_uri = S3Uri.parse(output.uri)
    listing = json.loads(ports.blobs.read(listing_uri, PACKAGE_LIMIT))
    prefix = listing_uri.key.rsplit("/", 1)[0]

    def link(path: str) -> str:
        return ports.blobs.presign_get(S3Uri(listing_uri.bucket, f"{prefix}/{path}"),
                                       ports.settings.presign_seconds)
    return {"job_id": view.job.job_id, "sha256": output.sha256, "entry": listing["entry"],
            "entry_uri": f"s3://{listing_uri.bucket}/{prefix}/{listing['entry']}",
            "entry_url": link(listing["entry"]),
            "files": [{**f, "download_url": link(f["path"])} for f in listing["files"]]}


# Where a job's inputs may lie: uploads and source segments in the artifacts bucket, drops in
# the intake bucket. A link is only ever made under these, whatever a record names.
INPUT_PREFIXES = ("inputs/", "segments/")


def inputs_document(ports: Ports, view: JobView) -> dict:
    """Short-lived links to what a job's work read: its source and, for a transcode, each
    source segment its tasks were cut to (with the hash every task checked), so its client
    can re-run a task where it likes (`proofline jobs reproduce`). They are the client's own
    data, so unlike the outputs they are not held back until payment."""
    job = view.job
    source = None
    if job.input_uri is not None:
        source = {"uri": job.input_uri, "sha256": job.manifest.input_hash,
                  "url": _input_link(ports, job.input_uri)}
    segments = [{"index": s["index"], "start_s": s["start_s"], "duration_s": s["duration_s"],
                 "sha256": s["sha256"], "url": _input_link(ports, s["uri"])}
                for s in (job.plan.segments if job.plan else [])]
    return {"job_id": job.job_id, "source": source, "segments": segments}


def _input_link(ports: Ports, uri: str) -> str | None:
    """A GET link for an input the stage keeps, None for one elsewhere (this function's
    rights, which a presigned link carries, stop at the stage's own input keys)."""
    where = S3Uri.parse(uri)
    settings = ports.settings
    kept = ((where.bucket == settings.artifacts_bucket and where.key.startswith(INPUT_PREFIXES))
            or (where.bucket == settings.intake_bucket and not where.key.startswith(QUARANTINE)))
    return ports.blobs.presign_get(where, settings.presign_seconds) if kept else None
