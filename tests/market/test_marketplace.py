"""Marketplace workers on the local stack: challenge jobs before any routing, leases with
presigned URLs, signed results verified like the pool's, lapsed leases taken back, and
reputation moved by what happened.

The agents: an honest one (`proofline worker run`, a real process), one that passes its
challenge and then returns a different video, one killed (SIGKILL) once it holds a client's
task (it hangs there first, so the kill lands mid-task), and one that cheats on its
challenge too.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from eth_account import Account
from selenium.webdriver.common.by import By

from chalicelib.identity.signing import did_for
from chalicelib.market.leases import MAX_TASKS
from proofline import clips
from proofline.client import ApiError
from proofline.worker_agent import Agent
from tests.conftest import (
    OPERATOR,
    challenge_passed,
    forged_headers,
    fund_job,
    stage_signed,
    wait_for,
)

pytestmark = pytest.mark.stack
PASSPHRASE = "correct horse battery staple"


def claims(price: str) -> dict:
    return {"job_classes": ["ffmpeg_hls"], "region": "us-east-1",
            "price_per_unit": {"ffmpeg_hls": price}, "codecs": ["h264"]}


class Cheat(Agent):
    """Encodes another video of the right shape: behaves until its challenge has passed,
    unless `always`."""
    always = False

    def encode(self, plan, task, source, out):
        if not self.always and not challenge_passed(self, "ffmpeg_hls"):
            return super().encode(plan, task, source, out)
        fake_source = out.parent / "other.mp4"
        clips.make_clip(fake_source, seconds=task.duration_s + 1, width=320, height=240,
                        audio=False, seed_pattern="smptebars")
        task = task.model_copy(update={"input_hash": clips_hash(fake_source)})
        return super().encode(plan, task, fake_source, out)


def clips_hash(path: Path) -> str:
    from chalicelib.media.probe import sha256_file
    return sha256_file(path)


def keystore(tmp: Path, name: str, chain_id: int) -> tuple[Path, str, Account]:
    from proofline import identity
    path = tmp / f"{name}.json"
    created = identity.create_identity(path, PASSPHRASE, chain_id=chain_id)
    opened = identity.load_identity(path, PASSPHRASE)
    return path, created.did, opened.account


def agent_process(stack, path: Path, price: str, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PROOFLINE_"))}
    env["PROOFLINE_PASSPHRASE"] = PASSPHRASE
    return subprocess.Popen(
        [sys.executable, "-m", "proofline.cli", "--api", stack.info.api_url, "worker", "run",
         "--classes", "ffmpeg_hls", "--price", f"ffmpeg_hls={price}", "--keystore", str(path),
         "--heartbeat-every", "1", "--poll-every", "0.3"],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


# A worker that passes its challenge, then hangs inside a client's task until it is killed.
HANGING_AGENT = """
import sys, time
from eth_account import Account
from proofline.client import Api
from proofline.worker_agent import Agent
from tests.conftest import challenge_passed
from tests.market.test_marketplace import claims

class Hanging(Agent):
    def encode(self, plan, task, source, out):
        if challenge_passed(self, "ffmpeg_hls"):
            time.sleep(600)
        return super().encode(plan, task, source, out)

key, did, api = sys.argv[1:4]
Hanging(api=Api(api), account=Account.from_key(key), did=did, claims=claims("0.00002"),
        heartbeat_every_s=1, poll_s=0.3).run()
"""


def hanging_process(stack, account, did) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HANGING_AGENT, "0x" + bytes(account.key).hex(),
                             did, stack.info.api_url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stack_url(api) -> str:
    return api.base_url


def cli(api_url: str, *args) -> subprocess.CompletedProcess:
    """The CLI against the stack; its reads sign in with the operator's key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PROOFLINE_"))}
    env["PROOFLINE_CLIENT_KEY"] = OPERATOR.key.to_0x_hex()
    done = subprocess.run([sys.executable, "-m", "proofline.cli", "--api", api_url, *args],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def in_thread(agent: Agent) -> threading.Thread:
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    return thread


def wait_until(predicate, timeout: float, what: str, poll: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def challenge_state(api, did: str) -> str | None:
    try:
        challenge = api.worker(did).get("challenges", {}).get("ffmpeg_hls")
    except ApiError:
        return None
    return challenge and challenge["state"]


def leave(api, account, did) -> None:
    """Say, as the worker, that it takes no more work (the killed one cannot)."""
    body = {"did": did, "health": {"accepting": False}}
    try:
        api.heartbeat(did, body, stage_signed(account, action="heartbeat", did=did, body=body))
    except ApiError as error:
        if error.reason != "rate_limited":       # it said so itself a moment ago: that stands
            raise


@pytest.fixture(scope="module")
def market(stack, api, tmp_path_factory):
    """Four agents, each through its challenge before the module's tests run."""
    tmp = tmp_path_factory.mktemp("market")
    chain_id = stack.info.chain_id
    honest_path, honest_did, honest_account = keystore(tmp, "honest", chain_id)
    killed_account = Account.create()
    killed_did = did_for(killed_account.address, chain_id)
    honest_log = tmp / "honest.log"
    honest = agent_process(stack, honest_path, "0.00003", honest_log)
    killed = hanging_process(stack, killed_account, killed_did)
    cheat_account, impostor_account = Account.create(), Account.create()
    cheat = Cheat(api=api, account=cheat_account, did=did_for(cheat_account.address, chain_id),
                  claims=claims("0.00001"), heartbeat_every_s=1, poll_s=0.3, log=lambda _: None)
    impostor = Cheat(api=api, account=impostor_account,
                     did=did_for(impostor_account.address, chain_id), claims=claims("0.000001"),
                     heartbeat_every_s=1, poll_s=0.3, log=lambda _: None)
    impostor.always = True
    threads = [in_thread(cheat), in_thread(impostor)]
    agents = {"honest": (honest_did, honest_account), "killed": (killed_did, killed_account),
              "cheat": (cheat.did, cheat_account), "impostor": (impostor.did, impostor_account)}
    try:
        for name in ("honest", "killed", "cheat"):
            try:
                wait_until(lambda: challenge_state(api, agents[name][0]) == "passed", 120,
                           f"{name}'s challenge to pass")
            except AssertionError:
                challenge = api.worker(agents[name][0])["challenges"]["ffmpeg_hls"]
                raise AssertionError(f"{name}: {challenge}: " + str(
                    [(e["type"], e["data"].get("reason")) for e in
                     api.events(challenge["job_id"])["events"]])) from None
        wait_until(lambda: challenge_state(api, impostor.did) == "failed", 120,
                   "the impostor's challenge to fail")
        yield type("Market", (), {"agents": agents, "killed": killed, "honest": honest,
                                  "honest_log": honest_log,
                                  "cheat": cheat, "impostor": impostor})
    finally:
        cheat.stop(), impostor.stop()
        for thread in threads:
            thread.join(timeout=30)
        if honest.poll() is None:
            honest.send_signal(signal.SIGTERM)
            try:
                honest.wait(timeout=60)
            finally:
                honest.kill()
        if killed.poll() is None:
            killed.kill()
        killed.wait()
        leave(api, killed_account, killed_did)


def test_challenges_verify_capabilities_and_a_failed_one_is_never_routed(api, market):
    honest_did = market.agents["honest"][0]
    worker = api.worker(honest_did)
    assert worker["routable_for"] == ["ffmpeg_hls"]
    verified = worker["verified"]["ffmpeg_hls"]
    assert verified["challenge_job"] == worker["challenges"]["ffmpeg_hls"]["job_id"]
    assert api.job(verified["challenge_job"])["state"] == "settled"
    impostor = api.worker(market.impostor.did)
    assert impostor["routable_for"] == [] and impostor["verified"] == {}
    challenge = impostor["challenges"]["ffmpeg_hls"]
    assert challenge["state"] == "failed" and challenge["retryable"] is False
    assert challenge["reason"] not in ("offer_lapsed", "lease_expired", "lease_released")
    assert api.job(challenge["job_id"])["state"] == "failed"


def test_a_cheat_and_a_killed_worker_lose_the_task_to_the_honest_one(api, market, media_dir):
    source = clips.make_gop_clip(media_dir / "market.mp4", seconds=4.0, gop=100, width=320,
                                 height=240, fps=25)
    slot = api.upload(source)
    job, _ = api.submit({"kind": "ffmpeg_hls", "input_uri": slot["input_uri"],
                         "input_hash": slot["input_hash"], "profile": "hls-720p"},
                        idempotency_key=str(uuid.uuid4()))
    job_id = job["job_id"]
    dids = {name: did for name, (did, _) in market.agents.items()}
    cheat_before = api.worker(dids["cheat"])["reputation"]["ffmpeg_hls"]["score"]

    def leased_by_killed():
        return any(e["type"] == "segment.leased" and e["data"].get("worker") == dids["killed"]
                   for e in api.events(job_id)["events"])
    wait_until(leased_by_killed, 120, "the killed worker to lease a task")
    market.killed.send_signal(signal.SIGKILL)               # dies mid-task, holding the lease

    final = wait_for(api, job_id, timeout=180)
    events = api.events(job_id)["events"]
    summary = [(e["type"], e["data"].get("worker"), e["data"].get("reason")) for e in events
               if e["type"].startswith("segment.")]
    assert final["state"] == "settled", summary
    by = lambda kind: {e["data"].get("worker") for e in events if e["type"] == kind}  # noqa: E731
    assert dids["cheat"] in by("segment.rejected")            # caught by verification
    assert dids["killed"] in by("segment.lease_expired"), summary    # its lease lapsed
    verified = {e["task"]: e["data"]["worker"] for e in events if e["type"] == "segment.verified"}
    assert verified.pop("audio") == "pool:media"               # the audio track stays home
    assert set(verified.values()) == {dids["honest"]}          # only honest work passed
    assert dids["impostor"] not in by("segment.offered")      # never routed
    routed = next(e for e in events if e["type"] == "segment.offered")
    assert routed["data"]["ranking"]["excluded"]["no_verified_capability"]["count"] >= 1

    cheat = api.worker(dids["cheat"])["reputation"]["ffmpeg_hls"]
    assert cheat["validation_failures"] >= 1 and cheat["score"] < cheat_before
    killed = api.worker(dids["killed"])["reputation"]["ffmpeg_hls"]
    assert killed["timeouts"] >= 1
    honest = api.worker(dids["honest"])["reputation"]["ffmpeg_hls"]
    assert honest["completions"] >= 2 and honest["score"] > cheat["score"]

    explained = json.loads(cli(stack_url(api), "jobs", "explain", job_id, "--json").stdout)
    chosen = [(row["task"], row["worker"]) for row in explained if row["task"]]
    assert chosen[0][1] == dids["cheat"] and chosen[-1][1] == dids["honest"]


def test_a_worker_cannot_lease_or_submit_for_another_and_forged_or_replayed_calls_fail(
        api, market):
    honest_did, _ = market.agents["honest"]
    cheat_did, cheat_account = market.agents["cheat"]
    chain_id = int(cheat_did.split(":")[3])
    body = {"did": honest_did}
    with pytest.raises(ApiError) as foreign:                  # the cheat leases as honest
        api.lease(honest_did, body, forged_headers(cheat_account, honest_did, body,
                                                   action="lease"))
    assert (foreign.value.status, foreign.value.reason) == (403, "wrong_signer")
    for wrong in (0, MAX_TASKS + 1, "4", True):               # a lease asks for 1..16
        body = {"did": cheat_did, "max_tasks": wrong}
        with pytest.raises(ApiError) as refused:
            api.lease(cheat_did, body, stage_signed(cheat_account, action="lease", did=cheat_did,
                                                    body=body, chain_id=chain_id))
        assert (refused.value.status, refused.value.reason) == (400, "invalid_max_tasks")

    honest_task = _a_task_of(api, honest_did)
    ref = f"{honest_task['job_id']}~{honest_task['task']}"
    result = {"did": cheat_did, "task_ref": ref, "attempt": 1,
              "outputs": [{"name": "x", "sha256": "sha256:" + "0" * 64, "size_bytes": 1}]}
    with pytest.raises(ApiError) as not_yours:
        api.submit_result(ref, result, stage_signed(cheat_account, action="result",
                                                    did=cheat_did, body=result,
                                                    chain_id=chain_id))
    assert (not_yours.value.status, not_yours.value.reason) == (403, "not_your_task")

    beat = {"did": cheat_did, "health": {"accepting": False}}
    headers = stage_signed(cheat_account, action="heartbeat", did=cheat_did, body=beat,
                           chain_id=chain_id)
    time.sleep(0.6)                   # past the heartbeat rate limit (0.5 s on this stack)
    api.heartbeat(cheat_did, beat, headers)
    with pytest.raises(ApiError) as replayed:
        api.heartbeat(cheat_did, beat, headers)
    assert replayed.value.status == 401 and replayed.value.reason == "replayed_nonce"
    with pytest.raises(ApiError) as unsigned:
        api.submit_result(ref, result, {})
    assert (unsigned.value.status, unsigned.value.reason) == (401, "missing_signature")


def test_max_jobs_ends_the_agent_by_itself(stack, api, tmp_path):
    path, did, _ = keystore(tmp_path, "brief", stack.info.chain_id)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PROOFLINE_"))}
    done = subprocess.run(
        [sys.executable, "-m", "proofline.cli", "--api", stack.info.api_url, "worker", "run",
         "--classes", "ffmpeg_hls", "--price", "ffmpeg_hls=0.00009", "--keystore", str(path),
         "--max-jobs", "2", "--heartbeat-every", "1", "--poll-every", "0.3"],
        env={**env, "PROOFLINE_PASSPHRASE": PASSPHRASE}, capture_output=True, text=True,
        timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "submitted 2" in done.stdout                        # its challenge's two tasks
    wait_until(lambda: challenge_state(api, did) == "passed", 60, "its challenge to pass")
    worker = api.worker(did)
    assert worker["routable_for"] == ["ffmpeg_hls"]
    assert worker["health"]["accepting"] is False              # it said it was leaving


def test_an_escrow_transcode_pays_the_worker_that_did_it(stack, api, client_api, market,
                                                         media_dir):
    from web3 import Web3

    from chalicelib.settlement.escrow import result_hash
    honest_did = market.agents["honest"][0]
    market.cheat.stop()                                       # the cheaper ones are gone
    leave(api, *reversed(market.agents["killed"]))
    wait_until(lambda: api.worker(market.cheat.did)["health"]["accepting"] is False, 30,
               "the cheat to leave")
    w3 = Web3(Web3.HTTPProvider(stack.info.rpc_url))
    source = clips.make_gop_clip(media_dir / "paid.mp4", seconds=4.0, gop=100, width=320,
                                 height=240, fps=25)
    slot = client_api.upload(source)
    job, _ = client_api.submit({"kind": "ffmpeg_hls", "input_uri": slot["input_uri"],
                                "input_hash": slot["input_hash"], "profile": "hls-720p",
                                "payment_policy": "escrow_before_start", "max_price": "0.02"},
                               idempotency_key=str(uuid.uuid4()))
    payee = Web3.to_checksum_address(honest_did.split(":")[-1])
    from chalicelib.settlement.chain import NATIVE, Escrow
    escrow = Escrow(w3, stack.info.escrow_address)
    before = escrow.credit(NATIVE, payee)
    fund_job(stack, job)
    final = wait_for(api, job["job_id"], timeout=180)
    events = api.events(job["job_id"])["events"]
    assert final["state"] == "settled", [(e["type"], e["data"].get("reason")) for e in events]
    assert final["worker"] == honest_did                       # the router chose it at funding
    [assigned] = [e for e in events if e["type"] == "escrow.assigned"]
    assert assigned["data"]["worker"] == payee                 # the chain names its address
    video = {e["task"]: e["data"]["worker"] for e in events
             if e["type"] == "segment.verified" and e["task"] != "audio"}
    assert set(video.values()) == {honest_did}
    [signed] = [e for e in events if e["type"] == "result.countersigned"]
    [released] = [e for e in events if e["type"] == "settlement.released"]
    package = final["outputs"][0]["sha256"]
    assert signed["data"]["result_hash"] == released["data"]["result_hash"] \
        == "0x" + result_hash([package]).hex()
    price = final["escrow"]["price"]
    assert assigned["data"]["price"] == str(price) and 0 < price < 2 * 10**16
    assert escrow.credit(NATIVE, payee) - before == price     # owed to the worker's DID


class Mute(Agent):
    """Does the work, then never signs for its pay."""

    def countersign(self, request):
        self.asked = getattr(self, "asked", 0) + 1


def test_a_payee_that_never_countersigns_forfeits_and_the_client_is_refunded(
        stack, api, client_api, market, media_dir):
    from web3 import Web3

    from chalicelib.settlement.chain import Escrow
    chain_id = stack.info.chain_id
    account = Account.create()
    mute = Mute(api=api, account=account, did=did_for(account.address, chain_id),
                claims=claims("0.000005"), heartbeat_every_s=1, poll_s=0.3, log=lambda _: None)
    thread = in_thread(mute)
    try:
        wait_until(lambda: challenge_state(api, mute.did) == "passed", 120, "its challenge")
        w3 = Web3(Web3.HTTPProvider(stack.info.rpc_url))
        client = Account.from_key(stack.info.dev_keys["client"])
        source = clips.make_gop_clip(media_dir / "unsigned.mp4", seconds=4.0, gop=100,
                                     width=320, height=240, fps=25)
        slot = client_api.upload(source)
        job, _ = client_api.submit({"kind": "ffmpeg_hls", "input_uri": slot["input_uri"],
                                    "input_hash": slot["input_hash"], "profile": "hls-720p",
                                    "payment_policy": "escrow_before_start",
                                    "max_price": "0.02"}, idempotency_key=str(uuid.uuid4()))
        escrow = Escrow(w3, stack.info.escrow_address)
        fund_job(stack, job, funder=client)
        final = wait_for(api, job["job_id"], timeout=180)
    finally:
        mute.stop()
        thread.join(timeout=30)
    events = api.events(job["job_id"])["events"]
    story = [(e["type"], e.get("task"), e["data"].get("worker"), e["data"].get("reason"))
             for e in events]
    assert final["state"] == "settled" and final["worker"] == mute.did, story
    types = [e["type"] for e in events]
    assert "settlement.awaiting_signature" in types and "settlement.released" not in types
    [forfeited] = [e for e in events if e["type"] == "settlement.forfeited"]
    assert forfeited["data"]["reason"] == "payee_did_not_countersign"
    assert mute.asked >= 1                                    # it was asked, and kept quiet
    from chalicelib.settlement.chain import EscrowState
    on_chain = escrow.job(bytes.fromhex(job["escrow"]["job_key"][2:]))
    assert on_chain.state == EscrowState.REFUNDED              # the client has its money back
    assert api.worker(mute.did)["reputation"]["ffmpeg_hls"]["timeouts"] == 1


def test_a_payee_caught_cheating_loses_the_job_and_the_escrow_is_reassigned_once(
        stack, api, client_api, market, media_dir):
    """The worker who wants to be paid for tampered output: it wins an escrow transcode
    (cheapest, fresh standing), then encodes another video. Verification catches it, the
    pool redoes the work, and the escrow is re-assigned to the pool — once, on chain and on
    the timeline; the cheat is owed nothing."""
    from web3 import Web3

    from chalicelib.settlement.chain import NATIVE, Escrow
    account = Account.create()
    cheat = Cheat(api=api, account=account, did=did_for(account.address, stack.info.chain_id),
                  claims=claims("0.000004"), heartbeat_every_s=1, poll_s=0.3, log=lambda _: None)
    thread = in_thread(cheat)
    escrow = Escrow(Web3(Web3.HTTPProvider(stack.info.rpc_url)), stack.info.escrow_address)
    pool = stack.info.dev_keys["pool_address"]
    try:
        wait_until(lambda: challenge_state(api, cheat.did) == "passed", 120, "its challenge")
        source = clips.make_gop_clip(media_dir / "tampered.mp4", seconds=4.0, gop=100,
                                     width=320, height=240, fps=25)
        slot = client_api.upload(source)
        job, _ = client_api.submit({"kind": "ffmpeg_hls", "input_uri": slot["input_uri"],
                                    "input_hash": slot["input_hash"], "profile": "hls-720p",
                                    "payment_policy": "escrow_before_start",
                                    "max_price": "0.02"}, idempotency_key=str(uuid.uuid4()))
        pool_before = escrow.credit(NATIVE, pool)
        fund_job(stack, job)
        final = wait_for(api, job["job_id"], timeout=240)
    finally:
        cheat.stop()
        thread.join(timeout=30)
    events = api.events(job["job_id"])["events"]
    types = [e["type"] for e in events]
    story = [(e["type"], e.get("task"), e["data"].get("worker"), e["data"].get("reason"))
             for e in events]
    assert final["state"] == "settled", story
    chosen = next(e for e in events if e["type"] == "job.assigned")
    assert chosen["data"]["worker"] == cheat.did, story            # it won the job
    assert any(e["type"] == "segment.rejected" and e["data"]["worker"] == cheat.did
               for e in events)                                     # and was caught
    [moved] = [e for e in events if e["type"] == "escrow.payee_moved"]
    assert (moved["data"]["from"], moved["data"]["to"]) == (cheat.did, "pool:media"), story
    # On chain: assigned to the cheat, then re-assigned to the pool; or, when the cheat was
    # caught before the chain's assign went out, assigned to the pool straight away.
    record = escrow.job(bytes.fromhex(job["escrow"]["job_key"][2:]))
    on_chain = [e for e in events if e["type"] in ("escrow.assigned", "escrow.reassigned")]
    assert record.worker == Web3.to_checksum_address(pool), story
    assert record.assignments == len(on_chain) <= 2, story
    assert on_chain[-1]["data"]["worker"] == record.worker
    if record.assignments == 2:
        assert [e["type"] for e in on_chain] == ["escrow.assigned", "escrow.reassigned"]
        assert on_chain[0]["data"]["worker"] == Web3.to_checksum_address(cheat.did.split(":")[-1])
    assert types.index(on_chain[-1]["type"]) < types.index("settlement.released")
    assert escrow.credit(NATIVE, Web3.to_checksum_address(cheat.did.split(":")[-1])) == 0
    assert escrow.credit(NATIVE, pool) - pool_before == final["escrow"]["price"]
    assert final["worker"] == "pool:media" and final["escrow"]["reassigned"] is True


def test_sigterm_lets_the_agent_leave_cleanly(api, market):
    market.honest.send_signal(signal.SIGTERM)
    market.honest.wait(timeout=60)
    output = market.honest_log.read_text()
    assert market.honest.returncode == 0, output
    assert "stopping" in output and "submitted" in output
    assert api.worker(market.agents["honest"][0])["health"]["accepting"] is False


def _a_task_of(api, did: str) -> dict:
    challenge = api.worker(did)["challenges"]["ffmpeg_hls"]["job_id"]
    return next(e for e in api.events(challenge)["events"] if e["type"] == "segment.verified")




def test_a_dispute_opened_on_chain_counts_against_the_paid_worker(ports, stack):
    """Disputes join the payee's reputation from the chain's DisputeOpened log."""
    import dataclasses
    from datetime import datetime, timezone

    from hexbytes import HexBytes

    from chalicelib.market import workers
    from chalicelib.models import Event, Job, Manifest, State
    from chalicelib.settlement import follower
    from tests.media.test_transcode import RecordingQueues
    held = dataclasses.replace(ports, queues=RecordingQueues())
    account = Account.create()
    did = did_for(account.address, stack.info.chain_id)
    now = datetime.now(timezone.utc)
    workers.register(held.workers, did, account.address,
                     workers.Claims.model_validate(claims("0.00003")), now=now)
    job = Job(job_id=f"job-{uuid.uuid4().hex[:16]}", kind="ffmpeg_hls", state=State.VERIFIED,
              version=1, manifest=Manifest(kind="ffmpeg_hls", input_uri="s3://intake/x.mp4"),
              payment_policy="none", max_attempts=3, timeouts_s={}, worker=did,
              correlation_id="c", source="http", created_at=now, updated_at=now)
    held.store.create(job, [Event(job_id=job.job_id, seq=1, type="job.created", at=now,
                                  state=job.state, correlation_id="c")], [])
    log = {"transactionHash": HexBytes(b"\x01" * 32), "blockNumber": 7,
           "args": {"client": Account.create().address}}
    assert follower.on_dispute_opened(held, job, log).state == State.DISPUTED
    assert held.workers.get(did).reputation["ffmpeg_hls"]["disputes"] == 1
    assert follower.on_dispute_opened(held, held.store.get(job.job_id), log) is None
    assert held.workers.get(did).reputation["ffmpeg_hls"]["disputes"] == 1   # read once


class LeaseRecorder(Agent):
    """Honest, and keeps every lease of video work it was handed, as a worker sees them."""

    def lease(self):
        got = super().lease()
        if got and got.get("kind") in ("task", "segment"):
            self.leases = getattr(self, "leases", []) + [got]
        return got


def shape(value):
    """The structure of a document: keys and value types, not values (a list's items vary
    with the content, e.g. how many segments, so only its being a list counts)."""
    if isinstance(value, dict):
        return tuple(sorted((k, shape(v)) for k, v in value.items()))
    return "list" if isinstance(value, list) else type(value).__name__


# What a worker may write into its results, and a page must show as text.
SCRIPT = "<script>window.pwned=1</script>"


class ClaimingRecorder(LeaseRecorder):
    """Honest work, with a script where the execution names the FFmpeg build it ran."""

    def submit(self, entry: dict, outputs: list[dict], execution: dict) -> None:
        super().submit(entry, outputs, {**execution, "ffmpeg": SCRIPT})


@contextlib.contextmanager
def cheapest_recorder(api, stack, kind=LeaseRecorder):
    """A LeaseRecorder priced below every other agent, through its challenge; it leaves
    the market afterwards."""
    account = Account.create()
    recorder = kind(api=api, account=account,
                             did=did_for(account.address, stack.info.chain_id),
                             claims=claims("0.0000001"), heartbeat_every_s=1, poll_s=0.3,
                             log=lambda _: None)
    thread = in_thread(recorder)
    try:
        wait_until(lambda: challenge_state(api, recorder.did) == "passed", 120,
                   "the recorder's challenge to pass")
        yield recorder
    finally:
        recorder.stop()
        thread.join(timeout=60)
        leave(api, account, recorder.did)


def test_a_challenge_and_a_client_job_look_the_same_to_a_worker(api, stack, market, media_dir):
    with cheapest_recorder(api, stack) as recorder:
        challenge_job = api.worker(recorder.did)["challenges"]["ffmpeg_hls"]["job_id"]
        source = clips.make_gop_clip(media_dir / "lookalike.mp4", seconds=6.0, gop=100,
                                     width=320, height=240, fps=25)
        slot = api.upload(source)
        job, _ = api.submit({"kind": "ffmpeg_hls", "input_uri": slot["input_uri"],
                             "input_hash": slot["input_hash"]},
                            idempotency_key=str(uuid.uuid4()))
        final = wait_for(api, job["job_id"], timeout=180)
        assert final["state"] == "settled"
    leases = [lease for lease in getattr(recorder, "leases", []) if lease["kind"] == "task"]
    challenge = [lease for lease in leases if lease["job_id"] == challenge_job]
    client = [lease for lease in leases if lease["job_id"] == job["job_id"]]
    assert challenge and client, [lease["job_id"] for lease in leases]
    assert {shape(lease) for lease in challenge} == {shape(lease) for lease in client}
    for lease in challenge + client:
        assert re.fullmatch(r"job-[0-9a-f]{20}", lease["job_id"])
        assert "challenge" not in json.dumps(lease).lower()
        assert "max_attempts" not in lease["task"]            # a challenge has one try


def test_a_worker_leases_a_segments_renditions_together_and_each_is_judged_alone(
        api, stack, market, media_dir, browser):
    """One lease per segment: its renditions, one input URL, an output slot each; the agent
    encodes them in one run and each task is submitted, verified and paid on its own. What
    the worker wrote (here, a script as its FFmpeg build) is text on the job's page."""
    with cheapest_recorder(api, stack, ClaimingRecorder) as recorder:
        source = clips.make_gop_clip(media_dir / "ladder-market.mp4", seconds=7.0, gop=100,
                                     width=640, height=480, fps=25)
        slot = api.upload(source)
        job, _ = api.submit({"kind": "ffmpeg_hls", "input_uri": slot["input_uri"],
                             "input_hash": slot["input_hash"], "profile": "hls-abr"},
                            idempotency_key=str(uuid.uuid4()))
        final = wait_for(api, job["job_id"], timeout=180)
        assert final["state"] == "settled"
    renditions = sorted(r["name"] for r in final["plan"]["renditions"])
    assert len(renditions) >= 2
    mine = [lease for lease in recorder.leases if lease["job_id"] == job["job_id"]]
    assert [lease["kind"] for lease in mine] == ["segment", "segment"]
    for lease in mine:
        names = sorted(entry["task"]["rendition"] for entry in lease["tasks"])
        assert names == renditions
        assert {entry["task"]["index"] for entry in lease["tasks"]} == {lease["index"]}
        assert {entry["task"]["input_hash"] for entry in lease["tasks"]} == \
            {lease["input"]["sha256"]}
        assert len({entry["outputs"][0]["url"] for entry in lease["tasks"]}) == len(names)
    events = api.events(job["job_id"])["events"]
    verified = {e["task"]: e["data"]["worker"] for e in events if e["type"] == "segment.verified"}
    assert {task: worker for task, worker in verified.items() if task != "audio"} == {
        f"{r}-{i:05d}": recorder.did for r in renditions for i in (0, 1)}
    submitted = [e["data"] for e in events if e["type"] == "segment.submitted"
                 and e["data"].get("worker") == recorder.did]
    assert {d["renditions_in_run"] for d in submitted} == {len(renditions)}
    assert {d["ffmpeg"] for d in submitted} == {SCRIPT}
    browser.get(api.page_link(job["job_id"])["url"])
    claimed = [row.find_elements(By.TAG_NAME, "td")[-1].text
               for row in browser.find_elements(By.CSS_SELECTOR, "#tasks tr")[1:]]
    assert claimed.count(SCRIPT) == len(submitted)
    assert browser.execute_script("return window.pwned === undefined")
