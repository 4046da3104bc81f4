"""The authorization matrix: every route of the Chalice app × six callers, against a literal
table of the statuses each must get. A route added without a row here fails the suite.

Callers: nobody (no credentials), client A (owns the job and the upload), client B (a
stranger with its own key), worker A (named in the worker paths), worker B, and an operator.
A session route is called with the caller's session; a signed route with the caller's own
signature over a request that targets A's job, upload or worker record. Statuses that are not
401/403/404 (a 409 for a settled job, a 404 for no such task) show the caller got past the
owner rule and met the resource's own state. This is the local stage, which accepts unsigned
submits and uploads (owned by nobody, so they may name only inputs uploaded unsigned).
"""
from __future__ import annotations

import time
import uuid

import pytest
import requests
from eth_account import Account
from eth_account.messages import encode_defunct

from chalicelib.identity import access, sessions
from chalicelib.identity.signing import did_for
from proofline.client import Api
from tests.conftest import OPERATOR, stage_signed, wait_for

pytestmark = pytest.mark.stack

ROLES = ("nobody", "client_a", "client_b", "worker_a", "worker_b", "operator")

# (method, path): statuses for nobody, client A, client B, worker A, worker B, operator.
# Worker A holds no lease on A's job and is not its payee: its result, release and
# countersign are refused as well (not_your_job), like everyone else's (wrong_signer).
EXPECTED = {
    ("GET", "/health"):                     (200, 200, 200, 200, 200, 200),
    ("GET", "/openapi.json"):               (200, 200, 200, 200, 200, 200),
    ("GET", "/status.json"):                (200, 200, 200, 200, 200, 200),
    ("GET", "/status"):                     (200, 200, 200, 200, 200, 200),
    ("POST", "/quotes"):                    (400, 400, 400, 400, 400, 400),   # no body: refused
    ("POST", "/sessions"):                  (400, 201, 201, 201, 201, 201),
    ("DELETE", "/sessions"):                (401, 200, 200, 200, 200, 200),
    ("POST", "/jobs"):                      (403, 201, 403, 403, 403, 403),
    ("GET", "/jobs"):                       (401, 200, 200, 200, 200, 200),
    ("GET", "/jobs/{job_id}"):              (401, 200, 404, 404, 404, 200),
    ("GET", "/jobs/{job_id}/package"):      (401, 409, 404, 404, 404, 409),
    ("GET", "/jobs/{job_id}/inputs"):       (401, 200, 404, 404, 404, 200),
    ("GET", "/jobs/{job_id}/events"):       (401, 200, 404, 404, 404, 200),
    ("POST", "/jobs/{job_id}/cancel"):      (401, 409, 403, 403, 403, 409),
    ("POST", "/uploads"):                   (201, 201, 201, 201, 201, 201),
    ("GET", "/uploads/{upload_id}"):        (401, 200, 404, 404, 404, 200),
    ("POST", "/uploads/{upload_id}/complete"): (401, 404, 403, 403, 403, 403),
    ("POST", "/workers"):                   (401, 403, 403, 409, 403, 403),
    ("GET", "/workers"):                    (401, 403, 403, 403, 403, 200),
    ("GET", "/workers/{did}"):              (401, 403, 403, 200, 403, 200),
    ("POST", "/workers/{did}/heartbeat"):   (401, 403, 403, 200, 403, 403),
    ("POST", "/workers/{did}/lease"):       (401, 403, 403, 200, 403, 403),
    ("POST", "/tasks/{ref}/result"):        (401, 403, 403, 404, 403, 403),
    ("POST", "/tasks/{ref}/release"):       (401, 403, 403, 404, 403, 403),
    ("POST", "/jobs/{job_id}/result"):      (401, 403, 403, 403, 403, 403),
    ("POST", "/jobs/{job_id}/release"):     (401, 403, 403, 403, 403, 403),
    ("POST", "/jobs/{job_id}/countersign"): (401, 403, 403, 403, 403, 403),
    ("GET", "/settlement/drift"):           (401, 403, 403, 403, 403, 200),
    ("POST", "/ui/links"):                  (401, 201, 404, 404, 404, 201),
    # Each caller in a page session of its own (opened on a job of its own, the operator's
    # on A's): A's job is a settled probe, so it has no playlist and cannot be cancelled.
    ("GET", "/ui/jobs/{job_id}"):           (401, 200, 404, 404, 404, 200),
    ("GET", "/ui/jobs/{job_id}/playlist"):  (401, 409, 404, 404, 404, 409),
    ("POST", "/ui/jobs/{job_id}/cancel"):   (401, 409, 404, 404, 404, 409),
    ("POST", "/ui/sign-out"):               (401, 200, 200, 200, 200, 200),
    ("GET", "/ui/assets/{name}"):           (200, 200, 200, 200, 200, 200),
}


def app_routes() -> set[tuple[str, str]]:
    import app
    return {(method, path) for path, methods in app.app.routes.items() for method in methods}


def test_every_route_has_a_row_here_and_a_rule_in_the_code():
    assert app_routes() == set(EXPECTED) == set(access.ROUTES)


class World:
    """The callers and what they act on."""

    def __init__(self, stack, api, clip):
        self.url, self.chain = stack.info.api_url, stack.info.chain_id
        keys = {role: Account.create() for role in ROLES if role not in ("nobody", "operator")}
        keys["operator"] = OPERATOR
        self.accounts = keys
        self.dids = {role: did_for(a.address, self.chain) for role, a in keys.items()}
        self.apis = {role: Api(self.url, signer=(a, self.dids[role])) for role, a in keys.items()}
        a = self.apis["client_a"]
        self.upload = a.upload(clip)
        job, _ = a.submit({"kind": "media_probe", "input_uri": self.upload["input_uri"]})
        self.job_id = wait_for(a, job["job_id"], timeout=90)["job_id"]
        self.upload_id = self._own_upload_id(clip)
        self.worker_a = self.dids["worker_a"]
        self.own_jobs: dict[str, str] = {}
        self.claims = {"job_classes": ["media_probe"], "region": "us-east-1",
                       "price_per_unit": {"media_probe": "0.001"}}
        self._sign("worker_a", "register", {"did": self.worker_a, "claims": self.claims},
                   "POST", "/workers")

    def _own_upload_id(self, clip) -> str:
        """An upload record of A's (its first upload of the clip may have been skipped)."""
        body = {"sha256": "sha256:" + uuid.uuid4().hex * 2, "size": 10}
        response = self._sign("client_a", "upload", body, "POST", "/uploads")
        return response.json()["upload_id"]

    def _sign(self, role, action, body, method, path) -> requests.Response:
        headers = {}
        if role != "nobody":
            headers = stage_signed(self.accounts[role], action=action, did=self.dids[role],
                                   body=body, chain_id=self.chain)
        return requests.request(method, self.url + path, json=body, headers=headers,
                                timeout=30)

    def _session(self, role, method, path) -> requests.Response:
        headers = {} if role == "nobody" else self.apis[role].session_headers()
        return requests.request(method, self.url + path, headers=headers, timeout=30)

    def call(self, role: str, method: str, template: str) -> requests.Response:
        task = f"{self.job_id}~seg-00000"              # A's job has no such task
        path = template.format(job_id=self.job_id, did=self.worker_a, ref=task, name="job.js",
                               upload_id=self.upload_id)
        rule = access.ROUTES[(method, template)]
        if (method, template) == ("POST", "/sessions"):
            return self._sign_in(role)
        if (method, template) == ("POST", "/ui/links"):
            headers = {} if role == "nobody" else self.apis[role].session_headers()
            return requests.post(self.url + path, json={"job_id": self.job_id},
                                 headers=headers, timeout=30)
        if rule.proof is access.Proof.PAGE:
            return self._page(role, method, path)
        if rule.proof is access.Proof.SESSION or rule.proof is access.Proof.NONE:
            return self._session(role, method, path)
        a = self.worker_a
        body, action = {
            "/jobs": ({"kind": "media_probe", "input_uri": self.upload["input_uri"]}, "submit"),
            "/jobs/{job_id}/cancel": ({"job_id": self.job_id}, "cancel"),
            "/uploads": ({"sha256": "sha256:" + uuid.uuid4().hex * 2, "size": 10}, "upload"),
            "/uploads/{upload_id}/complete": ({"upload_id": self.upload_id, "parts": [
                {"part_number": 1, "etag": "x"}]}, "upload"),
            "/workers": ({"did": a, "claims": self.claims}, "register"),
            "/workers/{did}/heartbeat": ({"did": a, "health": {}}, "heartbeat"),
            "/workers/{did}/lease": ({"did": a}, "lease"),
            "/tasks/{ref}/result": ({"did": a, "task_ref": task, "attempt": 1,
                                     "output": {"sha256": "sha256:" + "0" * 64,
                                                "size_bytes": 1}}, "result"),
            "/tasks/{ref}/release": ({"did": a, "task_ref": task, "reason": "x"}, "release"),
            "/jobs/{job_id}/result": ({"did": a, "job_id": self.job_id, "attempt": 1,
                                       "output": {"sha256": "sha256:" + "0" * 64,
                                                  "size_bytes": 1}}, "result"),
            "/jobs/{job_id}/release": ({"did": a, "job_id": self.job_id, "attempt": 1,
                                        "reason": "x"}, "release"),
            "/jobs/{job_id}/countersign": ({"did": a, "job_id": self.job_id,
                                            "signature": "0x" + "00" * 65}, "countersign"),
        }[template]
        return self._sign(role, action, body, method, path)

    def _page(self, role, method, path) -> requests.Response:
        """In a page session of the caller's own: a one-time link to a job it may read (A's
        for A and the operator, one of its own for the others), and the page's CSRF token."""
        http, form = requests.Session(), {"csrf": "none"}
        if role != "nobody":
            own = self.job_id if role in ("client_a", "operator") else self._own_job(role)
            opened = http.get(self.apis[role].page_link(own)["url"], timeout=30)
            form["csrf"] = opened.text.split("name=csrf value='", 1)[1].split("'", 1)[0]
        if path.endswith("/playlist"):
            path += "?path=master.m3u8"
        return http.request(method, self.url + path, timeout=30,
                            data=form if method == "POST" else None)

    def _own_job(self, role) -> str:
        """A job of the caller's own that waits for its escrow (it never runs)."""
        if role not in self.own_jobs:
            job, _ = self.apis[role].submit({
                "kind": "generate_small", "prompt": "hello", "max_price": "0.05",
                "payment_policy": "escrow_before_start", "payment_token": "PUSD"})
            self.own_jobs[role] = job["job_id"]
        return self.own_jobs[role]

    def _sign_in(self, role) -> requests.Response:
        if role == "nobody":
            return requests.post(self.url + "/sessions", json={"message": "let me in"},
                                 timeout=30)
        account = self.accounts[role]
        message = sessions.sign_in_message(account.address, domain="proofline-local",
                                           uri=self.url, chain_id=self.chain)
        signature = account.sign_message(encode_defunct(text=message)).signature.to_0x_hex()
        return requests.post(self.url + "/sessions", timeout=30,
                             json={"message": message, "signature": signature})


@pytest.fixture(scope="module")
def world(stack, api, clip) -> World:
    return World(stack, api, clip)


def test_each_caller_gets_exactly_what_the_table_says(world):
    # Revoking sessions goes last: it signs each caller out.
    order = sorted(EXPECTED, key=lambda route: route == ("DELETE", "/sessions"))
    got, wrong = {}, []
    for method, path in order:
        answers = [world.call(role, method, path) for role in ROLES]
        got[(method, path)] = tuple(a.status_code for a in answers)
        if got[(method, path)] != EXPECTED[(method, path)]:
            reasons = [a.json().get("reason", a.json().get("message")) if a.content else ""
                       for a in answers]
            wrong.append(f"{method} {path}: expected {EXPECTED[(method, path)]}, "
                         f"got {got[(method, path)]} {reasons}")
    for api in world.apis.values():
        api.forget_session()                  # signed out above; the next read signs in
    assert not wrong, "\n".join(wrong)


def test_client_b_never_sees_client_as_manifest_outputs_or_links(world):
    b = world.apis["client_b"]
    listed = b.jobs(limit=500)
    assert world.job_id not in {j["job_id"] for j in listed}
    for path in (f"/jobs/{world.job_id}", f"/jobs/{world.job_id}/events",
                 f"/jobs/{world.job_id}/package"):
        response = requests.get(world.url + path, headers=b.session_headers(), timeout=30)
        assert response.status_code == 404
        assert world.upload["input_uri"] not in response.text
        assert "download_url" not in response.text and "X-Amz" not in response.text
    mine = world.apis["client_a"].job(world.job_id)
    assert mine["outputs"] and all(o["download_url"] for o in mine["outputs"])


def test_a_revoked_session_is_refused_and_a_new_sign_in_works(world):
    b = world.apis["client_b"]
    headers = b.session_headers()
    assert requests.get(world.url + "/jobs", headers=headers, timeout=30).status_code == 200
    b.sign_out()
    refused = requests.get(world.url + "/jobs", headers=headers, timeout=30)
    assert (refused.status_code, refused.json()["reason"]) == (401, "session_revoked")
    assert all(j["client_did"] == world.dids["client_b"] for j in b.jobs())


def test_an_operator_may_revoke_anyones_sessions_and_nobody_else_may(world):
    target = world.dids["client_a"]
    stranger = world.apis["client_b"]
    response = requests.delete(world.url + "/sessions", params={"did": target},
                               headers=stranger.session_headers(), timeout=30)
    assert (response.status_code, response.json()["reason"]) == (403, "operator_only")
    operator = world.apis["operator"]
    response = requests.delete(world.url + "/sessions", params={"did": target},
                               headers=operator.session_headers(), timeout=30)
    assert response.status_code == 200 and response.json()["did"] == target


def test_the_gateway_turns_away_a_token_this_stage_did_not_sign(world):
    """The authorizer runs before the handler (as API Gateway runs it when deployed)."""
    ring = sessions.KeyRing.generate()
    forged, _ = sessions.issue(ring, world.dids["operator"], audience="proofline-local",
                               now=time.time())
    for token in (forged, "not-a-jwt"):
        response = requests.get(world.url + "/workers", timeout=30,
                                headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 403
    assert requests.get(world.url + "/workers", timeout=30).status_code == 401
