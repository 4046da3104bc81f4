"""Least privilege, written down and proven. Each deployed function's policy names the stage's
tables, queues, buckets, secrets and log groups by ARN (`.chalice/policy-<stage>.json` for the
control plane's Lambdas, each container function's `Statement` list in template.yaml), and:

(a) every AWS call a function makes is granted to it, and
(b) every grant is used by some call.

The calls are the local stack's (proofline/calls.py records each function's, as IAM names
them, while the session's stack tests run: this module runs after them, `after_stack`). It
first drives a compact workload of its own through every function, so it stands alone: an
upload in one PUT and one in parts, a probe, an escrow transcode, a dropped transcode, an
escrow embedding, a dropped JSONL embedding, a marketplace worker's embedding challenge, a
media attempt that fails and is retried, the inference pool's collection schedule, reads and
the deep health check.

What the stack cannot record is added by reasoning, each with its reason: the secrets a
function reads (the local stack passes them as plain variables), the log groups Lambda's
runtime writes for the control plane (the workers' are SAM's: it attaches
AWSLambdaBasicExecutionRole, and AWSLambdaSQSQueueExecutionRole for their triggers, to the
roles it makes), and the queue URL lookup a function makes in its own process (locally the
functions share one process and its cache). Grants used only on paths no workload here takes
are listed in RARE, each with the reason.
"""
from __future__ import annotations

import contextvars
import dataclasses
import fnmatch
import io
import json
import os
import re
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import numpy as np
import pytest
from botocore.config import Config
from botocore.stub import Stubber
from conftest import drop, fund_job, wait_for
from eth_account import Account
from samtranslator.yaml_helper import yaml_parse

from chalicelib import aws as aws_adapter
from chalicelib.aws.resources import RESOURCES
from chalicelib.config import CHALICE_CONFIG, SECRETS, stage_environment
from chalicelib.identity.signing import did_for
from chalicelib.jobs import lifecycle
from chalicelib.models import Manifest, State
from gpu_functions import handler as inference_handler
from media_worker import handler as media_handler
from proofline import calls, clips
from proofline.calls import acting_as, function_of
from proofline.client import ApiError
from proofline.pump import LambdaContext, scheduled_event, sqs_event
from proofline.worker_agent import Agent
from tests.deploy.rehearsal import RESOURCELESS

ROOT = Path(__file__).resolve().parents[2]
STAGE, LOCAL = "dev", "local"
REGION, ACCOUNT = "us-east-1", "123456789012"      # any: the dev policy leaves them open
TEMPLATE = ROOT / "template.yaml"
CONFIG = json.loads(CHALICE_CONFIG.read_text())

# Calls IAM never refuses.
NO_GRANT_NEEDED = {"sts:GetCallerIdentity": "answers to any valid credentials"}

# Resources tests make for themselves, outside every stage (and so outside every policy).
TEST_MADE = {"batch-*": "tests/jobs/test_s3_intake.py delivers notifications of a bucket of "
                        "its own to the intake queue, to count deliveries"}

# Grants no workload here uses, each with the path that needs it: (function or policy file,
# action, resource pattern) → why.
RARE: dict[tuple[str, str, str], str] = {
    **{("SegmentWorkerFunction", action, "arn:aws:sqs:*:*:proofline-dev-segments"):
       "a segment task that fails its check is redone: its retry goes back to the pool's "
       "segments queue: tests/media/test_transcode.py, a lying worker's segment redone"
       for action in ("sqs:GetQueueUrl", "sqs:SendMessage")},
    ("SegmentWorkerFunction", "dynamodb:Query",
     "arn:aws:dynamodb:*:*:table/proofline-dev-jobs/index/*"):
        "a failed segment task's retry is routed again, over the marketplace's workers (read "
        "by state): tests/media/test_transcode.py, a lying worker's segment redone",
    **{("MediaWorkerFunction", action, "arn:aws:sqs:*:*:proofline-dev-checks"):
       "a transcode planned again (its attempt retried) sends the checks of tasks submitted "
       "before: tests/media/test_transcode.py, a re-planned job, in-process"
       for action in ("sqs:GetQueueUrl", "sqs:SendMessage")},
    ("policy-dev.json", "sqs:SendMessage", "arn:aws:sqs:*:*:proofline-dev-segments"):
        "a marketplace offer or lease that lapses goes back to the router, which may pick the "
        "pool: the sweeper then sends the task to the segments queue",
    ("SegmentWorkerFunction", "s3:DeleteObject", "arn:aws:s3:::proofline-dev-artifacts/packages/*"):
        "a segment copied into its package that does not hash as its task recorded is removed: "
        "tests/media/test_transcode.py, a promoted output altered before it is placed, in-process",
    ("InferenceWorkerFunction", "dynamodb:Query", "arn:aws:dynamodb:*:*:table/proofline-dev-jobs"):
        "the collection schedule reads a spawned Modal call's timeline: only with Modal "
        "credentials (tests/gpu_functions/test_inference.py, in-process)",
}


# -- the stage's policies ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Grant:
    policy: str          # the policy file, or the template function
    sid: str
    action: str
    resource: str

    def allows(self, action: str, arn: str) -> bool:
        return (fnmatch.fnmatchcase(action.lower(), self.action.lower())
                and fnmatch.fnmatchcase(arn, self.resource))

    def __str__(self) -> str:
        return f"{self.policy} {self.sid}: {self.action} on {self.resource}"


def grants(policy: str, document: dict) -> list[Grant]:
    found = []
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow", statement
        assert not {"NotAction", "NotResource", "Condition"} & set(statement), statement
        actions, resources = statement["Action"], statement["Resource"]
        for action in [actions] if isinstance(actions, str) else actions:
            for resource in [resources] if isinstance(resources, str) else resources:
                found.append(Grant(policy, statement.get("Sid", "?"), action, resource))
    return found


class Template:
    """template.yaml with the intrinsics its policies use resolved for one stage."""

    PSEUDO = {"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": ACCOUNT}
    NAMES = {"AWS::DynamoDB::Table": "TableName", "AWS::SQS::Queue": "QueueName",
             "AWS::S3::Bucket": "BucketName"}

    def __init__(self, stage: str):
        self.stage = stage
        # Short-form tags read as their long form, as the SAM translator reads them.
        self.body = yaml_parse(TEMPLATE.read_text())
        self.resources = self.body["Resources"]

    def resolve(self, value):
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        [(kind, argument)] = value.items()
        if kind == "Ref":
            return self._ref(argument)
        if kind == "Fn::GetAtt":
            return self._attribute(*argument)
        if kind == "Fn::Sub":
            return re.sub(r"\$\{([A-Za-z0-9:.]+)\}", lambda m: self._ref(m.group(1)), argument)
        raise AssertionError(f"cannot resolve {value!r}")

    def _ref(self, name: str) -> str:
        if "." in name:
            return self._attribute(*name.split(".", 1))
        if name == "Stage":
            return self.stage
        if name in self.PSEUDO:
            return self.PSEUDO[name]
        if name in self.body.get("Parameters", {}):
            return self.body["Parameters"][name].get("Default", "")
        return self._name(name)

    def _name(self, logical: str) -> str:
        resource = self.resources[logical]
        return self.resolve(resource["Properties"][self.NAMES[resource["Type"]]])

    def _attribute(self, logical: str, attribute: str) -> str:
        kind, name = self.resources[logical]["Type"], self._name(logical)
        if attribute == "QueueName":
            return name
        assert attribute == "Arn", attribute
        return {"AWS::DynamoDB::Table": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}",
                "AWS::SQS::Queue": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}",
                "AWS::S3::Bucket": f"arn:aws:s3:::{name}"}[kind]

    def functions(self) -> dict[str, dict]:
        return {k: r for k, r in self.resources.items() if r["Type"] == "AWS::Serverless::Function"}

    def grants(self, function: str) -> list[Grant]:
        found = []
        for policy in self.functions()[function]["Properties"]["Policies"]:
            assert set(policy) <= {"Version", "Statement"}, (
                f"{function}: a policy template or managed policy ({list(policy)}), not "
                "statements naming exactly what it does")
            found += grants(function, self.resolve_document(policy))
        return found

    def resolve_document(self, document):
        if isinstance(document, dict) and not (len(document) == 1 and (
                {"Ref", "Fn::GetAtt", "Fn::Sub"} & set(document))):
            return {k: self.resolve_document(v) for k, v in document.items()}
        if isinstance(document, list):
            return [self.resolve_document(v) for v in document]
        return self.resolve(document)

    def environment(self, function: str) -> dict[str, str]:
        variables = {**self.body.get("Globals", {}).get("Function", {}).get(
            "Environment", {}).get("Variables", {}),
            **self.functions()[function]["Properties"].get("Environment", {}).get(
                "Variables", {})}
        return {k: v for k, v in variables.items()}

    def worker_of(self, queue_logical_id: str) -> str:
        """The function whose SQS trigger is this queue."""
        [name] = [name for name, fn in self.functions().items()
                  for event in fn["Properties"].get("Events", {}).values()
                  if event["Type"] == "SQS"
                  and event["Properties"]["Queue"] == {"Fn::GetAtt": [queue_logical_id, "Arn"]}]
        return name


def chalice_functions() -> list[str]:
    """Every Lambda `chalice package` makes of app.py: the API, its authorizer, each trigger."""
    import app
    return ["api_handler", "session_authorizer", *(s.name for s in app.app.event_sources)]


def policy_file(stage: str, function: str) -> str:
    settings = CONFIG["stages"][stage]
    override = settings.get("lambda_functions", {}).get(function, {})
    assert override.get("autogen_policy", settings.get("autogen_policy")) is False, function
    return override.get("iam_policy_file", settings["iam_policy_file"])


def policies(stage: str) -> dict[str, list[Grant]]:
    """Each deployed function → its grants."""
    found = {}
    for function in chalice_functions():
        name = policy_file(stage, function)
        found[function] = grants(name, json.loads((ROOT / ".chalice" / name).read_text()))
    template = Template(stage)
    for queue in RESOURCES.queues:
        if queue.process_pool:
            found[queue.consumer] = template.grants(template.worker_of(queue.logical_id))
    return found


# -- what the functions do --------------------------------------------------------------------
def stage_names(stage: str) -> dict[str, str]:
    """Each table, queue (and dead-letter queue) and bucket of the local stage → its name on
    `stage`."""
    local, there = stage_environment(LOCAL), stage_environment(stage)
    names = {}
    for resource in (*RESOURCES.tables, *RESOURCES.queues, *RESOURCES.buckets):
        variable = resource.setting.upper()
        names[local[variable]] = there[variable]
    for queue in RESOURCES.queues:
        variable = queue.setting.upper()
        names[local[variable] + "-dlq"] = there[variable] + "-dlq"
    return names


def split(action: str, resource: str) -> tuple[str, str]:
    """A recorded resource as (the table, queue or bucket it names, the rest)."""
    service = action.split(":")[0]
    if service == "dynamodb":                 # table/NAME[/index/INDEX]
        resource = resource.removeprefix("table/")
    if service in ("dynamodb", "s3"):
        name, slash, rest = resource.partition("/")
        return name, slash + rest
    return resource, ""


def arn(action: str, resource: str, names: dict[str, str]) -> str | None:
    """A recorded resource as the stage's ARN; None for a resource no stage has."""
    name, rest = split(action, resource)
    if name not in names:
        return None
    mapped = names[name] + rest
    return {"s3": f"arn:aws:s3:::{mapped}",
            "dynamodb": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{mapped}",
            "sqs": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{mapped}"}[action.split(":")[0]]


def secret_reads(stage: str) -> dict[str, set[str]]:
    """Each function → the secrets its environment names. `config.secret` reads
    `<NAME>_SECRET` from Secrets Manager (through Powertools, with its own client, so the
    recorder never sees it; the local stack passes the values themselves instead): a
    function is given a name only for a secret it reads (ports.default reads the audit
    secret and the session keys when named, each chain key on first use by its role, the
    pools' results are signed with the pool key)."""
    def named(env: dict) -> list:
        assert not {f"{name}_PARAMETER" for name in SECRETS} & set(env), "SSM is not granted"
        return [env[f"{name}_SECRET"] for name in SECRETS if f"{name}_SECRET" in env]

    control_plane = set(named(stage_environment(stage)))
    template = Template(stage)
    found = {f: set(control_plane) for f in chalice_functions()}
    for queue in RESOURCES.queues:
        if queue.process_pool:
            env = template.environment(template.worker_of(queue.logical_id))
            found[queue.consumer] = {template.resolve(v) for v in named(env)}
    return found


def log_group(stage: str, function: str) -> str:
    """Where Lambda's runtime writes a control-plane function's logs with its role: the
    function's name, as `chalice deploy` names it and `chalice package` is told to
    (.chalice/package-template.json); the API's function is the stage's name."""
    return f"proofline-{stage}" if function == "api_handler" else f"proofline-{stage}-{function}"


def required(stage: str, recorded: list[dict]) -> tuple[dict[str, set[tuple[str, str, str]]],
                                                        list[str]]:
    """Each function → the (action, ARN, why) it needs; and what was recorded on resources
    no stage has."""
    names = stage_names(stage)
    needs: dict[str, set[tuple[str, str, str]]] = {}
    foreign = []
    for line in recorded:
        function, action, resource = line["function"], line["action"], line["resource"]
        if action in NO_GRANT_NEEDED:
            continue
        if action in RESOURCELESS:
            assert resource == "*", line
            needs.setdefault(function, set()).add((action, "*", "recorded"))
            continue
        where = arn(action, resource, names)
        if where is None:
            name, _ = split(action, resource)
            if not any(fnmatch.fnmatchcase(name, made) for made in TEST_MADE):
                foreign.append(f"{function}: {action} on {resource}")
            continue
        needs.setdefault(function, set()).add((action, where, "recorded"))
        if action == "sqs:SendMessage":
            needs[function].add(("sqs:GetQueueUrl", where, "its own process looks the URL up"))
    for function, secrets in secret_reads(stage).items():
        for name in secrets:
            needs.setdefault(function, set()).add((
                "secretsmanager:GetSecretValue",
                f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{name}-AbCdEf",
                "named by its environment"))
    for function in chalice_functions():
        group = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/{log_group(stage, function)}"
        stream = f"{group}:log-stream:2026/01/01/[$LATEST]0a1b2c3d"
        needs.setdefault(function, set()).update({
            ("logs:CreateLogGroup", group, "Lambda's runtime"),
            ("logs:CreateLogStream", stream, "Lambda's runtime"),
            ("logs:PutLogEvents", stream, "Lambda's runtime")})
    return needs, foreign


# -- the workload -----------------------------------------------------------------------------
MEDIA = next(q.consumer for q in RESOURCES.queues if q.logical_id == "MediaQueue")
INFERENCE = next(q.consumer for q in RESOURCES.queues if q.logical_id == "InferenceQueue")


class HeldQueues:
    """Outbound messages kept, not sent: the test hands them to a handler itself."""

    def __init__(self):
        self.sent: list[tuple[str, dict]] = []

    def send(self, queue, message):
        self.sent.append((queue, json.loads(json.dumps(message))))


def media_event(message: dict) -> dict:
    return sqs_event([{"MessageId": str(uuid.uuid4()), "ReceiptHandle": "handle",
                       "Body": json.dumps(message),
                       "Attributes": {"ApproximateReceiveCount": "1",
                                      "SentTimestamp": "1700000000000"}}],
                     f"arn:aws:sqs:{REGION}:{ACCOUNT}:proofline-local-media", REGION)


def a_media_attempt_fails_and_is_retried(ports, slot, monkeypatch) -> str:
    """The media worker's attempt fails (not the input's fault): its retry goes back to the
    media queue, sent by the media worker itself."""
    held = dataclasses.replace(ports, queues=HeldQueues())
    manifest = Manifest(kind="media_probe", input_uri=slot["input_uri"],
                        input_hash=slot["input_hash"], max_attempts=3)
    job, _ = lifecycle.accept(held, manifest, job_id=f"job-{uuid.uuid4().hex[:16]}",
                              source="http", correlation_id=str(uuid.uuid4()))
    assert job.state == State.ASSIGNED
    [(_, message)] = held.queues.sent

    def lost_disk(p, job, workdir):
        raise OSError("no space left on device")
    monkeypatch.setitem(media_handler.RUNNERS, "media_probe", lost_disk)
    with acting_as(function_of(MEDIA)):
        media_handler.handler(media_event(message), LambdaContext("media", 60))
    monkeypatch.undo()
    return job.job_id


def the_collection_schedule_runs() -> None:
    """What the inference pool's one-minute schedule does (it lists running jobs)."""
    with acting_as(function_of(INFERENCE)):
        inference_handler.handler(scheduled_event("collect", REGION), LambdaContext("collect", 60))


MARKETPLACE = {
    "ffmpeg_hls": {"job_classes": ["ffmpeg_hls"], "region": "us-east-1",
                   "price_per_unit": {"ffmpeg_hls": "0.0001"}, "codecs": ["h264"]},
    "embed_batch": {"job_classes": ["embed_batch"], "region": "us-east-1",
                    "price_per_unit": {"embed_batch": "0.0001"},
                    "models_cached": ["sentence-transformers/all-MiniLM-L6-v2"]},
}


def marketplace_workers_pass_their_challenges(stack, api) -> None:
    """A media and an inference worker register and each is given a challenge job: leased
    (a video task, a whole embedding job) with presigned URLs, its result signed; the
    control plane freezes the evidence, and the pools check it (the segment's fingerprints,
    the embedding re-executed)."""
    agents = []
    for job_class, claims in MARKETPLACE.items():
        account = Account.create()
        agent = Agent(api=api, account=account, claims=claims, heartbeat_every_s=1,
                      did=did_for(account.address, stack.info.chain_id), poll_s=0.3,
                      log=lambda _: None)
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        agents.append((job_class, agent, thread))
    try:
        deadline = time.monotonic() + 240
        waiting = list(agents)
        while waiting and time.monotonic() < deadline:
            for job_class, agent, thread in list(waiting):
                try:
                    worker = api.worker(agent.did)
                except Exception:              # not registered yet
                    continue
                if worker.get("routable_for") == [job_class]:
                    waiting.remove((job_class, agent, thread))
                challenge = worker.get("challenges", {}).get(job_class) or {}
                assert challenge.get("state") != "failed", challenge
            time.sleep(0.3)
        assert not waiting, [api.worker(agent.did) for _, agent, _ in waiting]
    finally:
        for _, agent, thread in agents:
            agent.stop()
        for _, agent, thread in agents:
            thread.join(timeout=60)


@pytest.fixture(scope="module")
def workload(stack, api, client_api, aws, ports, media_dir, tmp_path_factory):
    """Every function, through the stack's own doors."""
    monkeypatch = pytest.MonkeyPatch()
    scratch = tmp_path_factory.mktemp("iam")
    small = clips.make_gop_clip(media_dir / "iam-small.mp4", seconds=6.0, gop=100, width=320,
                                height=240, fps=25)
    clip = clips.make_clip(media_dir / "iam-clip.mp4", seconds=1.0, width=160, height=120)
    large = scratch / "large.bin"                       # past this stack's 8 MiB: in parts
    large.write_bytes(os.urandom(9 * 2**20))
    texts = scratch / "texts.jsonl"
    texts.write_text('"a verified job"\n"paid after checking"\n')
    client_api.upload(large)
    slot = client_api.upload(clip)
    small_slot = client_api.upload(small)
    texts_slot = client_api.upload(texts)

    jobs = {}
    probe, _ = client_api.submit({"kind": "media_probe", "input_uri": slot["input_uri"],
                                  "input_hash": slot["input_hash"]},
                                 idempotency_key=str(uuid.uuid4()))
    jobs["probe"] = probe["job_id"]
    transcode, _ = client_api.submit({
        "kind": "ffmpeg_hls", "profile": "hls-720p", "input_uri": small_slot["input_uri"],
        "input_hash": small_slot["input_hash"], "payment_policy": "escrow_before_start",
        "max_price": "0.02"}, idempotency_key=str(uuid.uuid4()))
    embedding, _ = client_api.submit({
        "kind": "embed_batch", "input_uri": texts_slot["input_uri"],
        "input_hash": texts_slot["input_hash"], "payment_policy": "escrow_before_start",
        "max_price": "0.01"}, idempotency_key=str(uuid.uuid4()))
    for job in (transcode, embedding):
        fund_job(stack, job)
    jobs["escrow transcode"], jobs["escrow embedding"] = transcode["job_id"], embedding["job_id"]
    jobs["dropped transcode"], _ = drop(aws, f"intake/hls-720p/iam-{uuid.uuid4().hex[:8]}.mp4",
                                        path=small)
    jobs["dropped embedding"], _ = drop(
        aws, f"intake/embed_batch/iam-{uuid.uuid4().hex[:8]}.jsonl",
        body=b'{"text": "dropped"}\n{"text": "and embedded"}\n')
    jobs["retried probe"] = a_media_attempt_fails_and_is_retried(ports, slot, monkeypatch)

    for what, job_id in jobs.items():
        final = wait_for(api, job_id, timeout=240)
        assert final["state"] == "settled", (what, api.events(job_id))
    retried = api.job(jobs["retried probe"])
    assert {a["number"]: a["state"] for a in retried["attempts"]}[1] == "failed"
    vectors = client_api.job(jobs["escrow embedding"])["outputs"][0]
    assert np.load(io.BytesIO(_download(vectors["download_url"]))).shape == (2, 384)
    api.package(jobs["dropped transcode"])
    api.jobs(limit=5)
    client_api.jobs(limit=5)
    api.events(jobs["probe"])
    api.deep_health()
    assert "queues" in json.loads(_download(f"{stack.info.api_url}/status.json"))
    # Refused once accepting began (priced over its ceiling): the idempotency record is
    # deleted, so a corrected retry may pass.
    with pytest.raises(ApiError) as refused:
        client_api.submit({"kind": "media_probe", "input_uri": slot["input_uri"],
                           "input_hash": slot["input_hash"], "max_price": "0.00000001",
                           "payment_policy": "escrow_before_start"},
                          idempotency_key=str(uuid.uuid4()))
    assert refused.value.reason == "price_above_ceiling", refused.value
    the_collection_schedule_runs()
    marketplace_workers_pass_their_challenges(stack, api)
    time.sleep(3)        # the schedules (sweep, chain follower, reconciliation) come round
    return jobs


def _download(url: str) -> bytes:
    with urllib.request.urlopen(url) as response:
        return response.read()


def recordings() -> list[dict]:
    directory = os.environ.get(calls.ENVIRONMENT)
    assert directory, f"{calls.ENVIRONMENT} is not set: tests/conftest.py sets it for the stack"
    return calls.read(directory)


# -- the checks -------------------------------------------------------------------------------
@pytest.mark.stack
@pytest.mark.after_stack
def test_every_call_a_function_makes_is_granted_to_it(workload):
    needs, foreign = required(STAGE, recordings())
    granted = policies(STAGE)
    assert set(needs) <= set(granted), f"functions no deployment has: {set(needs) - set(granted)}"
    refused = sorted(f"{function}: {action} on {where} ({why})"
                     for function, wanted in needs.items()
                     for action, where, why in wanted
                     if not any(g.allows(action, where) for g in granted[function]))
    assert not refused, "calls the stage's policies do not grant:\n" + "\n".join(refused)
    assert not foreign, "calls on resources no stage has:\n" + "\n".join(foreign)


@pytest.mark.stack
@pytest.mark.after_stack
def test_every_grant_is_used_by_some_call(workload):
    needs, _ = required(STAGE, recordings())
    granted = policies(STAGE)
    unused = set()
    for function, grants_of in granted.items():
        for grant in grants_of:
            users = [f for f, g in granted.items() if grant in g]
            if not any(grant.allows(action, where)
                       for user in users for action, where, _ in needs.get(user, ())):
                unused.add(grant)
    left = sorted(str(g) for g in unused
                  if (g.policy, g.action, _general(g.resource)) not in RARE)
    assert not left, "grants no call uses (drop them, or list the path that needs them in RARE):\n" \
        + "\n".join(left)
    every = {(g.policy, g.action, _general(g.resource)) for gs in granted.values() for g in gs}
    assert set(RARE) <= every, f"RARE names grants the policies no longer have: {set(RARE) - every}"


def _general(resource: str) -> str:
    """A resolved template ARN, with the region and account as the dev policy file has them."""
    return resource.replace(f":{REGION}:{ACCOUNT}:", ":*:*:")


def test_each_deployed_stage_has_its_own_policy_file_naming_its_own_resources():
    dev = (ROOT / ".chalice" / "policy-dev.json").read_text()
    for stage in ("dev", "prod"):
        for function in chalice_functions():
            assert policy_file(stage, function) == f"policy-{stage}.json"
        text = (ROOT / ".chalice" / f"policy-{stage}.json").read_text()
        # The same grants, each on the stage's own resources.
        assert text == dev.replace("proofline-dev", f"proofline-{stage}")
        assert "proofline-local" not in text
        for grant in grants(stage, json.loads(text)):
            assert f"proofline-{stage}" in grant.resource or (
                grant.resource == "*" and grant.action in RESOURCELESS), grant
            assert "*" not in grant.action, grant


def test_the_workers_are_granted_statements_on_their_own_stage_only():
    template = Template(STAGE)
    for function in ("MediaWorkerFunction", "SegmentWorkerFunction", "InferenceWorkerFunction"):
        for grant in template.grants(function):
            assert "proofline-dev" in grant.resource, grant
            assert "*" not in grant.action, grant


# -- the recorder itself ----------------------------------------------------------------------
QUARANTINE = {"Bucket": "in", "Key": "proofline-quarantine/u1", "UploadId": "x", "PartNumber": 1}


@pytest.mark.parametrize("call, needs", [
    (("dynamodb", "TransactWriteItems", {"TransactItems": [
        {"Put": {"TableName": "jobs"}}, {"Update": {"TableName": "jobs"}},
        {"ConditionCheck": {"TableName": "idem"}}]}),
     [("dynamodb:PutItem", "table/jobs"), ("dynamodb:UpdateItem", "table/jobs"),
      ("dynamodb:ConditionCheckItem", "table/idem")]),
    (("dynamodb", "Query", {"TableName": "jobs", "IndexName": "by_state"}),
     [("dynamodb:Query", "table/jobs/index/by_state")]),
    (("sqs", "DeleteMessageBatch", {"QueueUrl": "http://127.0.0.1:5000/123456789012/q"}),
     [("sqs:DeleteMessage", "q")]),
    (("sqs", "GetQueueUrl", {"QueueName": "q"}), [("sqs:GetQueueUrl", "q")]),
    (("s3", "HeadObject", {"Bucket": "art", "Key": "inputs/sha256/ab"}),
     [("s3:GetObject", "art/inputs/"), ("s3:ListBucket", "art")]),
    (("s3", "CopyObject", {"Bucket": "art", "Key": "inputs/sha256/ab", "Tagging": "used=false",
                           "CopySource": {"Bucket": "in", "Key": "proofline-quarantine/u1"}}),
     [("s3:GetObject", "in/proofline-quarantine/"), ("s3:ListBucket", "in"),
      ("s3:PutObject", "art/inputs/"), ("s3:PutObjectTagging", "art/inputs/")]),
    (("s3", "UploadPartCopy", {"Bucket": "art", "Key": "inputs/x", "UploadId": "u",
                               "PartNumber": 1, "CopySource": "in/clip.mp4"}),
     [("s3:GetObject", "in/clip.mp4"), ("s3:ListBucket", "in"), ("s3:PutObject", "art/inputs/")]),
    (("s3", "ListObjectsV2", {"Bucket": "art", "Prefix": "challenges/"}),
     [("s3:ListBucket", "art")]),
    (("s3", "UploadPart", QUARANTINE, True), [("s3:PutObject", "in/proofline-quarantine/")]),
    (("s3", "GetObject", {"Bucket": "art", "Key": "outputs/a"}, True),
     [("s3:GetObject", "art/outputs/")]),
])
def test_each_call_is_named_as_iam_authorizes_it(call, needs):
    assert calls.authorizations(*call) == needs


def test_presigned_urls_and_pooled_calls_are_recorded_as_the_acting_functions(tmp_path):
    s3 = aws_adapter.instrument(boto3.session.Session().client(
        "s3", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x",
        config=Config(signature_version="s3v4")))
    # Its own variable for who is acting: the session's recorder (the stack's, in this
    # process) does not take these calls for a function's.
    acting = contextvars.ContextVar("test_function", default=None)
    recorder = calls.Recorder(tmp_path, acting)
    aws_adapter.observers.append(recorder)
    try:
        with Stubber(s3) as stub:
            stub.add_response("head_object", {"ContentLength": 1}, {"Bucket": "art", "Key": "k/1"})
            token = acting.set("api_handler")
            s3.generate_presigned_url("put_object", Params={"Bucket": "in", "Key": "up/1"})
            with ThreadPoolExecutor(1) as pool:      # as s3transfer's managed copies
                calls._submit_in_context(pool, s3.head_object, Bucket="art", Key="k/1").result()
            acting.reset(token)
            s3.generate_presigned_url("get_object", Params={"Bucket": "art", "Key": "x/1"})
    finally:
        aws_adapter.observers.remove(recorder)
    assert calls.read(tmp_path) == [
        {"function": "api_handler", "action": "s3:PutObject", "resource": "in/up/"},
        {"function": "api_handler", "action": "s3:GetObject", "resource": "art/k/"},
        {"function": "api_handler", "action": "s3:ListBucket", "resource": "art"}]
