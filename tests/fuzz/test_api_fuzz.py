"""API fuzzing: schemathesis generates requests for every operation of `GET /openapi.json`
and sends them to a running local stack (its own, without the execution plane: no job runs,
only the control plane answers). Nothing may answer 5xx. Requests are signed as a client
(writes: EIP-712 over the generated body; reads: a session) so that the cases reach the
handlers rather than stopping at authentication; per-operation status counts are printed.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter, defaultdict

import pytest
import schemathesis
from eth_account import Account
from hypothesis import HealthCheck, given, settings

from chalicelib.identity.signing import did_for
from proofline.client import Api
from proofline.devstack import read_state

pytestmark = pytest.mark.stack

EXAMPLES = int(os.environ.get("PROOFLINE_FUZZ_EXAMPLES", 200))
# The action each signed route's signature is for.
ACTIONS = {("POST", "/jobs"): "submit", ("POST", "/jobs/{job_id}/cancel"): "cancel",
           ("POST", "/uploads"): "upload", ("POST", "/uploads/{upload_id}/complete"): "upload",
           ("POST", "/workers"): "register",
           ("POST", "/workers/{did}/heartbeat"): "heartbeat",
           ("POST", "/workers/{did}/lease"): "lease", ("POST", "/tasks/{ref}/result"): "result",
           ("POST", "/tasks/{ref}/release"): "release", ("POST", "/jobs/{job_id}/result"): "result",
           ("POST", "/jobs/{job_id}/release"): "release",
           ("POST", "/jobs/{job_id}/countersign"): "countersign"}
STATUSES: dict[str, Counter] = defaultdict(Counter)


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory):
    """A local stack of its own in a process of its own, with no execution pool."""
    state_dir = tmp_path_factory.mktemp("fuzz-stack")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PROOFLINE_"))}
    process = subprocess.Popen([sys.executable, "-m", "proofline.devstack", "--state-dir",
                                str(state_dir), "--workers", "0"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while (info := read_state(state_dir)) is None:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the fuzzing stack did not start")
        time.sleep(0.5)
    yield info
    process.terminate()
    process.wait(timeout=60)


@pytest.fixture(scope="module")
def caller(fuzz_stack):
    account = Account.create()
    did = did_for(account.address, fuzz_stack.chain_id)
    return Api(fuzz_stack.api_url, signer=(account, did))


def test_no_request_gets_a_server_error(caller, fuzz_stack):
    schema = schemathesis.openapi.from_url(f"{fuzz_stack.api_url}/openapi.json")
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            send(case, caller, fuzz_stack.api_url)

        try:
            fuzz()
        except AssertionError as failure:
            failures.append(str(failure))
    assert not failures, "\n\n".join(failures)


def send(case, caller: Api, url: str) -> None:
    account, did = caller.signer
    route = (case.operation.method.upper(), case.operation.path)
    if "did" in (case.path_parameters or {}):
        case.path_parameters["did"] = did                 # its own record, not a stranger's
    if isinstance(case.body, dict) and "did" in case.body:
        case.body["did"] = did
    headers = {}
    if route in ACTIONS:
        try:
            headers = caller.sign(account, did, ACTIONS[route], case.body)
        except (TypeError, ValueError):
            headers = {}                                   # a body no JSON signer can hash
    elif any("session" in s for s in case.operation.definition.raw.get("security", [])):
        headers = caller.session_headers()
    response = case.call(base_url=url, headers=headers, timeout=30)
    if route == ("DELETE", "/sessions"):
        caller.forget_session()                            # it may just have revoked it
    STATUSES[f"{route[0]} {route[1]}"][response.status_code] += 1
    assert response.status_code < 500, f"{case.operation.label}: {response.status_code} " \
                                       f"{response.text[:500]}\n{str(case.body)[:500]}"


def test_every_operation_was_fuzzed_and_most_cases_got_past_authentication():
    """Runs after the fuzzing above (same module, in order): the figures in one table."""
    assert STATUSES, "the fuzzing test did not run"
    print("\noperation".ljust(44), "cases", "statuses")
    past = total = 0
    for label in sorted(STATUSES):
        counts = STATUSES[label]
        print(label.ljust(43), str(sum(counts.values())).rjust(5),
              " ".join(f"{status}:{n}" for status, n in sorted(counts.items())))
        total += sum(counts.values())
        past += sum(n for status, n in counts.items() if status not in (401, 403))
    print(f"{past}/{total} cases got past authentication")
    assert past >= total / 2
