"""Shapes of API responses that need more than a model dump (presigned links)."""
from __future__ import annotations

import json

from chalicelib.aws.blobs import S3Uri
from chalicelib.aws.store import JobView
from chalicelib.context import Ports
from chalicelib.errors import Conflict
from chalicelib.jobs.lifecycle import class_rates
from chalicelib.verification import guarantee


def job_document(ports: Ports, view: JobView) -> dict:
    """The job, its attempts, and a short-lived download link per promoted output."""
    doc = view.job.model_dump(mode="json")
    for output in doc["outputs"]:
        output["download_url"] = ports.blobs.presign_get(S3Uri.parse(output["uri"]),
                                                         ports.settings.presign_seconds)
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


PACKAGE_LIMIT = 8 * 1024 * 1024


def package_document(ports: Ports, view: JobView) -> dict:
    """Every file of a job's verified package, each with a short-lived download link; the
    listing is the package.json the job's output hash pins."""
    output = next((o for o in view.job.outputs if o.name == "package.json"), None)
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
