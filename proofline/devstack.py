"""The embedded local stack: moto server (S3, SQS, DynamoDB over HTTP), the Chalice HTTP API
and the event pump, all on 127.0.0.1, provisioned from the one resource definition.

`proofline dev up` runs `python -m proofline.devstack` as a detached process and waits for
it to report healthy in `.proofline/stack.json`; tests start the same `DevStack` in-process.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import boto3
from chalice.app import Rate, ScheduledEventConfig
from chalice.config import Config
from chalice.local import (
    ChaliceRequestHandler,
    LocalGateway,
    LocalGatewayAuthorizer,
    create_local_server,
)

from chalicelib import aws, config, ports
from chalicelib.config import stage_environment
from chalicelib.identity.sessions import KeyRing
from chalicelib.identity.signing import did_for
from chalicelib.settlement.chain import artifact, deploy, deploy_escrow

from .anvil import Anvil
from .awsendpoint import AwsEndpoint
from .calls import acting_as, install_from_environment
from .clips import seed_challenges
from .provision import provision
from .pump import METRICS_FILE, EventPump, metrics_to_file

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
STATE_FILE = "stack.json"
METRICS_LOG = "metrics.jsonl"       # the functions' metrics, one EMF document a line


@dataclass
class StackInfo:
    pid: int
    api_url: str
    aws_endpoint: str
    region: str
    stage: str
    started_at: float
    state_dir: str
    rpc_url: str = ""
    chain_id: int = 0
    escrow_address: str = ""
    token_address: str = ""
    # anvil's well-known development keys, for the local stage only
    dev_keys: dict[str, str] | None = None
    audit_secret: str = ""            # made afresh for each local stack, never stored in the repo
    session_keys: str = ""            # the same: the key ring behind read sessions
    operators: str = ""               # DIDs that may read and act on every job here

    def environment(self) -> dict[str, str]:
        """What a process needs to talk to this stack with boto3 and web3."""
        keys = self.dev_keys or {}
        return {**stage_environment("local"), "AWS_ENDPOINT_URL": self.aws_endpoint,
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": self.region, "AWS_REGION": self.region,
                "PROOFLINE_API_URL": self.api_url, "CHAIN_RPC_URL": self.rpc_url,
                "CHAIN_ID": str(self.chain_id), "ESCROW_ADDRESS": self.escrow_address,
                "PROOFLINE_ROUTER_KEY": keys.get("router", ""),
                "PROOFLINE_VERIFIER_KEY": keys.get("verifier", ""),
                "PROOFLINE_REFUNDER_KEY": keys.get("refunder", ""),
                "PROOFLINE_POOL_KEY": keys.get("pool", ""),
                "PROOFLINE_POOL_ADDRESS": keys.get("pool_address", ""),
                "PROOFLINE_AUDIT_SECRET": self.audit_secret,
                "PROOFLINE_SESSION_KEYS": self.session_keys,
                "PROOFLINE_OPERATORS": self.operators,
                # Files dropped under intake/ here are the development client's.
                "PROOFLINE_INTAKE_CLIENTS": json.dumps(
                    {"intake/": did_for(keys["client_address"], self.chain_id)}
                    if keys.get("client_address") else {}),
                "PAYMENT_TOKENS": json.dumps({TEST_TOKEN: {"address": self.token_address,
                                                           "decimals": TEST_TOKEN_DECIMALS}}
                                             if self.token_address else {})}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class DevStack:
    def __init__(self, state_dir: Path, *, aws_port: int = 0, api_port: int = 0,
                 visibility_cap: int = 30, schedule_every_s: float = 2.0,
                 pool_workers: int = 2, region: str = "us-east-1"):
        self.state_dir = Path(state_dir)
        self.aws_port = aws_port or free_port()
        self.api_port = api_port or free_port()
        self.visibility_cap = visibility_cap
        self.schedule_every_s = schedule_every_s
        self.pool_workers = pool_workers
        self.region = region
        self.info: StackInfo | None = None
        self.anvil: Anvil | None = None
        self.pump: EventPump | None = None
        self._moto = self._api = None

    def start(self) -> StackInfo:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)   # one line per AWS request
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._moto = AwsEndpoint(ip_address=HOST, port=self.aws_port, verbose=False)
        self._moto.start()
        self.anvil = Anvil(free_port()).start()
        self.info = StackInfo(pid=os.getpid(), api_url=f"http://{HOST}:{self.api_port}",
                              aws_endpoint=f"http://{HOST}:{self.aws_port}", region=self.region,
                              stage="local", started_at=time.time(), state_dir=str(self.state_dir),
                              rpc_url=self.anvil.url, chain_id=self.anvil.chain_id,
                              audit_secret=secrets.token_hex(32),
                              session_keys=KeyRing.generate().serialize(),
                              **_deploy_escrow(self.anvil))
        # The stack's operator is anvil's admin account (the CLI's operator commands sign in
        # with it), with any operators the caller names.
        self.info.operators = ",".join(filter(None, [
            os.environ.get("PROOFLINE_OPERATORS"),
            did_for(self.anvil.accounts[0].address, self.anvil.chain_id)]))
        os.environ.update(self.info.environment())
        install_from_environment()          # PROOFLINE_RECORD_CALLS: the functions' AWS calls
        os.environ[METRICS_FILE] = str(self.state_dir / METRICS_LOG)
        metrics_to_file()                   # EMF documents: to metrics.jsonl, not the log
        for cached in (config.settings, ports.default):
            cached.cache_clear()
        aws.reset_clients()
        provision(boto3.session.Session(), config.settings(), visibility_cap=self.visibility_cap)
        seed_challenges(ports.default().blobs, config.settings().artifacts_bucket, self.state_dir)
        app = _load_app()
        self._serve_api(app)
        self.pump = EventPump(config.settings(), pool_workers=self.pool_workers,
                              schedule_every_s=self.schedule_every_s,
                              schedules=_schedules(app)).start()
        return self.info

    def stop(self) -> None:
        if self.pump:
            self.pump.stop()
        if self._api:
            self._api.shutdown()
        if self._moto:
            self._moto.stop()
        if self.anvil:
            self.anvil.stop()
        if os.environ.pop(METRICS_FILE, None):
            metrics_to_file()               # this process's metrics: to stdout again

    def _serve_api(self, app) -> None:
        config = Config.create(chalice_stage="local", app_name="proofline")
        server = create_local_server(app.app, config, HOST, self.api_port)
        server.server.RequestHandlerClass = functools.partial(_RequestHandler,
                                                              app_object=app.app, config=config)
        self._api = server.server
        threading.Thread(target=server.serve_forever, name="api", daemon=True).start()


class _Authorizer(LocalGatewayAuthorizer):
    def authorize(self, *args, **kwargs):
        with acting_as("session_authorizer"):
            return super().authorize(*args, **kwargs)


class _Gateway(LocalGateway):
    """API Gateway as `chalice local` plays it, each AWS call made under the name of the
    Lambda that makes it in a stage: the authorizer's, then the API handler's."""

    def __init__(self, app_object, config):
        super().__init__(app_object, config)
        self._authorizer = _Authorizer(app_object)

    def handle_request(self, *args, **kwargs):
        with acting_as("api_handler"):
            return super().handle_request(*args, **kwargs)


class _RequestHandler(ChaliceRequestHandler):
    def __init__(self, request, client_address, server, app_object, config):
        # As ChaliceRequestHandler's, with the gateway above (the request is served here).
        self.local_gateway = _Gateway(app_object, config)
        BaseHTTPRequestHandler.__init__(self, request, client_address, server)


TEST_TOKEN, TEST_TOKEN_DECIMALS = "PUSD", 6
CLIENT_TOKENS = 1_000_000 * 10**TEST_TOKEN_DECIMALS
# Each role on its own anvil account, as on a real stage (the arbiter is a person's key).
ROLE_ACCOUNTS = {"ROUTER_ROLE": 1, "VERIFIER_ROLE": 4, "OPERATOR_ROLE": 5, "ARBITER_ROLE": 6}


def _deploy_escrow(anvil: Anvil) -> dict:
    """Deploy the escrow and a test ERC-20 (allow-listed, the client holds a million);
    give each control-plane role its own key. Accounts: 0 admin, 1 router, 2 media pool,
    3 client, 4 verifier, 5 refunder (OPERATOR_ROLE), 6 arbiter, 9 treasury."""
    w3 = anvil.web3()
    admin, pool, client, treasury = (anvil.accounts[i] for i in (0, 2, 3, 9))
    token = deploy(w3, admin, "TestToken")
    escrow, _ = deploy_escrow(w3, admin, treasury=treasury.address, tokens=(token,),
                              holders={role: anvil.accounts[index].address
                                       for role, index in ROLE_ACCOUNTS.items()})
    test_token = w3.eth.contract(address=token, abi=artifact("TestToken")["abi"])
    tx = test_token.functions.mint(client.address, CLIENT_TOKENS).transact({"from": admin.address})
    w3.eth.wait_for_transaction_receipt(tx)
    key = lambda role: anvil.accounts[ROLE_ACCOUNTS[role]].key.to_0x_hex()  # noqa: E731
    return {"escrow_address": escrow.address, "token_address": token,
            "dev_keys": {"router": key("ROUTER_ROLE"), "verifier": key("VERIFIER_ROLE"),
                         "refunder": key("OPERATOR_ROLE"), "arbiter": key("ARBITER_ROLE"),
                         "pool": pool.key.to_0x_hex(), "operator": admin.key.to_0x_hex(),
                         "pool_address": pool.address, "client": client.key.to_0x_hex(),
                         "client_address": client.address}}


def _load_app():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import app
    return app


def _schedules(app) -> dict[str, tuple[str, float]]:
    """Each `@app.schedule` handler with its period in minutes (Rate expressions)."""
    minutes = {Rate.MINUTES: 1, Rate.HOURS: 60, Rate.DAYS: 1440}
    return {s.name: (f"app:{s.name}", s.schedule_expression.value * minutes[s.schedule_expression.unit])
            for s in app.app.event_sources if isinstance(s, ScheduledEventConfig)}


# -- the detached process behind `proofline dev up` -------------------------------------------
def read_state(state_dir: Path) -> StackInfo | None:
    path = Path(state_dir) / STATE_FILE
    try:
        return StackInfo(**json.loads(path.read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def serve(state_dir: Path, **options) -> None:
    stack = DevStack(state_dir, **options)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    info = stack.start()
    state = Path(state_dir) / STATE_FILE
    state.write_text(json.dumps(asdict(info), indent=2))
    try:
        stopping.wait()
    finally:
        state.unlink(missing_ok=True)
        stack.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-dir", type=Path, default=Path(".proofline"))
    parser.add_argument("--aws-port", type=int, default=0)
    parser.add_argument("--api-port", type=int, default=0)
    parser.add_argument("--visibility-cap", type=int, default=30)
    parser.add_argument("--schedule-every", type=float, default=2.0,
                        help="seconds a minute of a schedule rate lasts locally")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    serve(args.state_dir, aws_port=args.aws_port, api_port=args.api_port,
          visibility_cap=args.visibility_cap, schedule_every_s=args.schedule_every,
          pool_workers=args.workers)


if __name__ == "__main__":
    main()
