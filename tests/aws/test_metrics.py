"""What a stage tells its operators (chalicelib/telemetry.py): one logger, each line printed
once with the Lambda context; metrics as CloudWatch EMF documents — read back as the handlers
wrote them, from a process's stdout or from the local stack's metrics file."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from conftest import wait_for

from chalicelib import telemetry
from chalicelib.config import stage_environment
from proofline import clips

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ one logger
def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter with the local stage's variables, as a function runs."""
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT),
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
                   "AWS_SECRET_ACCESS_KEY": "testing", **stage_environment("local"), **env}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env=environment, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


INVOCATIONS = """
import app
from chalicelib import telemetry
from chalicelib.jobs import lifecycle
from proofline.pump import LambdaContext, sqs_event

def context(name):
    return LambdaContext(name, 30)

malformed = sqs_event([{"MessageId": "m1", "ReceiptHandle": "r1", "Body": "not json"}],
                      "arn:aws:sqs:us-east-1:123456789012:proofline-local-settlement",
                      "us-east-1")
app.on_settlement(malformed, context("proofline-local-on_settlement"))
app.on_settlement(malformed, context("proofline-local-on_settlement"))

@telemetry.lambda_handler
def every_logger(event, context):
    app.app.log.info("through app.log")
    lifecycle.logger.info("through a module's child logger")
    telemetry.logger.info("through the logger")

every_logger({}, context("proofline-local-every_logger"))
"""


def json_lines(stdout: str) -> list[dict]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]       # nothing but JSON is printed


def test_a_handler_prints_each_log_line_once_with_its_lambda_context():
    done = run_python(INVOCATIONS)
    lines = json_lines(done.stdout)
    malformed = [line for line in lines if line["message"] == "malformed settlement message"]
    assert len(malformed) == 2                          # once per invocation, not twice each
    first, second = malformed
    assert first["function_name"] == second["function_name"] == "proofline-local-on_settlement"
    assert first["cold_start"] is True and second["cold_start"] is False
    assert first["function_request_id"] != second["function_request_id"]
    assert first["service"] == "proofline" and first["level"] == "ERROR"
    for message in ("through app.log", "through a module's child logger", "through the logger"):
        [line] = [line for line in lines if line["message"] == message]
        assert line["function_name"] == "proofline-local-every_logger", line
        assert line["cold_start"] is False
    # Handlers that measured nothing write no metrics and warn about nothing.
    assert not any("_aws" in line for line in lines)
    assert "metrics" not in done.stderr.lower() and "warning" not in done.stderr.lower()


WORKERS = """
import json
from chalicelib import telemetry
from gpu_functions import handler as inference
from media_worker import handler as media
from proofline.pump import LambdaContext

record = {"messageId": "m1", "receiptHandle": "r1", "body": json.dumps(
              {"type": "check", "job": {"job_id": "job-broken"}}),
          "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
          "md5OfBody": "", "eventSource": "aws:sqs", "awsRegion": "us-east-1",
          "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:proofline-local-inference"}
print(json.dumps({"inference": inference.handler({"Records": [record]},
                                                 LambdaContext("inference-worker", 30))}))
broken = {**record, "body": "not json",
          "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:proofline-local-media"}
try:          # a batch whose every record failed is raised whole, as Lambda retries it
    media.handler({"Records": [broken]}, LambdaContext("media-worker", 30))
except Exception as error:
    print(json.dumps({"media": type(error).__name__}))
telemetry.logger.info("after the media worker")
"""


def test_the_worker_functions_log_through_the_one_logger_with_their_context():
    lines = json_lines(run_python(WORKERS).stdout)
    [check] = [line for line in lines if line.get("message") == "check failed"]
    assert check["function_name"] == "inference-worker" and check["job_id"] == "job-broken"
    assert check["service"] == "proofline" and "exception" in check
    [answer] = [line for line in lines if "inference" in line and "message" not in line]
    assert answer["inference"] == {"batchItemFailures": [{"itemIdentifier": "m1"}]}
    [answer] = [line for line in lines if "media" in line and "message" not in line]
    assert answer["media"] == "BatchProcessingError"
    [after] = [line for line in lines if line.get("message") == "after the media worker"]
    assert after["function_name"] == "media-worker"


# ------------------------------------------------------------------ metrics as EMF
EMITS = """
from chalicelib import telemetry

@telemetry.lambda_handler
def handler(event, context):
    for reason in ("media_unreadable", "media_unreadable", "attempts_exhausted"):
        telemetry.metrics.count("JobFailed", kind="media_probe", reason=reason,
                                metadata={"job_id": "job-1"})
    telemetry.metrics.add("ChainFollowerLagBlocks", 7)
    print("HANDLER DONE")
    return {}

from proofline.pump import LambdaContext
handler({}, LambdaContext("proofline-local-emits", 30))
"""


def test_an_invocations_metrics_are_written_when_it_returns_one_document_per_dimension_set():
    out = run_python(EMITS).stdout.splitlines()
    done = out.index("HANDLER DONE")
    assert not any(line.startswith('{"_aws"') for line in out[:done])    # buffered until then
    documents = [json.loads(line) for line in out[done + 1:] if line.startswith('{"_aws"')]
    failed = {d["reason"]: d for d in documents if "JobFailed" in d}
    assert failed["media_unreadable"]["JobFailed"] == [1.0, 1.0]
    assert failed["attempts_exhausted"]["JobFailed"] == [1.0]
    doc = failed["media_unreadable"]
    [directive] = doc["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "Proofline"
    assert directive["Metrics"] == [{"Name": "JobFailed", "Unit": "Count"}]
    # The metric's own dimensions, and the roll-up to the service and stage alone.
    assert directive["Dimensions"] == [["service", "stage", "kind", "reason"],
                                       ["service", "stage"]]
    assert (doc["service"], doc["stage"], doc["kind"], doc["job_id"]) == (
        "proofline", "local", "media_probe", "job-1")
    [lag] = [d for d in documents if "ChainFollowerLagBlocks" in d]
    assert lag["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service", "stage"]]
    assert lag["ChainFollowerLagBlocks"] == [7.0]


def test_metrics_are_off_with_powertools_metrics_disabled():
    out = run_python(EMITS, POWERTOOLS_METRICS_DISABLED="true").stdout
    assert "HANDLER DONE" in out and '"_aws"' not in out


def test_a_metric_the_stage_does_not_list_is_refused():
    with pytest.raises(ValueError):
        telemetry.metrics.count("JobsCreated", kind="media_probe")
    with pytest.raises(ValueError):                  # a dimension JobCreated does not have
        telemetry.metrics.count("JobCreated", kind="media_probe", reason="x")


# ------------------------------------------------------------------ through the local stack
def emitted(stack, metric: str, *, timeout: float = 30, minimum: int = 1, **match) -> list[dict]:
    """The EMF documents of `metric` in the stack's metrics file whose fields include `match`,
    once there are `minimum` of them (a handler writes its metrics when it returns)."""
    path = Path(stack.state_dir) / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        found = [d for d in map(json.loads, lines)
                 if metric in d and all(d.get(k) == v for k, v in match.items())]
        if len(found) >= minimum or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def assert_emf(document: dict, metric: str, dimensions: list[str]) -> None:
    [directive] = document["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "Proofline"
    assert {"Name": metric, "Unit": "Count"} in directive["Metrics"]
    assert directive["Dimensions"][0] == ["service", "stage", *dimensions]
    assert (document["service"], document["stage"]) == ("proofline", "local")


@pytest.mark.stack
def test_a_job_through_the_stack_emits_created_and_settled_by_its_class(api, stack,
                                                                        tmp_path):
    # A clip of its own: an input is its first uploader's, and the session's shared clip
    # belongs to the tests that own it.
    uploaded = api.upload(clips.make_clip(tmp_path / "metrics.mp4", seconds=0.5, width=96,
                                          height=64))
    job, _ = api.submit({"kind": "media_probe", "input_uri": uploaded["input_uri"],
                         "input_hash": uploaded["input_hash"], "max_attempts": 1})
    assert wait_for(api, job["job_id"])["state"] == "settled"
    for metric in ("JobCreated", "JobSettled", "SettlementSkipped"):
        [document] = emitted(stack, metric, job_id=job["job_id"])
        assert_emf(document, metric, ["kind"])
        assert document["kind"] == "media_probe" and document[metric] == [1.0]
    assert not emitted(stack, "JobFailed", timeout=0, job_id=job["job_id"])


@pytest.fixture(scope="module")
def corrupt_input(api, tmp_path_factory):
    return api.upload(clips.make_corrupt(tmp_path_factory.mktemp("corrupt") / "noise.mp4"))


@pytest.mark.stack
def test_a_failed_job_emits_job_failed_with_its_reason(api, stack, corrupt_input):
    job, _ = api.submit({"kind": "media_probe", "input_uri": corrupt_input["input_uri"],
                         "input_hash": corrupt_input["input_hash"], "max_attempts": 1})
    failed = wait_for(api, job["job_id"])
    assert failed["state"] == "failed" and failed["reason"]
    [document] = emitted(stack, "JobFailed", job_id=job["job_id"])
    assert_emf(document, "JobFailed", ["kind", "reason"])
    assert (document["kind"], document["reason"]) == ("media_probe", failed["reason"])
    assert not emitted(stack, "JobSettled", timeout=0, job_id=job["job_id"])


@pytest.mark.stack
def test_a_manifest_refused_at_the_door_emits_job_rejected(api, stack):
    match = {"kind": "media_probe", "reason": "unknown_profile", "source": "http"}
    before = len(emitted(stack, "JobRejected", timeout=0, **match))
    response = requests.post(f"{api.base_url}/jobs", timeout=30, json={
        "kind": "media_probe", "input_uri": "s3://nowhere/clip.mp4", "profile": "nope"},
        headers={"Idempotency-Key": str(uuid.uuid4())})
    assert response.status_code == 400 and response.json()["reason"] == "unknown_profile"
    documents = emitted(stack, "JobRejected", minimum=before + 1, **match)
    assert len(documents) == before + 1
    assert_emf(documents[-1], "JobRejected", ["kind", "reason", "source"])


@pytest.mark.stack
def test_the_chain_follower_emits_its_lag(stack):
    # The follower runs on its schedule (a minute lasts a second here) and catches up: the
    # local chain only moves when a test sends a transaction.
    documents = emitted(stack, "ChainFollowerLagBlocks", ChainFollowerLagBlocks=[0.0])
    assert documents, "the follower wrote no lag of 0 blocks"
    assert_emf(documents[-1], "ChainFollowerLagBlocks", [])
    assert documents[-1]["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service", "stage"]]


@pytest.mark.stack
def test_reconcile_emits_the_settlement_drift_it_found(stack, ports):
    from chalicelib.settlement import payments
    with telemetry.metrics.invocation():
        rows = payments.reconcile(ports)
    documents = emitted(stack, "SettlementDrift", SettlementDrift=[float(len(rows))])
    assert documents
    assert_emf(documents[-1], "SettlementDrift", [])
