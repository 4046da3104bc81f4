"""`GET /jobs/{id}/inputs`' document: a link per input the stage keeps (the source and each
planned segment), and none for an object anywhere else, whatever a record names."""
from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

from chalicelib.aws.store import JobView
from chalicelib.catalog import load
from chalicelib.jobs.documents import inputs_document
from chalicelib.jobs.lifecycle import new_job
from chalicelib.models import Manifest, TranscodePlan

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
HASH = "sha256:" + "ab" * 32


class Blobs:
    def __init__(self):
        self.signed = []

    def presign_get(self, uri, expires: int) -> str:
        self.signed.append((str(uri), expires))
        return f"https://signed/{uri.bucket}/{uri.key}?expires={expires}"


def ports() -> SimpleNamespace:
    return SimpleNamespace(blobs=Blobs(), settings=SimpleNamespace(
        artifacts_bucket="art", intake_bucket="drop", presign_seconds=300))


def view(input_uri: str, segment_uris: list[str] | None) -> JobView:
    job, _ = new_job(Manifest(kind="ffmpeg_hls", input_uri=input_uri, input_hash=HASH),
                     catalog=load(), job_id="job-inputs", source="http", correlation_id="c",
                     now=NOW)
    if segment_uris is not None:
        job = job.model_copy(update={"plan": TranscodePlan(
            profile="hls-abr", container="hls", segment_s=4.0, fps="25", duration_s=8.0,
            renditions=[], has_audio=False, split={}, command_template={},
            segments=[{"index": i, "start_s": 4.0 * i, "duration_s": 4.0, "uri": uri,
                       "sha256": HASH} for i, uri in enumerate(segment_uris)])})
    return JobView(job=job)


def test_the_source_and_each_segment_get_a_short_lived_link():
    p = ports()
    doc = inputs_document(p, view("s3://art/inputs/sha256/ab", ["s3://art/segments/sha256/a.ts",
                                                                "s3://art/segments/sha256/b.ts"]))
    assert doc["source"] == {"uri": "s3://art/inputs/sha256/ab", "sha256": HASH,
                             "url": "https://signed/art/inputs/sha256/ab?expires=300"}
    assert [(s["index"], s["start_s"], s["sha256"]) for s in doc["segments"]] == [
        (0, 0.0, HASH), (1, 4.0, HASH)]
    assert all(s["url"].startswith("https://signed/art/segments/") for s in doc["segments"])
    assert {expires for _, expires in p.blobs.signed} == {300}


def test_a_dropped_source_is_linked_and_nothing_before_the_plan():
    doc = inputs_document(ports(), view("s3://drop/intake/hls-abr/a.mp4", None))
    assert doc["source"]["url"].startswith("https://signed/drop/intake/")
    assert doc["segments"] == []


def test_no_link_outside_the_stages_input_keys():
    p = ports()
    doc = inputs_document(p, view("s3://elsewhere/a.mp4", ["s3://art/packages/x/480p/a.ts",
                                                           "s3://drop/proofline-quarantine/x"]))
    assert doc["source"]["url"] is None
    assert [s["url"] for s in doc["segments"]] == [None, None]
    assert p.blobs.signed == []
