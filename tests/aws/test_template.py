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
import yaml
from botocore.stub import Stubber

ROOT = Path(__file__).resolve().parents[2]

from chalicelib.aws.deploy import enable_partial_batch_responses
from chalicelib.aws.resources import RESOURCES, Bucket, Queue, Table
from chalicelib.config import CHALICE_CONFIG, REQUIRED, SECRETS, stage_environment
from chalicelib.jobs import uploads

TEMPLATE = ROOT / "template.yaml"


# ------------------------------------------------------------------ loading the template
class CfnLoader(yaml.SafeLoader):
    """SafeLoader that reads CloudFormation short-form tags as their long form."""


def _cfn_tag(loader: CfnLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix in ("Ref", "Condition"):
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


@pytest.fixture(scope="module")
def template() -> dict:
    return yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)


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
    names = {k: str(v) for k, v in variables.items() if k.endswith("_SECRET")}
    assert names == {"PROOFLINE_AUDIT_SECRET_SECRET": str({"Fn::Sub": "proofline-${Stage}-audit-secret"}),
                     "PROOFLINE_POOL_KEY_SECRET": str({"Fn::Sub": "proofline-${Stage}-pool-key"})}
    parameters = {"ChainRpcUrl", "ChainId", "EscrowAddress", "PoolAddress"}
    for stage in ("local", "dev", "prod"):
        env = stage_environment(stage)
        resolved = {k: _resolve(v, template, stage) for k, v in variables.items()
                    if not k.endswith("_SECRET") and v not in [{"Ref": p} for p in parameters]}
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
