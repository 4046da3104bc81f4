"""template.yaml against cfn-lint and against chalicelib.resources; the post-deploy fix-up.

`chalicelib/resources.py` is the one definition of tables, queues and buckets; the SAM
template must declare the same shapes and, for Stage=local, the same names as the `local`
stage of `.chalice/config.json`.
"""
from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from samtranslator.yaml_helper import yaml_parse

ROOT = Path(__file__).resolve().parents[2]

from chalicelib.aws.deploy import enable_partial_batch_responses
from chalicelib.aws.resources import RESOURCES, Bucket, Queue, Table
from chalicelib.config import CHALICE_CONFIG, REQUIRED, SECRETS, stage_environment
from chalicelib.jobs import uploads

TEMPLATE = ROOT / "template.yaml"


# ------------------------------------------------------------------ loading the template


@pytest.fixture(scope="module")
def template() -> dict:
    return yaml_parse(TEMPLATE.read_text())   # short-form tags as their long form


def _resource(template: dict, logical_id: str, type_: str) -> dict:
    resources = template["Resources"]
    assert logical_id in resources, f"template.yaml lacks {logical_id}"
    assert resources[logical_id]["Type"] == type_
    return resources[logical_id]


def _resolve(value: Any, template: dict, stage: str) -> str:
    """Resolve the name-valued intrinsics the template uses, for one Stage value."""
    if isinstance(value, str):
        return value
    if "Fn::Sub" in value:
        pattern = value["Fn::Sub"]
        assert isinstance(pattern, str), "only the one-argument !Sub form is resolved"
        return re.sub(r"\$\{([A-Za-z0-9:]+)\}",
                      lambda m: _resolve({"Ref": m.group(1)}, template, stage), pattern)
    if "Ref" in value:
        name = value["Ref"]
        if name == "Stage":
            return stage
        resource = template["Resources"][name]
        props = resource["Properties"]
        kind = resource["Type"]
        if kind == "AWS::DynamoDB::Table":
            return _resolve(props["TableName"], template, stage)
        if kind == "AWS::S3::Bucket":
            return _resolve(props["BucketName"], template, stage)
        raise AssertionError(f"Ref {name} ({kind}) is not a name")
    if "Fn::GetAtt" in value:
        name, attribute = value["Fn::GetAtt"]
        resource = template["Resources"][name]
        if resource["Type"] == "AWS::SQS::Queue" and attribute == "QueueName":
            return _resolve(resource["Properties"]["QueueName"], template, stage)
        raise AssertionError(f"GetAtt {name}.{attribute} is not a name")
    raise AssertionError(f"cannot resolve {value!r}")


def _key_schema(schema: list[dict]) -> dict[str, str]:
    return {k["KeyType"]: k["AttributeName"] for k in schema}


def _expected_keys(hash_key: str, range_key: str | None) -> dict[str, str]:
    return {"HASH": hash_key, **({"RANGE": range_key} if range_key else {})}


QUEUES_BY_SETTING = {q.setting: q for q in RESOURCES.queues}


# ------------------------------------------------------------------ (a) cfn-lint
def test_cfn_lint_passes() -> None:
    # cfnlint has no __main__; run its console-script entry point with this interpreter.
    entry = "import sys; from cfnlint.runner import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", entry, str(TEMPLATE)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, (
        f"cfn-lint exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")


# ------------------------------------------------------------------ (b) template == RESOURCES
@pytest.mark.parametrize("table", RESOURCES.tables, ids=lambda t: t.logical_id)
def test_table_matches_resources(template: dict, table: Table) -> None:
    props = _resource(template, table.logical_id, "AWS::DynamoDB::Table")["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert _key_schema(props["KeySchema"]) == _expected_keys(table.hash_key, table.range_key)

    gsis = {g["IndexName"]: g for g in props.get("GlobalSecondaryIndexes", [])}
    assert set(gsis) == {i.name for i in table.indexes}
    for index in table.indexes:
        assert _key_schema(gsis[index.name]["KeySchema"]) == _expected_keys(
            index.hash_key, index.range_key)
        assert gsis[index.name]["Projection"] == {"ProjectionType": "ALL"}

    key_attributes = {table.hash_key, table.range_key} - {None}
    for index in table.indexes:
        key_attributes |= {index.hash_key, index.range_key}
    definitions = {d["AttributeName"]: d["AttributeType"] for d in props["AttributeDefinitions"]}
    assert definitions == {name: "S" for name in key_attributes}

    ttl = props.get("TimeToLiveSpecification")
    if table.ttl_attribute is None:
        assert ttl is None
    else:
        assert ttl == {"AttributeName": table.ttl_attribute, "Enabled": True}


def test_jobs_table_has_point_in_time_recovery(template: dict) -> None:
    props = _resource(template, "JobsTable", "AWS::DynamoDB::Table")["Properties"]
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True


@pytest.mark.parametrize("queue", RESOURCES.queues, ids=lambda q: q.logical_id)
def test_queue_matches_resources(template: dict, queue: Queue) -> None:
    props = _resource(template, queue.logical_id, "AWS::SQS::Queue")["Properties"]
    assert props["VisibilityTimeout"] == queue.visibility_timeout
    assert props["SqsManagedSseEnabled"] is True
    redrive = props["RedrivePolicy"]
    assert redrive["maxReceiveCount"] == queue.max_receive_count

    dlq_id, attribute = redrive["deadLetterTargetArn"]["Fn::GetAtt"]
    assert attribute == "Arn"
    dlq = _resource(template, dlq_id, "AWS::SQS::Queue")["Properties"]
    assert dlq_id != queue.logical_id
    assert dlq["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert "RedrivePolicy" not in dlq
    for stage in ("local", "dev", "prod"):
        assert _resolve(dlq["QueueName"], template, stage) == (
            _resolve(props["QueueName"], template, stage) + "-dlq")


@pytest.mark.parametrize("bucket", RESOURCES.buckets, ids=lambda b: b.logical_id)
def test_bucket_matches_resources(template: dict, bucket: Bucket) -> None:
    props = _resource(template, bucket.logical_id, "AWS::S3::Bucket")["Properties"]
    assert all(props["PublicAccessBlockConfiguration"][k] is True for k in (
        "BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"))
    rules = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rules and rules[0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"]

    if bucket.cors:
        cors = props["CorsConfiguration"]["CorsRules"]
        assert any("PUT" in rule["AllowedMethods"] for rule in cors)
    else:
        assert "CorsConfiguration" not in props

    notification = props.get("NotificationConfiguration")
    if bucket.notify_queue is None:
        assert notification is None
        return
    queue = QUEUES_BY_SETTING[bucket.notify_queue]
    targets = notification["QueueConfigurations"]
    assert {"Event": "s3:ObjectCreated:*",
            "Queue": {"Fn::GetAtt": [queue.logical_id, "Arn"]}} in targets

    # S3 may send to that queue, only from this bucket, and the policy exists first.
    policies = [r for r in template["Resources"].values()
                if r["Type"] == "AWS::SQS::QueuePolicy"
                and {"Ref": queue.logical_id} in r["Properties"]["Queues"]]
    assert len(policies) == 1
    [policy] = policies
    statement = policy["Properties"]["PolicyDocument"]["Statement"]
    [s3_statement] = [s for s in statement
                      if s.get("Principal") == {"Service": "s3.amazonaws.com"}]
    assert s3_statement["Effect"] == "Allow"
    assert s3_statement["Action"] == "sqs:SendMessage"
    source_arn = s3_statement["Condition"]["ArnLike"]["aws:SourceArn"]["Fn::Sub"]
    assert source_arn == ("arn:${AWS::Partition}:s3:::" + props["BucketName"]["Fn::Sub"])
    policy_id = next(k for k, v in template["Resources"].items() if v is policy)
    depends = template["Resources"][bucket.logical_id].get("DependsOn")
    assert policy_id in ([depends] if isinstance(depends, str) else depends or [])


def test_artifacts_bucket_expires_attempts(template: dict) -> None:
    props = _resource(template, "ArtifactsBucket", "AWS::S3::Bucket")["Properties"]
    rules = props["LifecycleConfiguration"]["Rules"]
    assert any(r["Status"] == "Enabled" and r.get("Prefix") == "attempts/"
               and r.get("ExpirationInDays") == 30 for r in rules)


def test_stage_parameter_covers_chalice_stages(template: dict) -> None:
    stage = template["Parameters"]["Stage"]
    config = json.loads(CHALICE_CONFIG.read_text())
    assert set(stage["AllowedValues"]) == set(config["stages"]) == {"dev", "prod", "local"}
    assert stage["Default"] == "dev"


@pytest.mark.parametrize("stage", ["local", "dev", "prod"])
def test_names_match_chalice_config(template: dict, stage: str) -> None:
    env = stage_environment(stage)
    name_property = {Table: "TableName", Queue: "QueueName", Bucket: "BucketName"}
    resources = [*RESOURCES.tables, *RESOURCES.queues, *RESOURCES.buckets]
    for resource in resources:
        props = template["Resources"][resource.logical_id]["Properties"]
        name = props[name_property[type(resource)]]
        assert name["Fn::Sub"].startswith("proofline-${Stage}-")
        assert _resolve(name, template, stage) == env[resource.setting.upper()], resource


# ------------------------------------------------------------------ the media worker
def test_media_worker_function(template: dict) -> None:
    fn = _resource(template, "MediaWorkerFunction", "AWS::Serverless::Function")
    props = fn["Properties"]
    assert props["PackageType"] == "Image"
    assert fn["Metadata"]["DockerContext"] == "."
    assert (ROOT / fn["Metadata"]["Dockerfile"]).is_file()
    assert props["EphemeralStorage"]["Size"] == 10240


def test_every_container_queue_has_an_image_function_with_its_consumer(template: dict) -> None:
    consumers = [q for q in RESOURCES.queues if q.consumer.startswith("media_worker.")]
    assert {q.logical_id for q in consumers} >= {"MediaQueue", "SegmentsQueue"}
    functions = [r for r in template["Resources"].values()
                 if r["Type"] == "AWS::Serverless::Function"
                 and r["Properties"].get("PackageType") == "Image"]
    for queue in consumers:
        [(fn, event)] = [(f, e["Properties"]) for f in functions
                         for e in f["Properties"].get("Events", {}).values()
                         if e["Type"] == "SQS"
                         and e["Properties"]["Queue"] == {"Fn::GetAtt": [queue.logical_id, "Arn"]}]
        props = fn["Properties"]
        assert event["BatchSize"] == queue.batch_size
        assert "ReportBatchItemFailures" in event["FunctionResponseTypes"]
        # Lambda must finish before the message becomes visible again.
        declared = template["Resources"][queue.logical_id]["Properties"]["VisibilityTimeout"]
        assert props["Timeout"] < min(queue.visibility_timeout, declared)
        # The entry point is the consumer RESOURCES names: the image's CMD unless overridden.
        dockerfile = ROOT / fn["Metadata"]["Dockerfile"]
        cmd = re.search(r"^CMD\s+(\[.*\])\s*$", dockerfile.read_text(), re.M)
        command = props.get("ImageConfig", {}).get("Command") or json.loads(cmd.group(1))
        assert command == [queue.consumer.replace(":", ".")]


WORKERS = ("MediaWorkerFunction", "SegmentWorkerFunction", "InferenceWorkerFunction")


@pytest.mark.parametrize("function", WORKERS)
def test_worker_environment_matches_the_stage(template: dict, function: str) -> None:
    variables = {**template["Globals"]["Function"]["Environment"]["Variables"],
                 **template["Resources"][function]["Properties"].get(
                     "Environment", {}).get("Variables", {})}
    # Everything Settings requires, the chain escrow jobs settle on, and where pools are paid.
    assert set(REQUIRED) <= set(variables)
    assert {"CHAIN_RPC_URL", "CHAIN_ID", "ESCROW_ADDRESS", "PROOFLINE_POOL_ADDRESS"} <= set(variables)
    # Secrets are read from Secrets Manager by name at run time, never set as plain values
    # (a deployed stage refuses them); the workers get the audit secret and the pool key,
    # and never the control plane's chain keys or session keys.
    assert not set(SECRETS) & set(variables)
    names = {k: str(v) for k, v in variables.items() if k.removesuffix("_SECRET") in SECRETS}
    assert names == {"PROOFLINE_AUDIT_SECRET_SECRET": str({"Fn::Sub": "proofline-${Stage}-audit-secret"}),
                     "PROOFLINE_POOL_KEY_SECRET": str({"Fn::Sub": "proofline-${Stage}-pool-key"})}
    parameters = {"ChainRpcUrl", "ChainId", "EscrowAddress", "PoolAddress", "ModalTokenId",
                  "ModalTokenSecret"}
    for stage in ("local", "dev", "prod"):
        env = stage_environment(stage)
        resolved = {k: _resolve(v, template, stage) for k, v in variables.items()
                    if k not in names and v not in [{"Ref": p} for p in parameters]}
        assert resolved == {k: env[k] for k in resolved}, stage


# ------------------------------------------------------------------ (c) the post-deploy fix-up
def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handler.py", "def handler(event, context):\n    return {}\n")
    return buffer.getvalue()


@pytest.mark.stack
def test_enable_partial_batch_responses_against_moto(stack) -> None:
    # The stack's moto server, not mock_aws: mock_aws resets moto's in-process backends on
    # exit, which would wipe the session stack's tables and queues under later tests.
    region = stack.info.region
    make = lambda name: boto3.client(name, region_name=region,  # noqa: E731
                                     endpoint_url=stack.info.aws_endpoint)
    iam, lam, sqs, kinesis = make("iam"), make("lambda"), make("sqs"), make("kinesis")
    tag = uuid.uuid4().hex[:8]

    role = iam.create_role(RoleName=f"proofline-test-{tag}", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole"}]}))["Role"]["Arn"]
    fn, other_fn = f"proofline-test-{tag}-on_intake", f"proofline-test-{tag}-other"
    for name in (fn, other_fn):
        lam.create_function(FunctionName=name, Runtime="python3.11", Role=role,
                            Handler="handler.handler", Code={"ZipFile": _zip()})

    def queue_arn(name: str) -> str:
        url = sqs.create_queue(QueueName=name)["QueueUrl"]
        return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]

    intake, verify, other = (queue_arn(f"{tag}-{n}") for n in ("intake", "verify", "other"))
    kinesis.create_stream(StreamName=f"stream-{tag}", ShardCount=1)
    stream = kinesis.describe_stream_summary(StreamName=f"stream-{tag}")[
        "StreamDescriptionSummary"]["StreamARN"]

    bare = lam.create_event_source_mapping(FunctionName=fn, EventSourceArn=intake,
                                           BatchSize=10)["UUID"]
    ready = lam.create_event_source_mapping(
        FunctionName=fn, EventSourceArn=verify,
        FunctionResponseTypes=["ReportBatchItemFailures"])["UUID"]
    not_sqs = lam.create_event_source_mapping(FunctionName=fn, EventSourceArn=stream,
                                              StartingPosition="LATEST")["UUID"]
    untouched = lam.create_event_source_mapping(FunctionName=other_fn,
                                                EventSourceArn=other)["UUID"]
    assert not lam.get_event_source_mapping(UUID=bare).get("FunctionResponseTypes")

    first = enable_partial_batch_responses(lam, [fn])
    assert sorted(first, key=lambda r: r["queue_arn"]) == [
        {"function": fn, "uuid": bare, "queue_arn": intake, "changed": True},
        {"function": fn, "uuid": ready, "queue_arn": verify, "changed": False},
    ]
    assert lam.get_event_source_mapping(UUID=bare)["FunctionResponseTypes"] == [
        "ReportBatchItemFailures"]
    # Only SQS mappings of the named functions are touched.
    assert not lam.get_event_source_mapping(UUID=not_sqs).get("FunctionResponseTypes")
    assert not lam.get_event_source_mapping(UUID=untouched).get("FunctionResponseTypes")

    second = enable_partial_batch_responses(lam, [fn])
    assert {r["uuid"] for r in second} == {bare, ready}
    assert all(r["changed"] is False for r in second)


def test_enable_partial_batch_responses_follows_pages() -> None:
    # moto returns every mapping in one page (no NextMarker), so pagination is checked
    # against botocore's Stubber instead.
    lam = boto3.client("lambda", region_name="us-east-1", aws_access_key_id="x",
                       aws_secret_access_key="x")
    arn = "arn:aws:sqs:us-east-1:123456789012:q{}"
    u1, u2 = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"
    report = {"FunctionResponseTypes": ["ReportBatchItemFailures"]}
    with Stubber(lam) as stub:
        stub.add_response("list_event_source_mappings",
                          {"EventSourceMappings": [{"UUID": u1, "EventSourceArn": arn.format(1),
                                                    "FunctionResponseTypes": []}],
                           "NextMarker": "page2"},
                          {"FunctionName": "fn"})
        stub.add_response("update_event_source_mapping", {"UUID": u1}, {"UUID": u1, **report})
        stub.add_response("list_event_source_mappings",
                          {"EventSourceMappings": [{"UUID": u2, "EventSourceArn": arn.format(2)}]},
                          {"FunctionName": "fn", "Marker": "page2"})
        stub.add_response("update_event_source_mapping", {"UUID": u2}, {"UUID": u2, **report})
        result = enable_partial_batch_responses(lam, ["fn"])
        stub.assert_no_pending_responses()
    assert [(r["uuid"], r["changed"]) for r in result] == [(u1, True), (u2, True)]


def test_quarantined_uploads_and_unused_inputs_expire(template: dict) -> None:
    intake = _resource(template, "IntakeBucket", "AWS::S3::Bucket")["Properties"]
    assert any(r["Status"] == "Enabled" and r.get("Prefix") == uploads.QUARANTINE
               and r.get("ExpirationInDays") == 1
               for r in intake["LifecycleConfiguration"]["Rules"])
    artifacts = _resource(template, "ArtifactsBucket", "AWS::S3::Bucket")["Properties"]
    assert any(r["Status"] == "Enabled" and r.get("Prefix") == "inputs/"
               and r.get("TagFilters") == [{"Key": k, "Value": v}
                                           for k, v in uploads.UNUSED.items()]
               for r in artifacts["LifecycleConfiguration"]["Rules"])


# ------------------------------------------------------------------ (d) alarms and dashboard
ALARM = "AWS::CloudWatch::Alarm"


def _alarms(template: dict, namespace: str, metric: str) -> list[dict]:
    return [r["Properties"] for r in template["Resources"].values()
            if r["Type"] == ALARM and r["Properties"]["Namespace"] == namespace
            and r["Properties"]["MetricName"] == metric]


def _watching(template: dict, namespace: str, metric: str, dimension: str, value) -> dict:
    """The one alarm on `metric` whose `dimension` is `value` (as the template writes it)."""
    found = [a for a in _alarms(template, namespace, metric)
             if {"Name": dimension, "Value": value} in a["Dimensions"]]
    assert len(found) == 1, f"{len(found)} alarms on {namespace} {metric} {dimension}={value}"
    return found[0]


def _queues(template: dict) -> tuple[list[str], list[str]]:
    """(work queues, dead-letter queues), from the template's own queues: a work queue has a
    redrive policy, a dead-letter queue is some queue's target. Every queue is one of them."""
    queues = {k: r for k, r in template["Resources"].items() if r["Type"] == "AWS::SQS::Queue"}
    work = sorted(k for k, r in queues.items() if "RedrivePolicy" in r["Properties"])
    dead = sorted({queues[k]["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
                   for k in work})
    assert set(work) | set(dead) == set(queues) and not set(work) & set(dead)
    return work, dead


def _fires_on_any(alarm: dict) -> None:
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold" and alarm["Threshold"] == 0


def test_every_dead_letter_queue_alarms_on_its_first_message(template: dict) -> None:
    _, dead = _queues(template)
    assert len(dead) == len(RESOURCES.queues)
    for queue in dead:
        alarm = _watching(template, "AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName",
                          {"Fn::GetAtt": [queue, "QueueName"]})
        _fires_on_any(alarm)
        assert alarm["Statistic"] == "Maximum"


def test_every_work_queue_alarms_on_its_oldest_message(template: dict) -> None:
    work, _ = _queues(template)
    assert {q.logical_id for q in RESOURCES.queues} == set(work)
    thresholds = {}
    for queue in work:
        alarm = _watching(template, "AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName",
                          {"Fn::GetAtt": [queue, "QueueName"]})
        assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
        # A message being retried is legitimately as old as one visibility timeout: the
        # alarm is for a queue falling behind, not for a retry.
        visibility = template["Resources"][queue]["Properties"]["VisibilityTimeout"]
        assert alarm["Threshold"] >= visibility, queue
        thresholds[queue] = alarm["Threshold"]
    # Each threshold fits the queue's purpose: intake is the fastest, settlement the slowest.
    assert min(thresholds, key=thresholds.get) == "IntakeQueue"
    assert max(thresholds, key=thresholds.get) == "SettlementQueue"


def _chalice_function_names(stage: str) -> set[str]:
    """The functions `chalice deploy` makes of app.py for `stage`, named by Chalice itself."""
    from chalice.config import Config
    from chalice.deploy import models
    from chalice.deploy.appgraph import ApplicationGraphBuilder, DependencyBuilder

    import app
    config = Config.create(chalice_stage=stage, app_name="proofline", project_dir=str(ROOT),
                           chalice_app=app.app,
                           config_from_disk=json.loads(CHALICE_CONFIG.read_text()))
    graph = ApplicationGraphBuilder().build(config, stage)
    return {r.function_name for r in DependencyBuilder().build_dependencies(graph)
            if isinstance(r, models.LambdaFunction)}


def test_every_function_alarms_on_handler_errors(template: dict) -> None:
    watched = [a["Dimensions"] for a in _alarms(template, "AWS/Lambda", "Errors")]
    assert all(len(d) == 1 and d[0]["Name"] == "FunctionName" for d in watched)
    values = [d[0]["Value"] for d in watched]
    # The workers by reference.
    workers = [k for k, r in template["Resources"].items()
               if r["Type"] in ("AWS::Serverless::Function", "AWS::Lambda::Function")]
    assert len(workers) == 3
    for worker in workers:
        assert values.count({"Ref": worker}) == 1, worker
    # The control plane's by the names Chalice gives them, for every stage.
    by_name = [v for v in values if "Fn::Sub" in v]
    assert len(by_name) + len(workers) == len(values)
    for stage in ("dev", "prod"):
        names = sorted(_resolve(v, template, stage) for v in by_name)
        assert names == sorted(_chalice_function_names(stage)), stage
    for alarm in _alarms(template, "AWS/Lambda", "Errors"):
        _fires_on_any(alarm)
        assert alarm["Statistic"] == "Sum"


def test_custom_metric_alarms_watch_what_the_stage_emits(template: dict) -> None:
    from chalicelib import telemetry
    stage_only = [{"Name": "service", "Value": telemetry.SERVICE},
                  {"Name": "stage", "Value": {"Ref": "Stage"}}]
    for metric in ("ChainFollowerLagBlocks", "SettlementDrift"):
        [alarm] = _alarms(template, telemetry.NAMESPACE, metric)
        assert sorted(alarm["Dimensions"], key=lambda d: d["Name"]) == stage_only
        assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
        assert alarm["TreatMissingData"] == "notBreaching"   # stages without a chain
    # Every custom metric an alarm names is emitted, with the dimensions the alarm names (a
    # metric's own dimensions, or the roll-up to service and stage every metric also has).
    for resource in template["Resources"].values():
        props = resource["Properties"]
        if resource["Type"] == ALARM and props["Namespace"] == telemetry.NAMESPACE:
            assert props["MetricName"] in telemetry.NAMES
            named = {d["Name"] for d in props["Dimensions"]}
            assert named in ({"service", "stage"},
                             {"service", "stage", *telemetry.NAMES[props["MetricName"]]})


def test_every_alarm_notifies_the_alarm_topic(template: dict) -> None:
    _resource(template, "AlarmTopic", "AWS::SNS::Topic")
    alarms = [r["Properties"] for r in template["Resources"].values() if r["Type"] == ALARM]
    assert len(alarms) >= 2 * len(RESOURCES.queues) + 3 + 2
    for alarm in alarms:
        assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]
        assert alarm["AlarmName"]["Fn::Sub"].startswith("proofline-${Stage}-")
    names = [a["AlarmName"]["Fn::Sub"] for a in alarms]
    assert len(set(names)) == len(names)
    subscription = _resource(template, "AlarmEmailSubscription", "AWS::SNS::Subscription")
    assert subscription["Condition"] == "HasAlarmEmail"


def _dashboard(template: dict, stage: str) -> dict:
    body = _resource(template, "Dashboard", "AWS::CloudWatch::Dashboard")[
        "Properties"]["DashboardBody"]["Fn::Sub"]

    def value(match: re.Match) -> str:
        name = match.group(1)
        if name == "AWS::Region":
            return "us-east-1"
        if "." in name:
            logical, attribute = name.split(".", 1)
            return _resolve({"Fn::GetAtt": [logical, attribute]}, template, stage)
        if template["Resources"].get(name, {}).get("Type") == "AWS::Serverless::Function":
            return f"<{name}>"
        return _resolve({"Ref": name}, template, stage)
    return json.loads(re.sub(r"\$\{([A-Za-z0-9:.]+)\}", value, body))


def test_the_dashboard_shows_the_key_figures(template: dict) -> None:
    from chalicelib import telemetry
    widgets = _dashboard(template, "dev")["widgets"]
    shown = json.dumps(widgets)
    rows = [m for w in widgets for m in w["properties"]["metrics"]]
    custom = {m[1] for m in rows if m[0] == telemetry.NAMESPACE}
    searched = set(re.findall(r'MetricName=\\"(\w+)\\"', shown))
    assert custom | searched <= set(telemetry.NAMES)
    assert {"JobCreated", "JobSettled", "JobFailed", "JobRejected", "ValidationFailed", "Retry",
            "SettlementReleased", "SettlementRefunded", "SettlementReclaimed", "GasUsed",
            "ChainFollowerLagBlocks", "SettlementDrift"} <= custom | searched
    work, dead = _queues(template)
    for queue in work + dead:
        assert f'"{_resolve({"Fn::GetAtt": [queue, "QueueName"]}, template, "dev")}"' in shown
    for name in _chalice_function_names("dev"):
        assert f'"{name}"' in shown
