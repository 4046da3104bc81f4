"""`Ports`: the adapters a service function is given. Services take one and never build
their own, so tests and the local stack can hand them other ones; `ports.default()` builds
the real set."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

from eth_account.signers.local import LocalAccount

from chalicelib.aws.blobs import Blobs
from chalicelib.aws.queueages import QueueAges
from chalicelib.aws.queues import Queues
from chalicelib.aws.sessionstore import DynamoRevocations
from chalicelib.aws.statusstore import StatusStore
from chalicelib.aws.store import JobStore
from chalicelib.aws.taskstore import TaskStore
from chalicelib.aws.uploadstore import UploadStore
from chalicelib.aws.workerstore import DynamoNonceStore, WorkerStore
from chalicelib.bus import MessageBus
from chalicelib.catalog import Catalog
from chalicelib.config import Settings
from chalicelib.identity.sessions import KeyRing
from chalicelib.models import utcnow
from chalicelib.settlement.chain import Escrow
from chalicelib.settlement.rules import EscrowStage

WINDOWS_TTL_S = 300     # how long the contract's dispute window is taken as read


@dataclass
class ChainPorts:
    """The escrow, the control plane's three signers — each holds one role, so a leaked
    key does one thing — and where each built-in pool is paid.

    Keys are read on first use, by role: a function is given only the keys it uses (the
    workers none of these), and one that never signs never asks for a key."""
    escrow: Escrow
    keys: Callable[[str], LocalAccount] = field(repr=False)   # "router" → its account
    payouts: Callable[[], dict[str, str]] = field(repr=False)  # built-in pool → address
    _windows: tuple[float, tuple[int, int]] | None = field(default=None, repr=False)

    @property
    def router(self) -> LocalAccount:
        """Signs funding quotes; assigns (and re-assigns once)."""
        return self.keys("router")

    @property
    def verifier(self) -> LocalAccount:
        """Releases verified work."""
        return self.keys("verifier")

    @property
    def operator(self) -> LocalAccount:
        """Refunds failed and cancelled jobs."""
        return self.keys("operator")

    @property
    def pool_payout(self) -> dict[str, str]:
        return self.payouts()

    def stage(self, settings: Settings) -> EscrowStage:
        """Where and on what windows jobs accepted now will settle."""
        now = time.monotonic()
        if self._windows is None or now - self._windows[0] > WINDOWS_TTL_S:
            self._windows = (now, self.escrow.windows())
        return EscrowStage(chain_id=settings.chain_id, contract=self.escrow.address,
                           dispute_s=self._windows[1][0], countersign_s=settings.countersign_s)


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
    workers: WorkerStore | None = None
    nonces: DynamoNonceStore | None = None
    bus: MessageBus = field(default_factory=MessageBus)
    # The stage's audit secret: what makes a verifier's draws unpredictable to workers.
    audit_secret: str | None = field(default=None, repr=False)
    # The stage's session key ring (None: no reads are served) and its revocations.
    session_keys: KeyRing | None = field(default=None, repr=False)
    revocations: DynamoRevocations | None = None
    uploads: UploadStore | None = None
    status: StatusStore | None = None
    # Each work queue's oldest message's age, from CloudWatch (None: the page shows none).
    queue_ages: QueueAges | None = None
