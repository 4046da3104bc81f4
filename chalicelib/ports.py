"""The adapters a service function needs, built once per process from Settings."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Callable

from . import aws, catalog
from .blobs import Blobs
from .catalog import Catalog
from .config import Settings, settings
from .models import utcnow
from .queues import Queues
from .store import JobStore
from .taskstore import TaskStore
from .workers import DynamoNonceStore, WorkerStore

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from .chain import Escrow


@dataclass
class ChainPorts:
    """The escrow, the control plane's signer (router, verifier and operator roles) and
    where each built-in pool is paid."""
    escrow: "Escrow"
    control: "LocalAccount"
    pool_payout: dict[str, str]


@dataclass
class Ports:
    settings: Settings
    store: JobStore
    blobs: Blobs
    queues: Queues
    catalog: Catalog
    clock: Callable[[], datetime] = field(default=utcnow)
    chain: ChainPorts | None = None
    tasks: TaskStore | None = None
    workers: "WorkerStore | None" = None
    nonces: "DynamoNonceStore | None" = None


@lru_cache(maxsize=1)
def default() -> Ports:
    s = settings()
    return Ports(settings=s, store=JobStore(aws.client("dynamodb"), s.jobs_table),
                 blobs=Blobs(aws.client("s3")), queues=Queues(aws.client("sqs"), s.queues),
                 catalog=catalog.default(), chain=_chain(s),
                 tasks=TaskStore(aws.client("dynamodb"), s.jobs_table),
                 workers=WorkerStore(aws.client("dynamodb"), s.jobs_table),
                 nonces=DynamoNonceStore(aws.client("dynamodb"), s.idempotency_table))


def _chain(s: Settings) -> ChainPorts | None:
    if not s.settlement_enabled:
        return None
    from eth_account import Account
    from web3 import Web3
    from .chain import Escrow
    from .config import secret
    import requests
    from web3.providers.rpc.utils import ExceptionRetryConfiguration
    # Backs off 0.5, 1, 2, 4, 8 s while the RPC is down; the queue redelivers after that.
    retries = ExceptionRetryConfiguration(
        errors=(ConnectionError, requests.ConnectionError, requests.HTTPError, requests.Timeout),
        retries=5, backoff_factor=0.5)
    w3 = Web3(Web3.HTTPProvider(s.chain_rpc_url, request_kwargs={"timeout": 30},
                                exception_retry_configuration=retries))
    return ChainPorts(escrow=Escrow(w3, s.escrow_address),
                      control=Account.from_key(secret("PROOFLINE_CONTROL_KEY")),
                      pool_payout={pool: secret("PROOFLINE_POOL_ADDRESS")
                                   for pool in ("media", "inference")})
