"""The one place that reads the environment.

Stage values come from `.chalice/config.json` (Chalice sets them on deploy; the local stack
exports the `local` stage's values before it imports the app). Nothing falls back to the
`local` stage: a process without its stage's environment refuses to start, and so does a
stage other than `local` that allows unsigned requests.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from aws_lambda_powertools.utilities import parameters
from eth_account import Account

from chalicelib.models import NATIVE_TOKEN, PaymentToken

CHALICE_CONFIG = Path(__file__).resolve().parent.parent / ".chalice" / "config.json"


@dataclass(frozen=True)
class Settings:
    stage: str
    jobs_table: str
    idempotency_table: str
    intake_bucket: str
    artifacts_bucket: str
    intake_queue: str
    media_queue: str
    verify_queue: str
    settlement_queue: str
    segments_queue: str
    inference_queue: str
    chain_rpc_url: str | None
    chain_id: int | None
    escrow_address: str | None
    aws_endpoint_url: str | None
    region: str
    max_manifest_bytes: int
    lease_seconds: int
    presign_seconds: int
    payment_tokens: dict[str, PaymentToken]
    heartbeat_ttl_s: int
    chain_start_block: int = 0        # the escrow's deployment block: the follower starts there
    chain_confirmations: int = 12     # a log is applied once this many blocks are on top of it
    chain_log_range: int = 2_000      # blocks per eth_getLogs (providers cap the range)
    heartbeat_min_interval_s: float = 5.0   # a worker's heartbeats, at most this often
    multipart_bytes: int = 5 * 2**30  # uploads larger than this go in parts (S3's PUT limit)
    part_bytes: int = 256 * 2**20     # the size of each part but the last
    worker_lease_s: int = 120         # a marketplace lease lives this long past a heartbeat
    offer_s: int = 60                 # an offered task not leased by then goes elsewhere
    capability_ttl_s: int = 7 * 86_400   # a passed challenge verifies a class this long
    allow_unsigned: bool = False      # unsigned submit/cancel: a local-demo convenience only
    trusted_workers: frozenset[str] = frozenset()   # marketplace DIDs cleared for private data
    operators: frozenset[str] = frozenset()         # DIDs that may act on any job
    rechallenge_s: int = 3600         # a challenge failed by absence is offered again after this
    countersign_s: int = 3600         # an escrow payee that has not countersigned by then forfeits
    session_domain: str = ""          # the SIWE domain (and token audience) of this stage
    # Intake key prefix → the client DID its drops belong to (longest prefix wins).
    intake_clients: dict[str, str] = field(default_factory=dict)

    @property
    def queues(self) -> dict[str, str]:
        return {"intake": self.intake_queue, "media": self.media_queue,
                "verify": self.verify_queue, "settlement": self.settlement_queue,
                "segments": self.segments_queue, "inference": self.inference_queue}

    @property
    def settlement_enabled(self) -> bool:
        return bool(self.chain_rpc_url and self.escrow_address)


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


def _payment_tokens(raw: str | None) -> dict[str, PaymentToken]:
    """ETH always; ERC-20s from `PAYMENT_TOKENS`, e.g. {"PUSD": {"address": "0x…", "decimals": 6}}."""
    tokens = {NATIVE_TOKEN.symbol: NATIVE_TOKEN}
    for symbol, token in json.loads(raw or "{}").items():
        tokens[symbol] = PaymentToken(symbol, token["address"], int(token["decimals"]))
    return tokens


class ConfigError(RuntimeError):
    """The environment cannot make a safe stage."""


def _intake_clients(raw: str | None) -> dict[str, str]:
    """`{"intake/acme/": "did:pkh:…"}`: whose drops are under which key prefix."""
    try:
        mapping = json.loads(raw or "{}")
    except ValueError:
        mapping = None
    if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v.startswith("did:pkh:")
            for k, v in mapping.items()):
        raise ConfigError("PROOFLINE_INTAKE_CLIENTS must map key prefixes to did:pkh DIDs")
    return mapping


REQUIRED = ("PROOFLINE_STAGE", "JOBS_TABLE", "IDEMPOTENCY_TABLE", "INTAKE_BUCKET",
            "ARTIFACTS_BUCKET", "INTAKE_QUEUE", "MEDIA_QUEUE", "VERIFY_QUEUE",
            "SETTLEMENT_QUEUE", "SEGMENTS_QUEUE", "INFERENCE_QUEUE")


@lru_cache(maxsize=1)
def settings() -> Settings:
    env = os.environ
    missing = [name for name in REQUIRED if not env.get(name)]
    if missing:
        raise ConfigError(f"{', '.join(missing)} not set: a stage's environment comes from "
                          "`chalice deploy` or `proofline dev`")
    made = _settings(env)
    if made.allow_unsigned and made.stage != "local":
        raise ConfigError(f"PROOFLINE_ALLOW_UNSIGNED is for the local stage, not {made.stage!r}")
    exposed = [name for name in SECRETS if env.get(name)]
    if exposed and made.stage != "local":
        raise ConfigError(f"{', '.join(exposed)} must come from a secrets store on stage "
                          f"{made.stage!r} (set <name>_SECRET or <name>_PARAMETER), not a "
                          "plain environment variable")
    if made.settlement_enabled and made.chain_id is None:
        # Signatures and sign-ins are bound to the chain the money is on; never "any chain".
        raise ConfigError("a stage that settles on chain (CHAIN_RPC_URL, ESCROW_ADDRESS) needs "
                          "CHAIN_ID")
    return made


def _settings(env) -> Settings:
    return Settings(
        stage=env["PROOFLINE_STAGE"],
        jobs_table=env["JOBS_TABLE"],
        idempotency_table=env["IDEMPOTENCY_TABLE"],
        intake_bucket=env["INTAKE_BUCKET"],
        artifacts_bucket=env["ARTIFACTS_BUCKET"],
        intake_queue=env["INTAKE_QUEUE"],
        media_queue=env["MEDIA_QUEUE"],
        verify_queue=env["VERIFY_QUEUE"],
        settlement_queue=env["SETTLEMENT_QUEUE"],
        segments_queue=env["SEGMENTS_QUEUE"],
        inference_queue=env["INFERENCE_QUEUE"],
        chain_rpc_url=env.get("CHAIN_RPC_URL") or None,
        chain_id=int(env["CHAIN_ID"]) if env.get("CHAIN_ID") else None,
        escrow_address=env.get("ESCROW_ADDRESS") or None,
        chain_start_block=int(env.get("CHAIN_START_BLOCK") or 0),
        chain_confirmations=int(env.get("CHAIN_CONFIRMATIONS") or 12),
        chain_log_range=max(1, int(env.get("CHAIN_LOG_RANGE") or 2_000)),
        aws_endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
        region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        max_manifest_bytes=int(env.get("PROOFLINE_MAX_MANIFEST_BYTES", 64 * 1024)),
        lease_seconds=int(env.get("PROOFLINE_LEASE_SECONDS", 300)),
        presign_seconds=int(env.get("PROOFLINE_PRESIGN_SECONDS", 900)),
        payment_tokens=_payment_tokens(env.get("PAYMENT_TOKENS")),
        heartbeat_ttl_s=int(env.get("PROOFLINE_HEARTBEAT_TTL_SECONDS", 60)),
        heartbeat_min_interval_s=float(env.get("PROOFLINE_HEARTBEAT_MIN_SECONDS", 5)),
        multipart_bytes=int(env.get("PROOFLINE_MULTIPART_BYTES", 5 * 2**30)),
        part_bytes=max(5 * 2**20, int(env.get("PROOFLINE_PART_BYTES", 256 * 2**20))),
        worker_lease_s=int(env.get("PROOFLINE_WORKER_LEASE_SECONDS", 120)),
        offer_s=int(env.get("PROOFLINE_OFFER_SECONDS", 60)),
        capability_ttl_s=int(env.get("PROOFLINE_CAPABILITY_TTL_SECONDS", 7 * 86_400)),
        allow_unsigned=env.get("PROOFLINE_ALLOW_UNSIGNED", "false").lower() in ("1", "true"),
        countersign_s=int(env.get("PROOFLINE_COUNTERSIGN_SECONDS", 3600)),
        trusted_workers=frozenset(d.strip() for d in env.get("PROOFLINE_TRUSTED_WORKERS", "")
                                  .split(",") if d.strip()),
        rechallenge_s=int(env.get("PROOFLINE_RECHALLENGE_SECONDS", 3600)),
        # The stage is in the default, so a sign-in made for one stage is refused by another.
        session_domain=env.get("PROOFLINE_SESSION_DOMAIN") or f"proofline-{env['PROOFLINE_STAGE']}",
        intake_clients=_intake_clients(env.get("PROOFLINE_INTAKE_CLIENTS")),
        operators=frozenset(d.strip() for d in env.get("PROOFLINE_OPERATORS", "").split(",")
                            if d.strip()),
    )
