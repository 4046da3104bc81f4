"""A deploy rehearsal on moto: `template.yaml` (the shared resources and the workers) and
`chalice package --merge-template` (the control plane), each expanded by the SAM translator
and created by moto's CloudFormation, then read back through the services' own APIs: the
functions with their memory, timeouts and concurrency, the SQS event sources with partial
batch responses, the schedules, the IAM statements, the queue policy and bucket notification,
the API's routes, and every variable each function's code reads."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from chalice.app import ScheduledEventConfig

import app
from chalicelib.aws.resources import RESOURCES
from chalicelib.config import REQUIRED, SECRETS, ConfigError, stage_settings
from chalicelib.settlement.chain import SIGNERS
from proofline.awsendpoint import AwsEndpoint
from proofline.devstack import HOST, free_port
from tests.deploy.rehearsal import (
    APPLIED_BY_API,
    RESOURCELESS,
    Rehearsal,
    chalice_template,
    shared_template,
)

ROOT = Path(__file__).resolve().parents[2]
STAGE = "dev"
CHALICE_CONFIG = json.loads((ROOT / ".chalice" / "config.json").read_text())["stages"][STAGE]
# What a team passes `sam deploy --parameter-overrides` for a stage that settles on chain.
CHAIN = {"ChainRpcUrl": "https://rpc.example.invalid", "ChainId": "84532",
         "EscrowAddress": "0x" + "ab" * 20, "PoolAddress": "0x" + "cd" * 20,
         "ModalTokenId": "ak-rehearsal", "ModalTokenSecret": "as-rehearsal"}
# The secrets each side's code reads (by `<NAME>_SECRET`): the control plane signs with the
# three role keys and serves sessions; the workers audit and sign the pools' results.
CONTROL_PLANE_SECRETS = {*(name for name, _, _ in SIGNERS.values()), "PROOFLINE_SESSION_KEYS"}
WORKER_SECRETS = {"PROOFLINE_AUDIT_SECRET", "PROOFLINE_POOL_KEY"}
CHAIN_VARIABLES = {"CHAIN_RPC_URL", "CHAIN_ID", "ESCROW_ADDRESS", "PROOFLINE_POOL_ADDRESS"}

ACCOUNT = "210987654321"
pytestmark = pytest.mark.stack


@dataclass
class Account:
    """boto3 clients for one account on the rehearsal's endpoint."""
    url: str
    session: boto3.session.Session

    def __call__(self, service: str):
        return self.session.client(service, endpoint_url=self.url)


@pytest.fixture(scope="module")
def account(monkeypatch_module):
    """A moto server of its own (not the local stack's): a fresh account to deploy into."""
    endpoint = AwsEndpoint(ip_address=HOST, port=free_port(), verbose=False)
    endpoint.start()
    url = f"http://{HOST}:{endpoint._port}"
    # moto keeps one set of backends per process, shared with the session's local stack:
    # deploy into an account of its own, entered as a team does, by assuming a role there.
    sts = boto3.client("sts", endpoint_url=url, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    credentials = sts.assume_role(RoleArn=f"arn:aws:iam::{ACCOUNT}:role/deployer",
                                  RoleSessionName="rehearsal")["Credentials"]
    session = boto3.session.Session(aws_access_key_id=credentials["AccessKeyId"],
                                    aws_secret_access_key=credentials["SecretAccessKey"],
                                    aws_session_token=credentials["SessionToken"],
                                    region_name="us-east-1")
    assert session.client("sts", endpoint_url=url).get_caller_identity()["Account"] == ACCOUNT
    yield Account(url, session)
    endpoint.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        # moto stubs the ECR image a function names (no Docker here).
        patch.setenv("MOTO_LAMBDA_STUB_ECR", "TRUE")
        yield patch


@pytest.fixture(scope="module")
def deployed(account, control_plane_zip):
    rehearsal = Rehearsal(account)
    shared = rehearsal.deploy(f"proofline-{STAGE}", shared_template(STAGE, CHAIN))
    # `sam deploy` uploads the package to its bucket and points CodeUri at it.
    account("s3").create_bucket(Bucket=f"proofline-{STAGE}-deployments")
    account("s3").upload_file(str(control_plane_zip), f"proofline-{STAGE}-deployments",
                          "deployment.zip")
    api = rehearsal.deploy(f"proofline-{STAGE}-api", chalice_template(
        control_plane_zip.parent / "sam.json",
        f"s3://proofline-{STAGE}-deployments/deployment.zip", STAGE))
    print("\nrehearsal stacks:")
    for stack in (shared, api):
        for logical, physical in sorted(stack.physical.items()):
            kind = stack.template["Resources"][logical]["Type"]
            print(f"  {stack.name:20} {kind:34} {logical:36} {physical}")
        for applied in stack.applied_by_api:
            print(f"  {stack.name:20} applied by API: {applied}")
    return shared, api


def functions(account) -> dict[str, dict]:
    """Every function in the account, by name, as Lambda reports it."""
    pages = account("lambda").get_paginator("list_functions").paginate()
    return {f["FunctionName"]: f for page in pages for f in page["Functions"]}


def logical_of(stacks, physical_name: str) -> tuple:
    for stack in stacks:
        for logical, physical in stack.physical.items():
            if physical == physical_name or physical.endswith(f":{physical_name}"):
                return stack, logical
    raise AssertionError(f"{physical_name} is in no stack")


def entry_point(stack, logical: str) -> str:
    """`module.function` Lambda runs: the handler, or the image command (the Dockerfile's CMD
    where the template does not override it)."""
    props = stack.template["Resources"][logical]["Properties"]
    if "Handler" in props:
        return props["Handler"]
    command = props.get("ImageConfig", {}).get("Command")
    return command[0] if command else "media_worker.handler.handler"


def kinds(applied: list[str]) -> set[str]:
    return {a.split("(")[1].rstrip(")") if "(" in a else a for a in applied}


def test_what_moto_cannot_create_is_applied_through_the_apis(deployed):
    shared, api = deployed
    assert kinds(shared.applied_by_api) == {
        "AWS::SQS::QueuePolicy", "AWS::CloudWatch::Alarm", "AWS::CloudWatch::Dashboard",
        "IntakeBucket.NotificationConfiguration", "IdempotencyTable.TimeToLiveSpecification"}
    assert kinds(api.applied_by_api) == {"AWS::ApiGateway::Deployment", "AWS::ApiGateway::Stage"}
    assert set(APPLIED_BY_API) <= kinds(shared.applied_by_api) | kinds(api.applied_by_api)


def test_each_function_has_its_memory_timeout_and_concurrency(account, deployed):
    found = functions(account)
    sizing = CHALICE_CONFIG["lambda_functions"]
    handlers = {"app.app": "api_handler", **{f"app.{name}": name for name in sizing}}
    seen = set()
    for name, function in found.items():
        stack, logical = logical_of(deployed, name)
        props = stack.template["Resources"][logical]["Properties"]
        if stack.name.endswith("-api"):
            chalice_name = handlers[function["Handler"]]
            # Named as `chalice deploy` names it: what template.yaml's alarms watch.
            assert name == ("proofline-dev" if chalice_name == "api_handler"
                            else f"proofline-dev-{chalice_name}"), name
            wanted = sizing[chalice_name]
            assert function["MemorySize"] == wanted["lambda_memory_size"], chalice_name
            assert function["Timeout"] == wanted["lambda_timeout"], chalice_name
            seen.add(chalice_name)
            concurrency = account("lambda").get_function_concurrency(FunctionName=name)
            assert concurrency.get("ReservedConcurrentExecutions") == \
                wanted.get("reserved_concurrency"), chalice_name
        else:
            assert function["MemorySize"] == props["MemorySize"] >= 1024, logical
            assert function["Timeout"] == props["Timeout"], logical
            seen.add(logical)
    assert seen == {*sizing, "MediaWorkerFunction", "SegmentWorkerFunction",
                    "InferenceWorkerFunction"}


def test_every_queue_has_one_event_source_reporting_batch_item_failures(account, deployed):
    mappings = account("lambda").list_event_source_mappings()["EventSourceMappings"]
    for queue in RESOURCES.queues:
        name = f"proofline-{STAGE}-{queue.setting.removesuffix('_queue')}"
        mine = [m for m in mappings if m["EventSourceArn"].endswith(f":{name}")]
        assert len(mine) == 1, f"{name}: {len(mine)} event sources"
        (mapping,) = mine
        assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"], name
        assert mapping["BatchSize"] == queue.batch_size, name
        assert mapping.get("MaximumBatchingWindowInSeconds", 0) == queue.batch_window_s, name
        stack, logical = logical_of(deployed, mapping["FunctionArn"].rsplit(":", 1)[1])
        assert entry_point(stack, logical) == queue.consumer.replace(":", "."), name
        # The DLQ behind it, with the redrive the resource definition promises.
        url = account("sqs").get_queue_url(QueueName=name)["QueueUrl"]
        redrive = json.loads(account("sqs").get_queue_attributes(
            QueueUrl=url, AttributeNames=["RedrivePolicy"])["Attributes"]["RedrivePolicy"])
        assert int(redrive["maxReceiveCount"]) == queue.max_receive_count, name


def test_every_schedule_invokes_its_function(account, deployed):
    events = account("events")
    found = {}
    for rule in events.list_rules()["Rules"]:
        for target in events.list_targets_by_rule(Rule=rule["Name"])["Targets"]:
            stack, logical = logical_of(deployed, target["Arn"].rsplit(":", 1)[1])
            found[entry_point(stack, logical)] = rule["ScheduleExpression"]
    wanted = {f"app.{s.handler_string.rsplit('.', 1)[-1]}": s.schedule_expression.to_string()
              for s in app.app.event_sources if isinstance(s, ScheduledEventConfig)}
    assert found == {**wanted, "gpu_functions.handler.handler": "rate(1 minute)"}


def test_every_function_has_the_variables_its_code_reads(account, deployed):
    for name, function in functions(account).items():
        stack, logical = logical_of(deployed, name)
        env = function.get("Environment", {}).get("Variables", {})
        missing = [v for v in REQUIRED if not env.get(v)]
        assert not missing, f"{logical}: {missing} unset"
        assert CHAIN_VARIABLES <= set(env), f"{logical}: {CHAIN_VARIABLES - set(env)}"
        reads = CONTROL_PLANE_SECRETS if stack.name.endswith("-api") else WORKER_SECRETS
        named = {v.removesuffix("_SECRET") for v in env if v.removesuffix("_SECRET") in SECRETS}
        assert named == reads, f"{logical} names secrets {sorted(named)}"
        assert not set(SECRETS) & set(env), f"{logical} holds a key in plain text"
        # The function starts: its environment makes a valid, safe stage.
        try:
            settings = stage_settings(env)
        except ConfigError as error:
            raise AssertionError(f"{logical}: {error}") from None
        assert settings.stage == STAGE and not settings.allow_unsigned
    worker = next(f for f in functions(account).values() if "MediaWorker" in f["FunctionName"])
    assert worker["Environment"]["Variables"]["ESCROW_ADDRESS"] == CHAIN["EscrowAddress"]


def policy_document(held) -> dict:
    """A role policy as IAM returns it (moto returns a template's inline policy as the
    Python repr of the mapping it was given)."""
    if isinstance(held, dict):
        return held
    try:
        return json.loads(held)
    except ValueError:
        return ast.literal_eval(held)


def test_iam_statements_name_their_resources(account, deployed):
    iam = account("iam")
    for role in iam.list_roles()["Roles"]:
        for policy in iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"]:
            document = iam.get_role_policy(RoleName=role["RoleName"],
                                           PolicyName=policy)["PolicyDocument"]
            document = policy_document(document)
            for statement in document["Statement"]:
                resources = statement["Resource"]
                resources = [resources] if isinstance(resources, str) else resources
                actions = statement["Action"]
                actions = [actions] if isinstance(actions, str) else actions
                assert "*" not in actions, (role["RoleName"], statement)
                assert all(r != "*" for r in resources) or set(actions) <= set(RESOURCELESS), \
                    (role["RoleName"], statement)
    # The control plane's role holds exactly the stage's written-down policy.
    assert CHALICE_CONFIG.get("autogen_policy") is False
    written = json.loads((ROOT / ".chalice" / CHALICE_CONFIG["iam_policy_file"]).read_text())
    _, api = deployed
    roles = api.of_type("AWS::IAM::Role")
    assert len(roles) == len(CHALICE_CONFIG["lambda_functions"])    # one per function
    for logical in roles:
        role = api.physical[logical]
        (name,) = iam.list_role_policies(RoleName=role)["PolicyNames"]
        held = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        assert policy_document(held) == written, logical


def test_intake_bucket_notifies_the_intake_queue_which_lets_it(account, deployed):
    queue_url = account("sqs").get_queue_url(QueueName=f"proofline-{STAGE}-intake")["QueueUrl"]
    attributes = account("sqs").get_queue_attributes(QueueUrl=queue_url,
                                                 AttributeNames=["QueueArn", "Policy"])
    arn = attributes["Attributes"]["QueueArn"]
    notification = account("s3").get_bucket_notification_configuration(
        Bucket=f"proofline-{STAGE}-intake")
    (target,) = notification["QueueConfigurations"]
    assert target["QueueArn"] == arn and target["Events"] == ["s3:ObjectCreated:*"]
    (statement,) = json.loads(attributes["Attributes"]["Policy"])["Statement"]
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"}
    assert statement["Resource"] == arn
    assert statement["Condition"]["ArnLike"]["aws:SourceArn"] == \
        f"arn:aws:s3:::proofline-{STAGE}-intake"


def test_the_api_serves_every_route_behind_its_authorizer(account, deployed):
    gateway = account("apigateway")
    (rest_api,) = gateway.get_rest_apis()["items"]
    resources = gateway.get_resources(restApiId=rest_api["id"], limit=500)["items"]
    served = {(r["path"], method) for r in resources for method in r.get("resourceMethods", {})
              if method != "OPTIONS"}
    routes = {(path, method) for path, methods in app.app.routes.items() for method in methods}
    assert served == routes
    assert [a["name"] for a in gateway.get_authorizers(restApiId=rest_api["id"])["items"]] == \
        ["session_authorizer"]
    stages = [s["stageName"] for s in gateway.get_stages(restApiId=rest_api["id"])["item"]]
    assert "api" in stages


def test_the_doctor_finds_the_rehearsal_stage_wired(account, deployed, tmp_path):
    """`proofline doctor --stage dev` against the rehearsal, as a team runs it after deploying:
    every AWS check passes; what this rehearsal leaves out (a chain, an API that answers, the
    workers' secrets) is named, never taken for healthy."""
    url = account.url
    secrets = account("secretsmanager")
    for name, value in {"router-key": "0x" + "11" * 32, "verifier-key": "0x" + "12" * 32,
                        "refunder-key": "0x" + "13" * 32,
                        "session-keys": "k1:" + "14" * 32}.items():
        secrets.create_secret(Name=f"proofline-{STAGE}-{name}", SecretString=value)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROOFLINE_", "CHAIN_"))
           and k not in ("ESCROW_ADDRESS", "PAYMENT_TOKENS")}
    credentials = account.session.get_credentials()        # the account deployed into
    env.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID=credentials.access_key,
               AWS_SECRET_ACCESS_KEY=credentials.secret_key, AWS_SESSION_TOKEN=credentials.token,
               AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1")
    done = subprocess.run([sys.executable, "-m", "proofline.cli", "doctor", "--stage", STAGE,
                           "--json"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    found = json.loads(done.stdout)
    print("\ndoctor --stage dev against the rehearsal:")
    for check in found["checks"]:
        mark = {True: "ok", False: "FAILED", None: "-"}[check["ok"]]
        print(f"  {mark:6} {check['name']:40} {check['detail'][:110]}")
    checks = {c["name"]: c for c in found["checks"]}
    wired = [n for n in checks if n.split()[0] in ("table", "queue", "bucket", "trigger")]
    # every table, queue and bucket, and each queue's trigger
    assert len(wired) == len(RESOURCES.tables) + 2 * len(RESOURCES.queues) + len(
        RESOURCES.buckets), wired
    assert all(checks[n]["ok"] for n in wired), [checks[n] for n in wired if not checks[n]["ok"]]
    assert checks["secret PROOFLINE_SESSION_KEYS"]["ok"]
    # This rehearsal has no chain (the stage's CHAIN_RPC_URL is blank: the chain keys are not
    # read) and no API that answers: the doctor says so and exits 1, never reporting a
    # healthy stage.
    assert checks["chain"]["ok"] is None and "CHAIN_RPC_URL" in checks["chain"]["detail"]
    assert checks["api"]["ok"] is False and "does not answer" in checks["api"]["detail"]
    assert done.returncode == 1 and found["ok"] is False
