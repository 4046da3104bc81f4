"""A stage checked end to end against the one resource definition (`aws.resources`) and its
settings: tables, queues with their dead-letter queues, the intake bucket's notification,
the event sources, the secrets, and the chain (the RPC, the escrow's code, each key's role).

Each check is a plain function over boto3 clients or web3 and returns `Check`s whose
sentences say what is wrong and what to do (`health.verdicts` judges). The doctor
(`proofline doctor`) runs them from an operator's machine against any AWS endpoint; the API
(`GET /health?deep=1`, operators only) runs `server_checks` from the function's own point of
view, with its own role, environment and keys.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from eth_account import Account
from eth_utils import is_address
from web3 import Web3

from chalicelib import aws
from chalicelib.aws.resources import RESOURCES, Resources
from chalicelib.config import Settings, secret
from chalicelib.health.verdicts import (
    Check,
    code_verdict,
    mapping_problems,
    notification_problems,
    queue_problems,
    redrive_of,
    table_problems,
    verdict,
)
from chalicelib.identity.sessions import KeyRing
from chalicelib.settlement.chain import NATIVE, SIGNERS, artifact

# Fail fast: a doctor that waits minutes on a dead endpoint is no help.
CLIENT_CONFIG = Config(connect_timeout=3, read_timeout=10,
                       retries={"mode": "standard", "max_attempts": 2})
RPC_TIMEOUT_S = 5
ESCROW = "ProoflineEscrow"
# The control plane's keys, each holding one role of the escrow's (so a leaked key does one
# thing): (secret, role, what it does).
CHAIN_KEYS = tuple(SIGNERS.values())       # (secret, role, what it signs) per control-plane key
Read = Callable[[str], str]


def guarded(name: str, check: Callable[[], list[Check]]) -> list[Check]:
    """A group of checks whose own failure (an answer of a shape nobody expected, a node
    that dies halfway) is one failed check, not a crashed doctor or a 500."""
    try:
        return check()
    except Exception as exc:
        return [Check(name, False, f"the check itself failed: {type(exc).__name__}: "
                      f"{str(exc)[:300]}")]


def clients(settings: Settings, session: Any) -> dict[str, Any]:
    """The boto3 clients the checks use, on the stage's endpoint and region, failing fast."""
    return {name: session.client(name, region_name=settings.region, config=CLIENT_CONFIG,
                                 endpoint_url=settings.aws_endpoint_url)
            for name in ("sts", "dynamodb", "sqs", "s3", "lambda")}


def _error(exc: Exception, action: str) -> str:
    """An AWS error in words, with what to grant when it is a refusal."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        message = exc.response.get("Error", {}).get("Message", "")
        if "AccessDenied" in code or code in ("UnauthorizedOperation", "AuthorizationError"):
            return f"{action} was refused ({code}): grant it to this identity's role"
        return f"{action} failed: {code} {message}".strip()
    return f"{action} failed: {type(exc).__name__}: {exc}"


def _missing(exc: Exception, *codes: str) -> bool:
    return isinstance(exc, ClientError) and any(
        c in exc.response.get("Error", {}).get("Code", "") for c in codes)


# -- AWS -----------------------------------------------------------------------------------
def aws_account(sts, settings: Settings) -> Check:
    """Who the checks run as, and whether the endpoint answers at all."""
    where = settings.aws_endpoint_url or f"AWS {settings.region}"
    try:
        who = sts.get_caller_identity()
    except (ClientError, BotoCoreError) as exc:
        return Check("aws", False, f"{where} does not answer: {_error(exc, 'sts:GetCallerIdentity')}; "
                     "check the credentials, the region and AWS_ENDPOINT_URL")
    return Check("aws", True, f"{where}, account {who.get('Account')} as {who.get('Arn')}")


def tables(dynamodb, settings: Settings, resources: Resources = RESOURCES) -> list[Check]:
    found = []
    for table in resources.tables:
        name = resources.name(settings, table)
        try:
            description = dynamodb.describe_table(TableName=name)["Table"]
            ttl = (dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
                   if table.ttl_attribute else None)
        except (ClientError, BotoCoreError) as exc:
            found.append(Check(f"table {name}", False,
                               f"there is no table {name} here: deploy template.yaml for stage "
                               f"{settings.stage} (sam deploy), or fix {table.setting.upper()}"
                               if _missing(exc, "ResourceNotFound")
                               else _error(exc, f"dynamodb:DescribeTable on {name}")))
            continue
        indexes = {i.name: (i.hash_key, i.range_key) for i in table.indexes}
        problems = table_problems(description, ttl, hash_key=table.hash_key,
                                  range_key=table.range_key, indexes=indexes,
                                  ttl_attribute=table.ttl_attribute)
        extras = ([f"{len(indexes)} indexes"] if indexes else []) + (
            [f"TTL on {table.ttl_attribute}"] if table.ttl_attribute else [])
        found.append(verdict(f"table {name}", problems,
                             f"ACTIVE, keyed {table.hash_key}"
                             + (f"/{table.range_key}" if table.range_key else "")
                             + "".join(f", {e}" for e in extras)))
    return found


def queue_arn(sqs, name: str) -> str:
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]


def queues(sqs, settings: Settings, *, deployed: bool,
           resources: Resources = RESOURCES) -> list[Check]:
    """Each queue with its dead-letter queue and redrive policy; on a deployed stage its
    visibility timeout too (the local stack shortens them, so retries take seconds)."""
    found = []
    for queue in resources.queues:
        name = resources.name(settings, queue)
        try:
            url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
            attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])[
                "Attributes"]
        except (ClientError, BotoCoreError) as exc:
            found.append(Check(f"queue {name}", False,
                               f"there is no queue {name} here: deploy template.yaml for stage "
                               f"{settings.stage}, or fix {queue.setting.upper()}"
                               if _missing(exc, "NonExistentQueue", "QueueDoesNotExist")
                               else _error(exc, f"sqs:GetQueueAttributes on {name}")))
            continue
        problems = queue_problems(name, attributes, max_receive_count=queue.max_receive_count,
                                  visibility_timeout=queue.visibility_timeout if deployed else None)
        policy = redrive_of(attributes) or {}
        dlq = str(policy.get("deadLetterTargetArn") or "").rsplit(":", 1)[-1]
        depth = ""
        if dlq:
            try:
                dlq_url = sqs.get_queue_url(QueueName=dlq)["QueueUrl"]
                waiting = int(sqs.get_queue_attributes(
                    QueueUrl=dlq_url, AttributeNames=["ApproximateNumberOfMessages"])[
                    "Attributes"].get("ApproximateNumberOfMessages", 0))
                depth = (f"; {waiting} dead letters wait in it: read them, fix the cause, "
                         "redrive them (sqs start-message-move-task)") if waiting else "; it is empty"
            except (ClientError, BotoCoreError) as exc:
                problems.append(f"its dead-letter queue {dlq} does not exist: records that "
                                "fail too often are lost; create it (template.yaml does)"
                                if _missing(exc, "NonExistentQueue", "QueueDoesNotExist")
                                else _error(exc, f"sqs:GetQueueUrl on {dlq}"))
        found.append(verdict(f"queue {name}", problems,
                             f"dead-letters to {dlq} after {queue.max_receive_count} receives"
                             + (f", visibility {attributes.get('VisibilityTimeout')} s"
                                if deployed else "") + depth))
    return found


def buckets(s3, sqs, settings: Settings, resources: Resources = RESOURCES) -> list[Check]:
    """Each bucket exists; the intake bucket notifies the intake queue of every object."""
    found = []
    for bucket in resources.buckets:
        name = resources.name(settings, bucket)
        try:
            s3.head_bucket(Bucket=name)
        except (ClientError, BotoCoreError) as exc:
            found.append(Check(f"bucket {name}", False,
                               f"there is no bucket {name} here: deploy template.yaml for stage "
                               f"{settings.stage}, or fix {bucket.setting.upper()}"
                               if _missing(exc, "404", "NoSuchBucket", "NotFound")
                               else _error(exc, f"s3:HeadBucket on {name}")))
            continue
        if not bucket.notify_queue:
            found.append(Check(f"bucket {name}", True, "exists"))
            continue
        queue = resources.name(settings, resources.queue(bucket.notify_queue))
        try:
            arn = queue_arn(sqs, queue)
            configuration = s3.get_bucket_notification_configuration(Bucket=name)
        except (ClientError, BotoCoreError) as exc:
            found.append(Check(f"bucket {name}", False,
                               _error(exc, f"reading {name}'s notification to {queue}")))
            continue
        found.append(verdict(f"bucket {name}",
                             notification_problems(name, configuration, queue, arn),
                             f"every created object is sent to {queue}"))
    return found


def event_sources(lambda_, sqs, name: str) -> list[dict]:
    """The Lambda event source mappings that read the queue `name`."""
    found = []
    for page in lambda_.get_paginator("list_event_source_mappings").paginate(
            EventSourceArn=queue_arn(sqs, name)):
        found += page.get("EventSourceMappings", [])
    return found


def triggers(lambda_, sqs, settings: Settings, resources: Resources = RESOURCES) -> list[Check]:
    """The event source mapping of each queue: to one function, enabled, reporting batch
    item failures, with the definition's batch size."""
    found = []
    for queue in resources.queues:
        name = resources.name(settings, queue)
        try:
            listed = event_sources(lambda_, sqs, name)
        except (ClientError, BotoCoreError) as exc:
            found.append(Check(f"trigger {name}", False,
                               _error(exc, f"lambda:ListEventSourceMappings for {name}")))
            continue
        functions = ", ".join(m.get("FunctionArn", "?").rsplit(":", 1)[-1] for m in listed)
        found.append(verdict(f"trigger {name}", mapping_problems(
            name, listed, consumer=queue.consumer, batch_size=queue.batch_size),
            f"{functions} in batches of {queue.batch_size}, reporting batch item failures"))
    return found


def modal_function(lambda_, function_arn: str, classes: list[str]) -> Check:
    """The inference pool's function spawns on Modal: it has the Modal token."""
    name = function_arn.rsplit(":", 1)[-1]
    try:
        variables = (lambda_.get_function_configuration(FunctionName=function_arn)
                     .get("Environment") or {}).get("Variables") or {}
    except (ClientError, BotoCoreError) as exc:
        return Check("modal", False, _error(exc, f"lambda:GetFunctionConfiguration on {name}"))
    missing = [v for v in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET") if not variables.get(v)]
    if missing:
        return Check("modal", False,
                     f"{name} (the inference pool) has no {' or '.join(missing)}: "
                     f"{', '.join(classes)} jobs would run their models inside the Lambda, "
                     "without a GPU; set the Modal token (`modal token new`) in its environment "
                     "and `modal deploy gpu_functions/inference.py`")
    return Check("modal", True, f"{name} has the Modal token: {', '.join(classes)} spawn on "
                 "Modal (not called from here)")


# -- secrets -------------------------------------------------------------------------------
def secrets(settings: Settings, *, read: Read = secret,
            workers_needed: bool = False) -> list[Check]:
    """Each key and secret this stage needs can be read here and is well formed: the control
    plane's (the session key ring; on chain, the three role keys and where the pools are
    paid), and the workers' (the audit secret; on chain, the pool key), which a deployed
    stage gives only its workers: `workers_needed` where they must be readable here too.
    The values never leave this function; a key is named by its address."""
    wanted: list[tuple[str, bool, Callable[[str], str]]] = [
        ("PROOFLINE_SESSION_KEYS", True, _session_keys),
        ("PROOFLINE_AUDIT_SECRET", workers_needed, _audit_secret)]
    if settings.settlement_enabled:
        wanted += [(name, True, _key) for name, _, _ in CHAIN_KEYS]
        wanted += [("PROOFLINE_POOL_ADDRESS", True, _address),
                   ("PROOFLINE_POOL_KEY", workers_needed, _key)]
    found = []
    for name, needed, judge in wanted:
        try:
            value = read(name)
        except KeyError as exc:
            found.append(Check(f"secret {name}", False, f"{exc.args[0]}: create it in Secrets "
                               f"Manager and name it in {name}_SECRET (docs/deployment.md, "
                               "step 0)") if needed else Check(
                f"secret {name}", None, f"the workers' (template.yaml names it in their "
                f"environment), not readable here: set {name}_SECRET here to check it"))
            continue
        except Exception as exc:         # a secrets store that refuses or does not have it
            found.append(Check(f"secret {name}", False, f"cannot be read: "
                               f"{type(exc).__name__}: {str(exc)[:300]}"))
            continue
        try:
            found.append(Check(f"secret {name}", True, judge(value)))
        except ValueError as exc:
            found.append(Check(f"secret {name}", False, f"is malformed: {exc}"))
    return found


def _session_keys(value: str) -> str:
    try:
        ring = KeyRing.parse(value)
    except Exception as exc:
        raise ValueError(f"{exc} (expected `kid:<64 hex>[,kid:<hex>…]`)") from None
    if not ring.keys:
        raise ValueError("the key ring is empty (expected `kid:<64 hex>`)")
    return f"{len(ring.keys)} session key(s), signing with {ring.keys[0][0]!r}"


def _audit_secret(value: str) -> str:
    if len(value) < 32:
        raise ValueError(f"only {len(value)} characters: make it `openssl rand -hex 32`")
    return f"{len(value)} characters"


def _key(value: str) -> str:
    try:
        return f"a key for {Account.from_key(value).address}"
    except Exception:
        raise ValueError("not a 32-byte hex private key") from None


def _address(value: str) -> str:
    if not is_address(value):
        raise ValueError(f"{value!r} is not an address")
    return Web3.to_checksum_address(value)


# -- the chain -----------------------------------------------------------------------------
def web3_for(url: str) -> Web3:
    """No retries and a short timeout: a check reports a dead node, it does not wait it out."""
    return Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": RPC_TIMEOUT_S},
                                  exception_retry_configuration=None))


def chain(settings: Settings, *, read: Read = secret, w3: Web3 | None = None,
          workers_needed: bool = False) -> list[Check]:
    """The RPC answers on the stage's chain, the escrow's code is the artifact's, each
    control-plane key holds its role (and gas), the pool is paid where its key signs, and
    the stage's payment tokens are allowed by the escrow."""
    rpc, escrow_address = settings.chain_rpc_url, settings.escrow_address
    if not rpc and not escrow_address:
        return [Check("chain", None, f"stage {settings.stage} settles nothing on chain (no "
                      "CHAIN_RPC_URL, no ESCROW_ADDRESS): escrow payment policies are refused")]
    if not (rpc and escrow_address):
        unset = "CHAIN_RPC_URL" if not rpc else "ESCROW_ADDRESS"
        return [Check("chain", False, f"{unset} is not set but the other is: this stage "
                      "settles nothing; set both (docs/deployment.md, step 2)")]
    w3 = w3 or web3_for(rpc)
    try:
        chain_id, head = w3.eth.chain_id, w3.eth.block_number
    except Exception as exc:
        return [Check("chain rpc", False, f"{rpc} does not answer ({type(exc).__name__}: "
                      f"{str(exc)[:200]}): check CHAIN_RPC_URL and that the node is up")]
    found = [Check("chain rpc", chain_id == settings.chain_id,
                   f"{rpc} is chain {chain_id} at block {head:,}" if chain_id == settings.chain_id
                   else f"{rpc} is chain {chain_id}, the stage says CHAIN_ID {settings.chain_id}:"
                   " signatures and sign-ins would be bound to the wrong chain; fix one of them")]
    if not is_address(escrow_address):
        return found + [Check("escrow code", False, f"ESCROW_ADDRESS {escrow_address!r} is not "
                              "an address")]
    address = Web3.to_checksum_address(escrow_address)
    code = bytes(w3.eth.get_code(address))
    creation = bytes.fromhex(artifact(ESCROW)["bytecode"].removeprefix("0x"))
    matches, words = code_verdict(code, creation, contract=ESCROW, address=address,
                                  chain_id=chain_id)
    found.append(Check("escrow code", matches, words))
    escrow = w3.eth.contract(address=address, abi=artifact(ESCROW)["abi"])
    for name, role, does in CHAIN_KEYS:
        found.append(_role(w3, escrow, read, name, role, does, code_ok=matches))
    found.append(_pool(read, workers_needed))
    found.append(_tokens(escrow, settings, code_ok=matches))
    return found


def _role(w3: Web3, escrow, read: Read, name: str, role: str, does: str, *,
          code_ok: bool) -> Check:
    check = f"role {role}"
    try:
        account = Account.from_key(read(name))
    except Exception as exc:
        return Check(check, False, f"{name} cannot be read or is not a key "
                     f"({str(exc)[:200]}): see `secret {name}`")
    if not code_ok:
        return Check(check, False, f"{name} ({account.address}) {does}, but the escrow's code "
                     "is not ProoflineEscrow's: see `escrow code`")
    try:
        holds = escrow.functions.hasRole(Web3.keccak(text=role), account.address).call()
        balance = w3.eth.get_balance(account.address)
    except Exception as exc:
        return Check(check, False, f"the escrow did not answer hasRole: {str(exc)[:200]}")
    if not holds:
        return Check(check, False, f"{name}'s address {account.address} does not hold {role} "
                     f"on escrow {escrow.address}: its transactions ({does}) revert; the "
                     f"escrow's admin grants it: grantRole({role}, {account.address})")
    if balance == 0:
        return Check(check, False, f"{name}'s address {account.address} holds {role} but no "
                     "ETH: it cannot pay gas for what it does; fund it")
    return Check(check, True, f"{name} is {account.address}: holds {role} ({does}), "
                 f"{Web3.from_wei(balance, 'ether'):.4f} ETH for gas")


def _pool(read: Read, workers_needed: bool) -> Check:
    """Pool jobs are paid to PROOFLINE_POOL_ADDRESS, and the escrow pays only against that
    payee's signature, which the pool makes with PROOFLINE_POOL_KEY: they must agree."""
    try:
        payout = Web3.to_checksum_address(read("PROOFLINE_POOL_ADDRESS"))
    except Exception as exc:
        return Check("pool payee", False, f"PROOFLINE_POOL_ADDRESS cannot be read or is not an "
                     f"address ({str(exc)[:200]}): built-in pools cannot be paid")
    try:
        signer = Account.from_key(read("PROOFLINE_POOL_KEY")).address
    except KeyError:
        return Check("pool payee", False if workers_needed else None,
                     f"pool jobs are paid to {payout}; PROOFLINE_POOL_KEY is the workers' and "
                     "not readable here, so whether it signs as that address is not checked "
                     "here")
    except Exception as exc:
        return Check("pool payee", False, f"PROOFLINE_POOL_KEY is not a key ({exc})")
    if signer != payout:
        return Check("pool payee", False, f"pool jobs are paid to {payout} but PROOFLINE_POOL_KEY "
                     f"signs as {signer}: every release of a pool job reverts; make "
                     "PROOFLINE_POOL_ADDRESS the pool key's address")
    return Check("pool payee", True, f"pool jobs are paid to {payout}, the pool key's address")


def _tokens(escrow, settings: Settings, *, code_ok: bool) -> Check:
    tokens = {s: t for s, t in settings.payment_tokens.items() if t.address != NATIVE}
    if not tokens:
        return Check("payment tokens", True, "ETH only")
    if not code_ok:
        return Check("payment tokens", False, "not checked: the escrow's code is not "
                     "ProoflineEscrow's")
    refused = []
    for symbol, token in tokens.items():
        try:
            if not escrow.functions.allowedToken(Web3.to_checksum_address(token.address)).call():
                refused.append(symbol)
        except Exception as exc:
            return Check("payment tokens", False, f"allowedToken({symbol}) failed: {str(exc)[:200]}")
    if refused:
        return Check("payment tokens", False, f"the escrow does not allow {', '.join(refused)} "
                     "(PAYMENT_TOKENS): jobs priced in it cannot be funded; the admin calls "
                     "setTokenAllowed(token, true), or drop it from PAYMENT_TOKENS")
    return Check("payment tokens", True, f"ETH and {', '.join(tokens)}, each allowed by the escrow")


# -- the function's own point of view (`GET /health?deep=1`) ------------------------------
def server_checks(settings: Settings) -> list[Check]:
    """What the API function sees with its own role, environment and keys: the AWS
    endpoint, its tables and queues, its secrets, and the chain with its keys' roles."""
    found = [Check("config", True, f"stage {settings.stage} loaded")]
    account = aws_account(aws.client("sts"), settings)
    found.append(account)
    if account.ok:
        found += guarded("tables", lambda: tables(aws.client("dynamodb"), settings))
        found += guarded("queues", lambda: queues(aws.client("sqs"), settings,
                                                  deployed=settings.stage != "local"))
    found += guarded("secrets", lambda: secrets(settings))
    found += guarded("chain", lambda: chain(settings))
    return found
