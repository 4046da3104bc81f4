"""The one place that reads the environment: a stage's `Settings` (pydantic-settings, each
field named by the variable it is read from, validated) and its keys and secrets.

Stage values come from `.chalice/config.json` (Chalice sets them on deploy; the local stack
exports the `local` stage's values before it imports the app). Nothing falls back to the
`local` stage: a process without its stage's environment refuses to start, and so does a
stage other than `local` that allows unsigned requests.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from aws_lambda_powertools.utilities import parameters
from eth_account import Account
from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from chalicelib.models import NATIVE_TOKEN, PaymentToken

CHALICE_CONFIG = Path(__file__).resolve().parent.parent / ".chalice" / "config.json"


def stage_environment(stage: str = "local", path: Path = CHALICE_CONFIG) -> dict[str, str]:
    """The environment variables Chalice would set for `stage` (global values, then stage)."""
    config = json.loads(path.read_text())
    env = dict(config.get("environment_variables", {}))
    env.update(config["stages"][stage].get("environment_variables", {}))
    return env


# Keys and secrets: on a deployed stage only from a secrets store, never a plain variable.
SECRETS = ("PROOFLINE_ROUTER_KEY", "PROOFLINE_VERIFIER_KEY", "PROOFLINE_REFUNDER_KEY",
           "PROOFLINE_POOL_KEY", "PROOFLINE_AUDIT_SECRET", "PROOFLINE_SESSION_KEYS")
SECRET_MAX_AGE_S = 300      # read again after this long: a rotated secret takes over


def secret(name: str) -> str:
    """A key or secret, from the first of: AWS Secrets Manager (`<name>_SECRET` names the
    secret) or SSM Parameter Store (`<name>_PARAMETER` names a SecureString), both read
    through Powertools Parameters with a cache; the environment (the local stack, and
    commands on a developer's machine); an encrypted keystore file (Web3 Secret Storage, as
    eth-account writes it) named by `<name>_KEYSTORE`, opened with `PROOFLINE_PASSPHRASE`.
    Keys are never stored in the repository."""
    store = os.environ.get(f"{name}_SECRET")
    if store:
        return parameters.get_secret(store, max_age=SECRET_MAX_AGE_S)
    store = os.environ.get(f"{name}_PARAMETER")
    if store:
        return parameters.get_parameter(store, decrypt=True, max_age=SECRET_MAX_AGE_S)
    value = os.environ.get(name)
    if value:
        return value
    keystore = os.environ.get(f"{name}_KEYSTORE")
    if not keystore:
        raise KeyError(f"{name} is not set (nor {name}_SECRET, {name}_PARAMETER or "
                       f"{name}_KEYSTORE)")
    passphrase = os.environ.get("PROOFLINE_PASSPHRASE")
    if passphrase is None:
        raise KeyError(f"{name}_KEYSTORE needs PROOFLINE_PASSPHRASE to open it")
    return "0x" + bytes(Account.decrypt(json.loads(Path(keystore).read_text()), passphrase)).hex()


class ConfigError(RuntimeError):
    """The environment cannot make a safe stage."""


def _payment_tokens(raw: object) -> dict[str, PaymentToken]:
    """ETH always; ERC-20s from `PAYMENT_TOKENS`, e.g. {"PUSD": {"address": "0x…", "decimals": 6}}."""
    if isinstance(raw, dict) and all(isinstance(t, PaymentToken) for t in raw.values()):
        return raw
    try:
        listed = json.loads(raw or "{}") if isinstance(raw, str) else raw
        tokens = {symbol: PaymentToken(symbol, str(token["address"]), int(token["decimals"]))
                  for symbol, token in listed.items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        raise ValueError('PAYMENT_TOKENS must map symbols to {"address": "0x…", '
                         '"decimals": N}') from None
    return {NATIVE_TOKEN.symbol: NATIVE_TOKEN, **tokens}


def _intake_clients(raw: object) -> dict[str, str]:
    """`{"intake/acme/": "did:pkh:…"}`: whose drops are under which key prefix."""
    try:
        mapping = json.loads(raw or "{}") if isinstance(raw, str) else raw
    except ValueError:
        mapping = None
    if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v.startswith("did:pkh:")
            for k, v in mapping.items()):
        raise ValueError("PROOFLINE_INTAKE_CLIENTS must map key prefixes to did:pkh DIDs")
    return mapping


def _did_list(raw: object) -> frozenset[str]:
    """A comma-separated list of DIDs (a set or list passes through)."""
    items = raw.split(",") if isinstance(raw, str) else (raw or ())
    return frozenset(str(d).strip() for d in items if str(d).strip())


Tokens = Annotated[dict[str, PaymentToken], NoDecode, BeforeValidator(_payment_tokens)]
ClientPrefixes = Annotated[dict[str, str], NoDecode, BeforeValidator(_intake_clients)]
Dids = Annotated[frozenset[str], NoDecode, BeforeValidator(_did_list)]
Name = Annotated[str, Field(min_length=1)]


def env(name: str, default: Any = PydanticUndefined, *names: str, **constraints: Any) -> Any:
    """A field read from the environment variable `name` (or the first of `names` set)."""
    alias = AliasChoices(name, *names) if names else name
    return Field(default, validation_alias=alias, **constraints)


class Settings(BaseSettings):
    """A stage, from its environment variables (the names Chalice and template.yaml set)."""
    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=True,
                                      env_ignore_empty=True)

    stage: Name = env("PROOFLINE_STAGE")
    jobs_table: Name = env("JOBS_TABLE")
    idempotency_table: Name = env("IDEMPOTENCY_TABLE")
    intake_bucket: Name = env("INTAKE_BUCKET")
    artifacts_bucket: Name = env("ARTIFACTS_BUCKET")
    intake_queue: Name = env("INTAKE_QUEUE")
    media_queue: Name = env("MEDIA_QUEUE")
    verify_queue: Name = env("VERIFY_QUEUE")
    settlement_queue: Name = env("SETTLEMENT_QUEUE")
    segments_queue: Name = env("SEGMENTS_QUEUE")
    checks_queue: Name = env("CHECKS_QUEUE")
    inference_queue: Name = env("INFERENCE_QUEUE")
    chain_rpc_url: str | None = env("CHAIN_RPC_URL", None)
    chain_id: int | None = env("CHAIN_ID", None, gt=0)
    escrow_address: str | None = env("ESCROW_ADDRESS", None)
    aws_endpoint_url: str | None = env("AWS_ENDPOINT_URL", None)
    region: str = env("AWS_REGION", "us-east-1", "AWS_DEFAULT_REGION")
    max_manifest_bytes: int = env("PROOFLINE_MAX_MANIFEST_BYTES", 64 * 1024, gt=0)
    lease_seconds: int = env("PROOFLINE_LEASE_SECONDS", 300, gt=0)
    presign_seconds: int = env("PROOFLINE_PRESIGN_SECONDS", 900, gt=0, le=7 * 86_400)
    payment_tokens: Tokens = env("PAYMENT_TOKENS", {NATIVE_TOKEN.symbol: NATIVE_TOKEN})
    heartbeat_ttl_s: int = env("PROOFLINE_HEARTBEAT_TTL_SECONDS", 60, gt=0)
    # the escrow's deployment block: the follower starts there
    chain_start_block: int = env("CHAIN_START_BLOCK", 0, ge=0)
    # a log is applied once this many blocks are on top of it
    chain_confirmations: int = env("CHAIN_CONFIRMATIONS", 12, ge=0)
    # blocks per eth_getLogs (providers cap the range)
    chain_log_range: int = env("CHAIN_LOG_RANGE", 2_000, ge=1)
    # a worker's heartbeats, at most this often
    heartbeat_min_interval_s: float = env("PROOFLINE_HEARTBEAT_MIN_SECONDS", 5.0, ge=0)
    # uploads larger than this go in parts (S3's PUT limit), each part but the last this size
    multipart_bytes: int = env("PROOFLINE_MULTIPART_BYTES", 5 * 2**30, gt=0)
    part_bytes: int = env("PROOFLINE_PART_BYTES", 256 * 2**20, ge=5 * 2**20)
    # a marketplace lease lives this long past a heartbeat
    worker_lease_s: int = env("PROOFLINE_WORKER_LEASE_SECONDS", 120, gt=0)
    # an offered task not leased by then goes elsewhere
    offer_s: int = env("PROOFLINE_OFFER_SECONDS", 60, gt=0)
    # a passed challenge verifies a class this long
    capability_ttl_s: int = env("PROOFLINE_CAPABILITY_TTL_SECONDS", 7 * 86_400, gt=0)
    # unsigned submit/cancel: a local-demo convenience only
    allow_unsigned: bool = env("PROOFLINE_ALLOW_UNSIGNED", False)
    # marketplace DIDs cleared for private data
    trusted_workers: Dids = env("PROOFLINE_TRUSTED_WORKERS", frozenset())
    # DIDs that may read and act on any job
    operators: Dids = env("PROOFLINE_OPERATORS", frozenset())
    # a challenge failed by absence is offered again after this
    rechallenge_s: int = env("PROOFLINE_RECHALLENGE_SECONDS", 3600, gt=0)
    # an escrow payee that has not countersigned by then forfeits
    countersign_s: int = env("PROOFLINE_COUNTERSIGN_SECONDS", 3600, gt=0)
    # the SIWE domain (and token audience); the stage is in the default, so a sign-in made
    # for one stage is refused by another
    session_domain_override: str = env("PROOFLINE_SESSION_DOMAIN", "")
    # a block explorer of the stage's chain: the job page links each transaction to
    # `<url>/tx/<hash>` (unset: hashes are shown, not linked)
    explorer_url: str | None = env("PROOFLINE_EXPLORER_URL", None,
                                   pattern=r"^https?://[^\s'\"<>]+$", max_length=200)
    # Intake key prefix → the client DID its drops belong to (longest prefix wins).
    intake_clients: ClientPrefixes = env("PROOFLINE_INTAKE_CLIENTS", {})

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any, info: ValidationInfo) -> Any:
        """`X=""` reads as unset (a stage's config lists its variables, some left blank)."""
        if value == "":
            field = cls.model_fields[info.field_name]
            if not field.is_required():
                return field.get_default(call_default_factory=True)
        return value

    @property
    def session_domain(self) -> str:
        return self.session_domain_override or f"proofline-{self.stage}"

    @property
    def queues(self) -> dict[str, str]:
        return {"intake": self.intake_queue, "media": self.media_queue,
                "verify": self.verify_queue, "settlement": self.settlement_queue,
                "segments": self.segments_queue, "checks": self.checks_queue,
                "inference": self.inference_queue}

    @property
    def settlement_enabled(self) -> bool:
        return bool(self.chain_rpc_url and self.escrow_address)


def _variables(field) -> tuple[str, ...]:
    alias = field.validation_alias
    return tuple(alias.choices) if isinstance(alias, AliasChoices) else (alias,)


# The variables a stage's functions read, and those without which they refuse to start.
VARIABLES = tuple(name for f in Settings.model_fields.values() for name in _variables(f))
REQUIRED = tuple(_variables(f)[0] for f in Settings.model_fields.values() if f.is_required())


@lru_cache(maxsize=1)
def settings() -> Settings:
    """This process's stage, from its environment (read once)."""
    return _checked(Settings, os.environ)


def stage_settings(environment: Mapping[str, str]) -> Settings:
    """A stage from an explicit environment (e.g. `stage_environment("dev")` for a command
    that inspects a deployed stage), under the same checks."""
    return _checked(lambda: _Given(**environment), environment)


class _Given(Settings):
    """Settings from the mapping given, and nothing from this process's environment."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **others):
        return (init_settings,)


def _checked(make: Callable[[], Settings], environment: Mapping[str, str]) -> Settings:
    try:
        made = make()
    except ValidationError as error:
        raise ConfigError(_explain(error)) from None
    if made.allow_unsigned and made.stage != "local":
        raise ConfigError(f"PROOFLINE_ALLOW_UNSIGNED is for the local stage, not {made.stage!r}")
    exposed = [name for name in SECRETS if environment.get(name)]
    if exposed and made.stage != "local":
        raise ConfigError(f"{', '.join(exposed)} must come from a secrets store on stage "
                          f"{made.stage!r} (set <name>_SECRET or <name>_PARAMETER), not a "
                          "plain environment variable")
    if made.settlement_enabled and made.chain_id is None:
        # Signatures and sign-ins are bound to the chain the money is on; never "any chain".
        raise ConfigError("a stage that settles on chain (CHAIN_RPC_URL, ESCROW_ADDRESS) needs "
                          "CHAIN_ID")
    return made


def _explain(error: ValidationError) -> str:
    """One sentence per bad variable, named as it is set."""
    unset = [e for e in error.errors() if e["type"] == "missing" or e.get("input") == ""]
    missing = [str(e["loc"][0]) for e in unset]
    wrong = [f"{e['loc'][0]}: {e['msg']}" for e in error.errors() if e not in unset]
    parts = []
    if missing:
        parts.append(f"{', '.join(missing)} not set: a stage's environment comes from "
                     "`chalice deploy`, template.yaml or `proofline dev`")
    parts.extend(wrong)
    return "; ".join(parts)
