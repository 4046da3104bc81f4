"""The composition root: the adapters built once per process from Settings, and the
after-commit handlers each capability contributes to the message bus."""
from __future__ import annotations

from functools import lru_cache, partial

from eth_account import Account
from eth_account.signers.local import LocalAccount

from chalicelib import aws, catalog
from chalicelib.aws.blobs import Blobs
from chalicelib.aws.queueages import QueueAges
from chalicelib.aws.queues import Queues
from chalicelib.aws.resources import RESOURCES
from chalicelib.aws.sessionstore import DynamoRevocations
from chalicelib.aws.statusstore import StatusStore
from chalicelib.aws.store import JobStore
from chalicelib.aws.taskstore import TaskStore
from chalicelib.aws.uploadstore import UploadStore
from chalicelib.aws.workerstore import DynamoNonceStore, WorkerStore
from chalicelib.bus import MessageBus
from chalicelib.config import Settings, secret, settings
from chalicelib.context import ChainPorts, Ports
from chalicelib.identity.sessions import KeyRing
from chalicelib.jobs.lifecycle import count_outcomes, emit_metrics
from chalicelib.market.challenges import close_challenge
from chalicelib.market.dispatch import dispatch_assigned
from chalicelib.settlement.chain import SIGNERS, Escrow, connect
from chalicelib.settlement.payments import request_settlement
from chalicelib.status.board import record_status

# How the settlement queue is consumed: a batching window, so chain calls go out together.
SETTLEMENT_QUEUE = RESOURCES.queue("settlement_queue")

# In order: where the work goes next, then money, then bookkeeping.
AFTER_COMMIT = (dispatch_assigned, request_settlement, close_challenge, count_outcomes,
                emit_metrics, record_status)


@lru_cache(maxsize=1)
def default() -> Ports:
    s = settings()
    dynamodb = aws.client("dynamodb")
    return Ports(settings=s, store=JobStore(dynamodb, s.jobs_table),
                 blobs=Blobs(aws.client("s3")), queues=Queues(aws.client("sqs"), s.queues),
                 catalog=catalog.default(), chain=_chain(s),
                 tasks=TaskStore(dynamodb, s.jobs_table),
                 workers=WorkerStore(dynamodb, s.jobs_table),
                 nonces=DynamoNonceStore(dynamodb, s.idempotency_table),
                 revocations=DynamoRevocations(dynamodb, s.idempotency_table),
                 uploads=UploadStore(dynamodb, s.jobs_table),
                 status=StatusStore(dynamodb, s.jobs_table, s.idempotency_table),
                 queue_ages=QueueAges(partial(aws.client, "cloudwatch"), s.queues),
                 bus=MessageBus(AFTER_COMMIT), audit_secret=_optional("PROOFLINE_AUDIT_SECRET"),
                 session_keys=_session_keys())


def _chain(s: Settings) -> ChainPorts | None:
    if not s.settlement_enabled:
        return None
    return ChainPorts(escrow=Escrow(connect(s.chain_rpc_url), s.escrow_address),
                      keys=_signer, payouts=_payouts)


@lru_cache(maxsize=None)
def _signer(role: str) -> LocalAccount:
    secret_name, _, _ = SIGNERS[role]
    return Account.from_key(secret(secret_name))


@lru_cache(maxsize=1)
def _payouts() -> dict[str, str]:
    return {pool: secret("PROOFLINE_POOL_ADDRESS") for pool in ("media", "inference")}


def _session_keys() -> KeyRing | None:
    raw = _optional("PROOFLINE_SESSION_KEYS")
    return KeyRing.parse(raw) if raw else None


def _optional(name: str) -> str | None:
    try:
        return secret(name)
    except KeyError:
        return None
