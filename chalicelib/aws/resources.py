"""One definition of every table, queue and bucket.

The local stack provisions from it, `template.yaml` declares the same shapes for AWS (a test
holds the two together), and the event pump reads which handler consumes which queue.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from chalicelib.config import Settings


@dataclass(frozen=True)
class Index:
    name: str
    hash_key: str
    range_key: str


@dataclass(frozen=True)
class Table:
    logical_id: str
    setting: str                      # the Settings field holding its name
    hash_key: str
    range_key: str | None = None
    indexes: tuple[Index, ...] = ()
    ttl_attribute: str | None = None


@dataclass(frozen=True)
class Queue:
    logical_id: str
    setting: str
    consumer: str                     # "module:function" the event source mapping invokes
    visibility_timeout: int
    max_receive_count: int
    batch_size: int = 10
    process_pool: bool = False        # execution plane: a container Lambda, run in processes
    batch_window_s: int = 0           # wait up to this long to fill a batch (MaximumBatchingWindow)


@dataclass(frozen=True)
class Bucket:
    logical_id: str
    setting: str
    notify_queue: str | None = None   # Queue.setting that receives s3:ObjectCreated:*
    cors: bool = False


@dataclass(frozen=True)
class Resources:
    tables: tuple[Table, ...] = field(default_factory=tuple)
    queues: tuple[Queue, ...] = field(default_factory=tuple)
    buckets: tuple[Bucket, ...] = field(default_factory=tuple)

    def queue(self, setting: str) -> Queue:
        return next(q for q in self.queues if q.setting == setting)

    def name(self, settings: Settings, resource: Table | Queue | Bucket) -> str:
        return getattr(settings, resource.setting)


RESOURCES = Resources(
    tables=(
        Table("JobsTable", "jobs_table", "pk", "sk", indexes=(
            Index("by_state", "state", "created_at"),
            Index("by_deadline", "due_state", "next_deadline"),
            Index("by_client", "client", "created_at"),     # sparse: jobs that name a client
            # sparse: committed events whose status figures are not added yet
            Index("by_status_due", "status_due", "status_at"),
            # sparse: escrow jobs whose money is not final (what reconciliation walks)
            Index("by_open_escrow", "escrow_open", "created_at"),
        )),
        Table("IdempotencyTable", "idempotency_table", "id", ttl_attribute="expiration"),
    ),
    queues=(
        Queue("IntakeQueue", "intake_queue", "app:on_intake",
              visibility_timeout=60, max_receive_count=5),
        Queue("MediaQueue", "media_queue", "media_worker.handler:handler",
              visibility_timeout=900, max_receive_count=3, batch_size=1, process_pool=True),
        # Segment tasks of split jobs (a segment's renditions in one message): the same image.
        Queue("SegmentsQueue", "segments_queue", "media_worker.handler:segments_handler",
              visibility_timeout=900, max_receive_count=3, batch_size=1, process_pool=True),
        # Their checks and the assembly, on a queue of their own: no check waits behind the
        # encodes queued before it. The same function consumes both.
        Queue("ChecksQueue", "checks_queue", "media_worker.handler:segments_handler",
              visibility_timeout=900, max_receive_count=3, batch_size=1, process_pool=True),
        # Inference jobs and their re-execution checks; a batch of jobs shares a model call.
        Queue("InferenceQueue", "inference_queue", "gpu_functions.handler:handler",
              visibility_timeout=900, max_receive_count=3, batch_size=10, process_pool=True),
        Queue("VerifyQueue", "verify_queue", "app:on_verify",
              visibility_timeout=120, max_receive_count=5),
        # Assignments and releases that come within two seconds go out as one transaction.
        Queue("SettlementQueue", "settlement_queue", "app:on_settlement",
              visibility_timeout=300, max_receive_count=20, batch_size=50, batch_window_s=2),
    ),
    buckets=(
        # Drops, and uploads in quarantine under proofline-quarantine/ (until hashed).
        Bucket("IntakeBucket", "intake_bucket", notify_queue="intake_queue", cors=True),
        Bucket("ArtifactsBucket", "artifacts_bucket", cors=True),
    ),
)
