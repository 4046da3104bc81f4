"""Job classes and policies, loaded from the YAML files beside this module and validated."""
from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chalicelib.errors import InvalidManifest, ProoflineError, UnknownJobClass, UnknownProfile
from chalicelib.models import State
from chalicelib.verification.policies import KNOWN_POLICIES

CATALOG_DIR = Path(__file__).resolve().parent       # the YAML beside this module


class CatalogError(ProoflineError):
    reason = "catalog_invalid"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Defaults(_Strict):
    max_attempts: Annotated[int, Field(ge=1, le=10)]
    payment_policy: str
    profile: str | None = None


class Verification(_Strict):
    policy: str
    queue: str = "verify"             # where checks run: re-execution needs the model's pool
    sample_rate: Annotated[float, Field(gt=0, le=1)] = 1.0      # the operator's pools
    # A marketplace worker's re-executed share never falls below this (audit.items_to_audit).
    audit_floor: Annotated[float, Field(gt=0, le=1)] = 0.1
    cosine_min: Annotated[float, Field(gt=0, le=1)] | None = None
    # 2: the trusted pool runs the whole job again and every row is compared (no sampling)
    redundancy: Literal[1, 2] = 1
    # Depth follows trust: the share of a transcode's segments whose content (every frame's
    # fingerprint, SSIM at drawn frames, the audio against the source) is audited, for the
    # operator's own pools and for marketplace workers; structure, hashes, frame count and
    # bitrate are checked on every segment either way.
    content_audit: "ContentAudit | None" = None
    ssim_frames: Annotated[int, Field(ge=1, le=30)] = 3


class ContentAudit(_Strict):
    trusted: Annotated[float, Field(ge=0, le=1)]
    untrusted: Annotated[float, Field(gt=0, le=1)] = 1.0

    def rate(self, *, trusted: bool, worth: float = 0.0, verified: float = 0.0) -> float:
        """The share of segments audited. A marketplace worker whose history of verified
        work is smaller than this job's `worth` gets everything audited, whatever the
        class says: no earning trust on small jobs to cheat on a large one."""
        if trusted:
            return self.trusted
        return 1.0 if worth > verified else self.untrusted


Verification.model_rebuild()


class Limits(_Strict):
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    # The model's context, in tokens: prompt and generation together must fit.
    context_tokens: Annotated[int, Field(ge=1)] | None = None
    max_texts: Annotated[int, Field(ge=1)] | None = None
    max_batch: Annotated[int, Field(ge=1)] | None = None


class WorkQuote(_Strict):
    """What an escrow job of a class priced by time is charged: quoted seconds of work (a
    base, plus a share per text embedded or per token asked for) times the rate in its
    payment token. (A transcode is priced from its plan instead: profiles.yaml.)"""
    seconds_per_job: Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]
    seconds_per_item: Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]
    per_second: dict[str, Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]]


class JobClass(_Strict):
    name: str
    description: str
    runtime: str
    pool: str
    output: str
    max_input_bytes: Annotated[int, Field(gt=0)]
    defaults: Defaults
    verification: Verification
    timeouts_s: dict[State, Annotated[int, Field(gt=0)]]
    profiles: dict[str, dict] = Field(default_factory=dict)
    inputs: tuple[Literal["uri", "texts", "prompt"], ...] = ("uri",)
    client_split: bool = False        # the client may send the source's segments (`segments`)
    model: str | None = None
    requires_gpu: bool = False
    limits: Limits = Limits()
    price_per_second: Decimal | None = None   # USD per second of model time, for job cost
    quote: WorkQuote | None = None             # an escrow job's charge by time of work
    # Patterns (inference_inputs.PATTERNS) stripped from inputs sent to untrusted workers.
    redact: tuple[Literal["email", "secret_key"], ...] = ()


class PaymentPolicy(_Strict):
    name: str
    description: str
    escrow: bool
    dispute_window_s: Annotated[int, Field(ge=0)] = 0


class Catalog(_Strict):
    job_classes: dict[str, JobClass]
    payment_policies: dict[str, PaymentPolicy]

    def job_class(self, name: str) -> JobClass:
        try:
            return self.job_classes[name]
        except KeyError:
            raise UnknownJobClass(f"unknown job class {name!r}",
                                  details={"known": sorted(self.job_classes)}) from None

    def payment_policy(self, name: str) -> PaymentPolicy:
        try:
            return self.payment_policies[name]
        except KeyError:
            raise InvalidManifest(f"unknown payment policy {name!r}",
                                  reason="unknown_payment_policy",
                                  details={"known": sorted(self.payment_policies)}) from None

    def resolve(self, name: str) -> tuple[JobClass, str | None]:
        """A name from a key prefix: a job class, or a profile of exactly one class."""
        if name in self.job_classes:
            return self.job_classes[name], None
        owners = [c for c in self.job_classes.values() if name in c.profiles]
        if len(owners) == 1:
            return owners[0], name
        raise UnknownProfile(f"{name!r} names no job class or profile")


def load(directory: Path = CATALOG_DIR) -> Catalog:
    raw: dict = {}
    try:
        for path in sorted(directory.glob("*.yaml")):
            raw.update(yaml.safe_load(path.read_text()) or {})
    except yaml.YAMLError as exc:
        raise CatalogError(f"catalog file {path} is not valid YAML: {exc}") from exc
    try:
        catalog = Catalog(
            job_classes={k: {"name": k, **(v or {})}
                         for k, v in raw.get("job_classes", {}).items()},
            payment_policies={k: {"name": k, **(v or {})}
                              for k, v in raw.get("payment_policies", {}).items()})
    except ValidationError as exc:
        raise CatalogError(f"catalog in {directory} is invalid: {exc}") from exc
    for job_class in catalog.job_classes.values():
        if job_class.verification.policy not in KNOWN_POLICIES:
            raise CatalogError(f"job class {job_class.name} names an unknown verification "
                               f"policy {job_class.verification.policy!r}")
        if job_class.defaults.profile and job_class.defaults.profile not in job_class.profiles:
            raise CatalogError(f"job class {job_class.name} defaults to a profile it does not "
                               f"have: {job_class.defaults.profile!r}")
        if job_class.defaults.payment_policy not in catalog.payment_policies:
            raise CatalogError(f"job class {job_class.name} defaults to an unknown payment "
                               f"policy {job_class.defaults.payment_policy!r}")
    return catalog


@lru_cache(maxsize=1)
def default() -> Catalog:
    return load()
