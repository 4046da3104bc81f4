"""`proofline doctor` and `GET /health?deep=1` against the real local stack: the healthy
stack passes every check; things broken on purpose are named and exit 1. What is broken is
never the session's stack: disposable resources on its AWS endpoint, a stack.json that names
another key or address, a key without a role (the chain is only read)."""
from __future__ import annotations

import io
import json
import uuid
import zipfile
from dataclasses import asdict, replace

import boto3
import pytest
import requests
from conftest import run_cli
from eth_account import Account

from chalicelib import config
from chalicelib.aws.resources import RESOURCES
from chalicelib.health import checks
from proofline.client import ApiError
from proofline.provision import provision

pytestmark = pytest.mark.stack


def doctor(cwd, info, *args):
    """The doctor as a user runs it, in a directory whose `.proofline/stack.json` is `info`."""
    (cwd / ".proofline").mkdir(exist_ok=True)
    (cwd / ".proofline" / "stack.json").write_text(json.dumps(asdict(info)))
    result = run_cli(cwd, "doctor", "--json", *args, check=False)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, {c["name"]: c for c in json.loads(result.stdout)["checks"]}


def failed(found: dict) -> dict[str, str]:
    return {name: c["detail"] for name, c in found.items() if c["ok"] is False}


def test_the_doctor_passes_a_healthy_local_stack(stack, tmp_path):
    code, found = doctor(tmp_path, stack.info)
    assert failed(found) == {} and code == 0
    names = set(found)
    for expected in ("config", "aws", "table proofline-local-jobs",
                     "table proofline-local-idempotency", "queue proofline-local-settlement",
                     "bucket proofline-local-intake", "trigger proofline-local-intake",
                     "secret PROOFLINE_SESSION_KEYS", "chain rpc", "escrow code",
                     "role ROUTER_ROLE", "role VERIFIER_ROLE", "role OPERATOR_ROLE",
                     "pool payee", "payment tokens", "modal", "api",
                     # the server's half, from the API's own point of view
                     "api: table proofline-local-jobs", "api: role VERIFIER_ROLE",
                     "api: escrow code"):
        assert expected in names
    assert "event pump" in found["trigger proofline-local-intake"]["detail"]
    assert "immutables" in found["escrow code"]["detail"]
    text = run_cli(tmp_path, "doctor").stdout
    assert "all" in text and "checks passed" in text


def test_no_local_stack_is_one_failure_with_what_to_do(tmp_path):
    result = run_cli(tmp_path, "doctor", "--json", check=False)
    assert result.returncode == 3                     # unavailable: nothing here to check
    (check,) = json.loads(result.stdout)["checks"]
    assert check["ok"] is False and "proofline dev up" in check["detail"]


def test_a_key_without_its_role_is_named_and_exits_1(stack, tmp_path):
    stranger = Account.create()
    keys = {**stack.info.dev_keys, "verifier": stranger.key.to_0x_hex()}
    code, found = doctor(tmp_path, replace(stack.info, dev_keys=keys))
    assert code == 1
    assert set(failed(found)) == {"role VERIFIER_ROLE"}
    assert (f"{stranger.address} does not hold VERIFIER_ROLE" in
            found["role VERIFIER_ROLE"]["detail"])
    assert "grantRole(VERIFIER_ROLE" in found["role VERIFIER_ROLE"]["detail"]


def test_an_escrow_address_without_the_escrows_code_is_named_and_exits_1(stack, tmp_path):
    nobody = Account.create().address
    code, found = doctor(tmp_path, replace(stack.info, escrow_address=nobody))
    assert code == 1
    assert f"there is no contract at {nobody}" in found["escrow code"]["detail"]
    # the API settles on the stack's escrow, not this one; roles cannot be asked of nothing
    assert "the stage's ESCROW_ADDRESS is" in found["api"]["detail"]
    assert {"escrow code", "api", "role ROUTER_ROLE", "payment tokens"} <= set(failed(found))

    code, found = doctor(tmp_path, replace(stack.info, escrow_address=stack.info.token_address))
    assert code == 1 and "is not ProoflineEscrow's" in found["escrow code"]["detail"]


@pytest.fixture
def disposable(stack):
    """Every table, queue and bucket of the definition under names of their own, on the
    stack's AWS endpoint: a stage to break."""
    prefix = f"doctor-{uuid.uuid4().hex[:8]}"
    names = {r.setting: f"{prefix}-{r.setting.split('_')[0]}"
             for r in (*RESOURCES.tables, *RESOURCES.queues, *RESOURCES.buckets)}
    settings = config.settings().model_copy(update=names)
    session = boto3.session.Session()
    provision(session, settings)
    return settings, checks.clients(settings, session)


def test_a_queue_without_its_redrive_policy_and_a_bucket_without_its_notification_are_named(
        disposable):
    settings, aws = disposable
    before = checks.queues(aws["sqs"], settings, deployed=False) + checks.buckets(
        aws["s3"], aws["sqs"], settings) + checks.tables(aws["dynamodb"], settings)
    assert all(c.ok for c in before), before

    url = aws["sqs"].get_queue_url(QueueName=settings.media_queue)["QueueUrl"]
    aws["sqs"].set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": ""})
    aws["s3"].put_bucket_notification_configuration(Bucket=settings.intake_bucket,
                                                    NotificationConfiguration={})
    found = {c.name: c for c in checks.queues(aws["sqs"], settings, deployed=False)
             + checks.buckets(aws["s3"], aws["sqs"], settings)}
    assert [n for n, c in found.items() if not c.ok] == [f"queue {settings.media_queue}",
                                                         f"bucket {settings.intake_bucket}"]
    assert "has no redrive policy" in found[f"queue {settings.media_queue}"].detail
    assert "maxReceiveCount 3" in found[f"queue {settings.media_queue}"].detail
    assert (f"sends no s3:ObjectCreated:* notification to {settings.intake_queue}"
            in found[f"bucket {settings.intake_bucket}"].detail)


def test_a_missing_table_and_a_dead_letter_queue_gone_are_named(disposable):
    settings, aws = disposable
    aws["dynamodb"].delete_table(TableName=settings.idempotency_table)
    dlq = aws["sqs"].get_queue_url(QueueName=f"{settings.verify_queue}-dlq")["QueueUrl"]
    aws["sqs"].delete_queue(QueueUrl=dlq)
    tables = {c.name: c for c in checks.tables(aws["dynamodb"], settings)}
    assert "there is no table" in tables[f"table {settings.idempotency_table}"].detail
    assert tables[f"table {settings.jobs_table}"].ok
    queues = {c.name: c for c in checks.queues(aws["sqs"], settings, deployed=False)}
    assert not queues[f"queue {settings.verify_queue}"].ok
    assert "dead-letter queue" in queues[f"queue {settings.verify_queue}"].detail


def test_the_chain_checks_name_a_wrong_chain_id_and_a_missing_escrow(stack):
    settings = config.settings()
    found = {c.name: c for c in checks.chain(settings.model_copy(update={"chain_id": 8453}))}
    assert not found["chain rpc"].ok and "the stage says CHAIN_ID 8453" in found["chain rpc"].detail
    nowhere = checks.chain(settings.model_copy(update={"chain_rpc_url": "http://127.0.0.1:9"}))
    assert [(c.name, c.ok) for c in nowhere] == [("chain rpc", False)]
    assert "does not answer" in nowhere[0].detail
    unset = checks.chain(settings.model_copy(update={"escrow_address": None}))
    assert [(c.name, c.ok) for c in unset] == [("chain", False)]


def test_deep_health_is_an_operators_and_plain_health_stays_public(stack, api, client_api):
    url = stack.info.api_url + "/health"
    anonymous = requests.get(url, params={"deep": "1"}, timeout=30)
    assert (anonymous.status_code, anonymous.json()["reason"]) == (401, "missing_session")
    client = requests.get(url, params={"deep": "1"}, headers=client_api.session_headers(),
                          timeout=30)
    assert (client.status_code, client.json()["reason"]) == (403, "operator_only")
    bad = requests.get(url, params={"deep": "please"}, timeout=30)
    assert (bad.status_code, bad.json()["reason"]) == (400, "invalid_query")

    deep = api.deep_health()
    assert deep["ok"] is True and deep["stage"] == "local"
    names = {c["name"] for c in deep["checks"]}
    assert {"aws", "table proofline-local-jobs", "queue proofline-local-intake",
            "secret PROOFLINE_AUDIT_SECRET", "escrow code", "role OPERATOR_ROLE"} <= names
    plain = requests.get(url, timeout=30).json()
    assert plain["status"] == "ok" and "checks" not in plain
    assert requests.get(url, params={"deep": "0"}, timeout=30).json()["status"] == "ok"
    with pytest.raises(ApiError) as refused:
        client_api.deep_health()
    assert refused.value.status == 403


def test_deployed_event_sources_are_checked_through_the_lambda_api(disposable):
    """What a deployed stage has and the local stack has not: Lambda event source mappings
    (moto's Lambda API; nothing is invoked). One mapping lacks ReportBatchItemFailures, one
    queue has none, and the inference pool's function has no Modal token."""
    settings, aws = disposable
    session = boto3.session.Session()
    iam = session.client("iam", endpoint_url=settings.aws_endpoint_url,
                         region_name=settings.region)
    role = iam.create_role(RoleName=f"{settings.jobs_table}-role",
                           AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("app.py", "def handler(event, context):\n    return {}\n")
    lam = aws["lambda"]
    for queue in RESOURCES.queues:
        name = getattr(settings, queue.setting)
        if queue.setting == "verify_queue":
            continue                                     # nothing consumes it
        function = lam.create_function(
            FunctionName=f"{name}-fn", Runtime="python3.11", Role=role, Handler="app.handler",
            Code={"ZipFile": archive.getvalue()})["FunctionArn"]
        lam.create_event_source_mapping(
            EventSourceArn=checks.queue_arn(aws["sqs"], name), FunctionName=function,
            BatchSize=queue.batch_size,
            **({} if queue.setting == "settlement_queue"
               else {"FunctionResponseTypes": ["ReportBatchItemFailures"]}))
    found = {c.name: c for c in checks.triggers(lam, aws["sqs"], settings)}
    broken = {n: c.detail for n, c in found.items() if not c.ok}
    assert set(broken) == {f"trigger {settings.verify_queue}",
                           f"trigger {settings.settlement_queue}"}
    assert "nothing consumes" in broken[f"trigger {settings.verify_queue}"]
    assert ("does not report batch item failures" in
            broken[f"trigger {settings.settlement_queue}"])
    assert f"{settings.intake_queue}-fn in batches of 10" in found[
        f"trigger {settings.intake_queue}"].detail

    (mapping,) = checks.event_sources(lam, aws["sqs"], settings.inference_queue)
    check = checks.modal_function(lam, mapping["FunctionArn"], ["embed_batch"])
    assert not check.ok and "no MODAL_TOKEN_ID or MODAL_TOKEN_SECRET" in check.detail
    lam.update_function_configuration(FunctionName=mapping["FunctionArn"], Environment={
        "Variables": {"MODAL_TOKEN_ID": "ak-x", "MODAL_TOKEN_SECRET": "as-x"}})
    assert checks.modal_function(lam, mapping["FunctionArn"], ["embed_batch"]).ok
