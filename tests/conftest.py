"""Fixtures: the real local stack (moto server, Chalice API, event pump) for stack tests,
started once per session in-process, and small generated media."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from eth_account import Account
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from chalicelib.config import stage_environment
from chalicelib.identity.signing import (
    DID_HEADER,
    EXPIRY_HEADER,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    did_for,
    request_typed_data,
    sign_request,
)
from chalicelib.jobs.lifecycle import derive_job_id
from proofline import clips
from proofline.client import TERMINAL, Api, ApiError

# Tests run as `proofline dev` does: the local stage's environment (settings never fall back
# to it by themselves).
for _name, _value in stage_environment("local").items():
    os.environ.setdefault(_name, _value)

# The stack's operator: the one DID that may act on jobs it does not own (`PROOFLINE_OPERATORS`).
OPERATOR = Account.from_key("0x" + "5e" * 32)


def pytest_configure(config):
    config.addinivalue_line("markers", "after_stack: runs after every other test, reading "
                            "what the session's stack recorded (tests/deploy/test_iam.py)")


def pytest_collection_modifyitems(config, items):
    """Tests marked `after_stack` go last, so they see every stack test's recorded calls."""
    items.sort(key=lambda item: item.get_closest_marker("after_stack") is not None)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    from proofline.devstack import DevStack
    os.environ.setdefault("PROOFLINE_OPERATORS", did_for(OPERATOR.address, 31337))
    # Marketplace leases and offers lapse in seconds here, so lost workers are noticed fast;
    # not so fast that a loaded machine (moto's transactions slow as its tables fill) makes an
    # honest agent miss its offer: a lapse costs an escrow payee its job.
    os.environ.setdefault("PROOFLINE_WORKER_LEASE_SECONDS", "10")
    os.environ.setdefault("PROOFLINE_OFFER_SECONDS", "20")
    os.environ.setdefault("PROOFLINE_COUNTERSIGN_SECONDS", "6")
    os.environ.setdefault("PROOFLINE_RECHALLENGE_SECONDS", "2")
    # Uploads past 8 MiB go in 5 MiB parts here (5 GB in a deployment), so they are tested.
    os.environ.setdefault("PROOFLINE_MULTIPART_BYTES", str(8 * 2**20))
    os.environ.setdefault("PROOFLINE_PART_BYTES", str(5 * 2**20))
    # Every AWS call the stack's functions make, for tests/deploy/test_iam.py (the pump's
    # worker processes inherit the variable).
    os.environ.setdefault("PROOFLINE_RECORD_CALLS", str(tmp_path_factory.mktemp("calls")))
    dev = DevStack(tmp_path_factory.mktemp("stack"), visibility_cap=2, schedule_every_s=1,
                   pool_workers=2)
    dev.start()
    yield dev
    dev.stop()


@pytest.fixture(scope="session")
def api(stack) -> Api:
    """Unsigned writes (the local stage allows them); reads signed in as the operator."""
    return Api(stack.info.api_url, reader=(OPERATOR, did_for(OPERATOR.address, 31337)))


@pytest.fixture(scope="session")
def client_api(stack) -> Api:
    """The stack's development client: signs its writes (so its escrow jobs name it, the
    one account that can fund them) and reads its own jobs."""
    account = Account.from_key(stack.info.dev_keys["client"])
    return Api(stack.info.api_url, signer=(account, did_for(account.address, stack.info.chain_id)))


def fund_job(stack, job: dict, funder=None):
    """Fund an escrow job on the router's quote, as the development client (or `funder`)."""
    from web3 import Web3

    from chalicelib.models import EscrowTerms
    from chalicelib.settlement.chain import Escrow
    from chalicelib.settlement.escrow import quote_of
    terms = EscrowTerms.model_validate(job["escrow"])
    escrow = Escrow(Web3(Web3.HTTPProvider(stack.info.rpc_url)), stack.info.escrow_address)
    return escrow.fund(funder or Account.from_key(stack.info.dev_keys["client"]),
                       quote_of(terms), bytes.fromhex(terms.quote_signature[2:]))


@pytest.fixture(scope="session")
def aws(stack):
    """boto3 clients of a test's own, outside the control plane's request counting."""
    session = boto3.session.Session()
    make = lambda name: session.client(name, endpoint_url=stack.info.aws_endpoint,  # noqa: E731
                                       region_name=stack.info.region)
    return type("Aws", (), {"s3": make("s3"), "sqs": make("sqs"), "dynamodb": make("dynamodb")})


@pytest.fixture(scope="session")
def ports(stack):
    from chalicelib import ports
    return ports.default()


# A real browser for the pages: Debian's Chromium and its driver (`make browser` installs
# them; nothing is downloaded at run time), headless, driven by Selenium.
CHROMIUM = ("chromium", "chromium-browser")


@pytest.fixture(scope="session")
def browser():
    binary = next((found for name in CHROMIUM if (found := shutil.which(name))), None)
    driver_path = shutil.which("chromedriver")
    assert binary and driver_path, "no Chromium here: `make browser` installs Debian's"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--mute-audio",
                 "--window-size=1280,1600", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def clip(media_dir) -> Path:
    return clips.make_clip(media_dir / "clip.mp4", seconds=1.0, width=160, height=120)


def run_cli(cwd: Path, *args, check: bool = True) -> subprocess.CompletedProcess:
    """The `proofline` CLI as a user runs it, in `cwd`, finding its stack by itself."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "PROOFLINE_"))}
    result = subprocess.run([sys.executable, "-m", "proofline.cli", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=180)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def wait_for(api: Api, job_id: str, states=TERMINAL, timeout: float = 60) -> dict:
    """Poll until the job exists and is in one of `states` (asynchronous doors create it late)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            job = api.job(job_id)
        except ApiError as error:
            if error.status != 404 or time.monotonic() > deadline:
                raise
            job = None
        if job and job["state"] in states:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} stuck in {job['state']}: {api.events(job_id)}")
        time.sleep(0.2)


def event_types(api: Api, job_id: str) -> list[str]:
    return [e["type"] for e in api.events(job_id)["events"]]


def stage_signed(account, *, action: str, did: str, body, chain_id: int | None = None,
                 **options) -> dict:
    """EIP-712 headers under the running stage's domain (its chain, salt and escrow), as a
    client built from `GET /health` signs; `chain_id` is the DID's and already in it."""
    from chalicelib import callers, ports
    return sign_request(account, action=action, did=did, body=body,
                        domain=callers.signing_domain(ports.default(), did), **options)


def forged_headers(account, did: str, body, *, action: str) -> dict:
    """Signature headers that name `did` but are signed by `account`, someone else's key."""
    from chalicelib import callers, ports
    own = did_for(account.address, int(did.split(":")[3]))
    headers = stage_signed(account, action=action, did=own, body=body)
    typed = request_typed_data(action=action, did=did, body=body,
                               domain=callers.signing_domain(ports.default(), did),
                               nonce=int(headers[NONCE_HEADER]),
                               expiry=int(headers[EXPIRY_HEADER]))
    signature = Account.sign_typed_data(account.key, full_message=typed).signature
    return {**headers, DID_HEADER: did, SIGNATURE_HEADER: "0x" + signature.hex()}


# -- the S3 door ------------------------------------------------------------------------------
INTAKE = "proofline-local-intake"


def drop(aws, key, path=None, body=None):
    """Put an object in the intake bucket as an app would; returns (job id, etag)."""
    if path is not None:
        aws.s3.upload_file(str(path), INTAKE, key)
    else:
        aws.s3.put_object(Bucket=INTAKE, Key=key, Body=body)
    etag = aws.s3.head_object(Bucket=INTAKE, Key=key)["ETag"].strip('"')
    return derive_job_id(f"s3:{INTAKE}/{key}@{etag}"), etag


def challenge_passed(agent, job_class: str) -> bool:
    """What an informed cheat can know: its own record says its challenge has passed (a
    challenge looks like any client's job, so this is how it knows when to start cheating)."""
    challenge = agent.api.worker(agent.did).get("challenges", {}).get(job_class) or {}
    return challenge.get("state") == "passed"
