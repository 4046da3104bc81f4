"""Pydantic models of the job domain: manifests in, jobs, attempts and events out."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

JobId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{2,63}$")]
ContentHash = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
Did = Annotated[str, Field(pattern=r"^did:pkh:eip155:[1-9][0-9]{0,11}:0x[0-9a-fA-F]{40}$")]
Price = Annotated[Decimal, Field(ge=0, max_digits=36, decimal_places=18)]


def is_pool(worker: str | None) -> bool:
    """One of the operator's built-in pools (`pool:<name>`): the only workers trusted by
    default. Anything else, whatever it calls itself, is verified as untrusted."""
    return bool(worker) and worker.startswith("pool:")


def is_marketplace(worker: str | None) -> bool:
    """A marketplace worker (its did:pkh), as opposed to a built-in pool (`pool:<name>`)."""
    return bool(worker) and worker.startswith("did:pkh:")


class State(StrEnum):
    REQUESTED = "requested"
    FUNDED = "funded"
    ASSIGNED = "assigned"
    RUNNING = "running"
    RETRYING = "retrying"
    SUBMITTED = "submitted"
    VERIFYING = "verifying"
    VERIFIED = "verified"
    DISPUTED = "disputed"
    SETTLED = "settled"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({State.SETTLED, State.FAILED, State.CANCELLED, State.REJECTED})


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


S3InputUri = Annotated[str, Field(pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+$",
                                  max_length=1024)]
Seconds = Annotated[float, Field(ge=0, le=86_400, allow_inf_nan=False)]


class SegmentRef(BaseModel):
    """A piece of the source the client cut itself before uploading (`proofline transcode`
    splits while it uploads): the planner checks each against the source before any task
    runs, and neither fetches nor cuts the source."""
    model_config = ConfigDict(extra="forbid")

    input_uri: S3InputUri
    input_hash: ContentHash | None = None
    start_s: Seconds
    duration_s: Annotated[float, Field(gt=0, le=3_600, allow_inf_nan=False)]


class Manifest(BaseModel):
    """What a client asks for. Unknown fields are refused so typos never pass silently."""
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    job_id: JobId | None = None
    kind: Annotated[str, Field(min_length=1, max_length=64)]
    input_uri: S3InputUri | None = None
    # The source's video already cut on the profile's segment boundaries (a transcode's).
    segments: Annotated[list[SegmentRef], Field(min_length=1, max_length=4096)] | None = None
    texts: Annotated[list[Annotated[str, Field(min_length=1, max_length=8192)]],
                     Field(min_length=1, max_length=10_000)] | None = None
    prompt: Annotated[str, Field(min_length=1, max_length=16_000)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=4096)] | None = None
    seed: Annotated[int, Field(ge=0, lt=2**32)] | None = None
    data_sensitivity: Literal["public", "private"] | None = None
    redundancy: Literal[1, 2] | None = None   # 2: run twice (the second on a trusted pool), compare all
    input_hash: ContentHash | None = None
    profile: Annotated[str, Field(max_length=64)] | None = None
    model: Annotated[str, Field(max_length=128)] | None = None
    max_attempts: Annotated[int, Field(ge=1, le=10)] | None = None
    payment_policy: str | None = None
    validation: dict[str, Any] | None = None
    deadline: datetime | None = None
    max_price: Price | None = None
    payment_token: Annotated[str, Field(pattern=r"^[A-Za-z0-9]{1,16}$")] | None = None
    client_did: Did | None = None

    @model_validator(mode="after")
    def _has_input(self) -> "Manifest":
        if not (self.input_uri or self.texts or self.prompt):
            raise PydanticCustomError("missing", "a job needs an input: input_uri, texts or prompt")
        return self

    @field_validator("deadline")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("deadline needs a timezone (e.g. 2026-01-01T00:00:00Z)")
        return value


class EscrowTerms(BaseModel):
    """What the chain must show before the job runs, where its money sits, and what became
    of it. Amounts are base units of the token: exact, never floats."""
    job_key: str                      # 0x… bytes32 the contract knows the job by
    chain_id: int
    contract: str
    token: str
    amount: int                       # what the client holds in escrow: the job's max_price
    symbol: str = "ETH"
    decimals: int = 18
    # The router's quote: only `client` may fund, with exactly `amount` of `token`, before
    # `quote_expiry` (unix seconds); the on-chain deadline is `duration_s` after the funding.
    client: str | None = None
    duration_s: int | None = None
    quote_expiry: int | None = None
    quote_signature: str | None = None
    funded_by: str | None = None
    funded_tx: str | None = None
    deadline: int | None = None       # on chain, from the funding: reclaimable after it
    price: int | None = None          # fixed at assignment: what the worker will be paid
    payee: str | None = None          # the address the chain will pay
    reassigned: bool = False          # the payee moved once (after a lapse or a caught cheat)
    charged: int | None = None        # at settlement: what the client paid (the price)
    fee: int | None = None            # the protocol's share of the charge
    refunded: int | None = None       # what went back to the client (change, or everything)


class Output(BaseModel):
    name: str
    uri: str
    sha256: ContentHash
    size_bytes: int


class Job(BaseModel):
    """The job record: the manifest as accepted, plus everything the state machine owns."""
    job_id: JobId
    kind: str
    state: State
    version: int
    manifest: Manifest
    profile: str | None = None
    payment_policy: str
    max_attempts: int
    attempt: int = 0
    correlation_id: str
    source: Literal["http", "s3", "challenge"]
    created_at: datetime
    updated_at: datetime
    timeouts_s: dict[State, int] = Field(default_factory=dict)
    next_deadline: datetime | None = None
    worker: str | None = None
    reason: str | None = None
    outputs: list[Output] = Field(default_factory=list)
    escrow: EscrowTerms | None = None
    plan: TranscodePlan | None = None
    challenge: Did | None = None      # a challenge job proves this worker's claimed class

    @property
    def input_uri(self) -> str | None:
        return self.manifest.input_uri


class AttemptResult(BaseModel):
    """What a worker reports for one attempt; the verifier checks it, never trusts it."""
    model_config = ConfigDict(extra="forbid")

    job_id: JobId
    attempt: int
    worker: str
    output: Output
    duration_ms: int
    execution: dict[str, Any] = Field(default_factory=dict)
    signature: str | None = None      # EIP-712 over (job key, result hash), for escrow jobs


class Event(BaseModel):
    job_id: str
    seq: int
    type: str
    at: datetime
    state: State
    correlation_id: str
    data: dict[str, Any] = Field(default_factory=dict)
    task: str | None = None           # set on a segment task's own events


class TaskState(StrEnum):
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUBMITTED = "submitted"
    PASSED = "passed"
    FAILED = "failed"                 # attempts exhausted: the job fails with it


class Task(BaseModel):
    """One unit of a split job (a segment × rendition, or the audio track), with its own
    attempts and verification; kept in its job's partition."""
    job_id: str
    task_id: str
    kind: Literal["video", "audio"]
    rendition: str | None = None
    index: int = 0
    start_s: float = 0.0
    duration_s: float
    input_uri: str
    input_hash: ContentHash
    state: TaskState = TaskState.ASSIGNED
    attempt: int = 1
    max_attempts: int
    version: int = 1
    worker: str | None = None         # a pool (`pool:media`) or a marketplace worker's DID
    tried: list[str] = Field(default_factory=list)   # workers whose attempts did not pass
    # A marketplace worker must lease an offered task, and keep its lease alive with
    # heartbeats, by this time; the sweeper moves the task on otherwise.
    deadline: datetime | None = None
    runtime_s: float | None = None    # the submitting worker's own report, for reputation
    outputs: list[Output] = Field(default_factory=list)
    reason: str | None = None
    updated_at: datetime

    @property
    def done(self) -> bool:
        return self.state in (TaskState.PASSED, TaskState.FAILED)


class TranscodePlan(BaseModel):
    """What the planner decided for a transcode job; the assembler builds from it."""
    profile: str
    container: Literal["hls", "mp4"]
    segment_s: float
    fps: str                          # exact rational, e.g. "30000/1001"
    duration_s: float
    renditions: list[dict[str, Any]]  # PlannedRendition dumps
    segments: list[dict[str, Any]]    # index, start_s, duration_s, uri, sha256
    has_audio: bool
    split: dict[str, Any]
    command_template: dict[str, Any]

    @property
    def tasks_total(self) -> int:
        return len(self.renditions) * len(self.segments) + (1 if self.has_audio else 0)


class Attempt(BaseModel):
    """One try at a job, kept under its parent; a retry is a new attempt with a new path."""
    job_id: str
    number: int
    worker: str
    state: Literal["assigned", "running", "submitted", "passed", "failed", "lost"]
    started_at: datetime | None = None
    finished_at: datetime | None = None
    output: Output | None = None
    signature: str | None = None
    reason: str | None = None
    call_id: str | None = None        # a spawned remote call (Modal) still to be collected


@dataclass(frozen=True)
class PaymentToken:
    """A token a stage accepts payment in (`PAYMENT_TOKENS`); ETH always."""
    symbol: str
    address: str
    decimals: int


NATIVE_TOKEN = PaymentToken("ETH", "0x0000000000000000000000000000000000000000", 18)
