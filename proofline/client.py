"""A small client for the Proofline HTTP API (what the CLI, the demo and tests use)."""
from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import requests
from eth_account.messages import encode_defunct
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from chalicelib.identity.sessions import sign_in_message
from chalicelib.identity.signing import Domain, sign_request
from chalicelib.media.probe import sha256_file

from .devstack import read_state

TERMINAL = {"settled", "failed", "cancelled", "rejected"}


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str, details: Any = None):
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message, self.details = status, reason, message, details


class NoStack(Exception):
    pass


def resolve_api_url(explicit: str | None = None, state_dir: Path = Path(".proofline")) -> str:
    if explicit or os.environ.get("PROOFLINE_API_URL"):
        return (explicit or os.environ["PROOFLINE_API_URL"]).rstrip("/")
    info = read_state(state_dir)
    if info is None:
        raise NoStack("no local stack is running here: run `proofline dev up`, "
                      "or set PROOFLINE_API_URL / --api")
    return info.api_url


# Answers after which a read signs in afresh and tries once more: the token lapsed, was
# revoked or rotated away, or the gateway's authorizer turned it down.
_STALE_SESSION = {"session_expired", "session_revoked", "session_invalid", "unauthorized",
                  "forbidden", "missing_session"}
_REFRESH_S = 60


class Api:
    def __init__(self, base_url: str, timeout: float = 30, signer=None, reader=None):
        """`signer`: (eth-account LocalAccount, its did:pkh) to sign writes (submit, cancel,
        uploads); `reader`: the identity that signs in for reads (default: the signer)."""
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.signer = signer
        self.reader = reader or signer
        self._session: dict | None = None
        self._session_lock = threading.Lock()
        self._signing: dict | None = None
        self._http = requests.Session()
        # Connection failures only: a POST is safe to resend because it carries its
        # Idempotency-Key; an answer from the server is never retried here.
        self._http.mount("http://", HTTPAdapter(max_retries=Retry(
            connect=3, read=0, status=0, backoff_factor=0.5, allowed_methods=None)))
        self._http.mount("https://", self._http.get_adapter("http://"))

    def submit(self, manifest: dict, *, idempotency_key: str | None = None) -> tuple[dict, bool]:
        """POST /jobs; returns (job, created). One key per logical submission, reused on
        retries, so a retried request can never make a second job. Signed (EIP-712) when
        the client has a `signer`: the job's client is then the signer's DID."""
        key = idempotency_key or str(uuid.uuid4())
        response = self._request("POST", "/jobs", json=manifest,
                                 headers={"Idempotency-Key": key,
                                          **self._signature("submit", manifest)})
        return response.json(), response.status_code == 201

    def _signature(self, action: str, body: dict) -> dict[str, str]:
        if self.signer is None:
            return {}
        account, did = self.signer
        return self.sign(account, did, action, body)

    def sign(self, account, did: str, action: str, body: dict, **options) -> dict[str, str]:
        """EIP-712 headers for a request to this stage (its domain from `GET /health`)."""
        if self._signing is None:
            self._signing = self.health()["signing"]
        return sign_request(account, action=action, did=did, body=body,
                            domain=Domain.from_json(self._signing, did), **options)

    # -- workers: every call that acts for a worker carries its EIP-712 signature headers
    def register_worker(self, body: dict, signature: dict[str, str]) -> dict:
        return self._request("POST", "/workers", json=body, headers=signature).json()

    def heartbeat(self, did: str, body: dict, signature: dict[str, str]) -> dict:
        return self._request("POST", f"/workers/{did}/heartbeat", json=body,
                             headers=signature).json()

    def lease(self, did: str, body: dict, signature: dict[str, str]) -> dict | None:
        return self._request("POST", f"/workers/{did}/lease", json=body,
                             headers=signature).json()["lease"]

    def submit_result(self, task_ref: str, body: dict, signature: dict[str, str]) -> dict:
        return self._request("POST", f"/tasks/{task_ref}/result", json=body,
                             headers=signature).json()

    def submit_job_result(self, job_id: str, body: dict, signature: dict[str, str]) -> dict:
        return self._request("POST", f"/jobs/{job_id}/result", json=body,
                             headers=signature).json()

    def countersign(self, job_id: str, body: dict, signature: dict[str, str]) -> dict:
        return self._request("POST", f"/jobs/{job_id}/countersign", json=body,
                             headers=signature).json()

    def release_job(self, job_id: str, body: dict, signature: dict[str, str]) -> dict:
        return self._request("POST", f"/jobs/{job_id}/release", json=body,
                             headers=signature).json()

    def release(self, task_ref: str, body: dict, signature: dict[str, str]) -> dict:
        return self._request("POST", f"/tasks/{task_ref}/release", json=body,
                             headers=signature).json()

    # -- reads: a session from Sign-In with Ethereum, made when first needed ----------------
    def sign_in(self, lifetime_s: int | None = None) -> dict:
        """POST /sessions with a fresh EIP-4361 message signed by the reader's key."""
        if self.reader is None:
            raise ApiError(401, "missing_session", "reads need an identity to sign in with")
        account, did = self.reader
        health = self.health()
        message = sign_in_message(account.address, domain=health["sign_in"]["domain"],
                                  uri=self.base_url, chain_id=int(did.split(":")[3]))
        body = {"message": message,
                "signature": account.sign_message(encode_defunct(text=message))
                .signature.to_0x_hex(), **({"lifetime_s": lifetime_s} if lifetime_s else {})}
        self._session = self._request("POST", "/sessions", json=body).json()
        return self._session

    def sign_out(self) -> dict:
        """Revoke every session of the reader (this one included)."""
        revoked = self._read("DELETE", "/sessions").json()
        self.forget_session()
        return revoked

    def forget_session(self) -> None:
        """Drop the cached session (revoked elsewhere, say): the next read signs in anew."""
        with self._session_lock:
            self._session = None

    def session_headers(self) -> dict[str, str]:
        """`Authorization` for a read, signing in first when there is no fresh session."""
        return {"Authorization": f"Bearer {self._current_session()['token']}"}

    def _current_session(self) -> dict:
        with self._session_lock:
            session = self._session
            if session is None or session["expires_at"] - time.time() < _REFRESH_S:
                session = self.sign_in()
            return session

    def _read(self, method: str, path: str, **kwargs) -> requests.Response:
        for attempt in (1, 2):
            session = self._current_session()
            try:
                return self._request(method, path, headers={
                    "Authorization": f"Bearer {session['token']}"}, **kwargs)
            except ApiError as error:
                if attempt == 2 or error.reason not in _STALE_SESSION:
                    raise
                with self._session_lock:
                    if self._session is session:
                        self._session = None

    def page_link(self, job_id: str) -> dict:
        """A one-time link that signs a browser in to the job's page: `{url, expires_at}`."""
        link = self._read("POST", "/ui/links", json={"job_id": job_id}).json()
        return {**link, "url": self.base_url + link["path"]}

    def workers(self, limit: int = 1000) -> list[dict]:
        """The registry (an operator's read), following the pages' cursors."""
        return self._pages("/workers", "workers", {}, limit)

    def worker(self, did: str) -> dict:
        return self._read("GET", f"/workers/{did}").json()

    def job(self, job_id: str) -> dict:
        return self._read("GET", f"/jobs/{job_id}").json()

    def package(self, job_id: str) -> dict:
        return self._read("GET", f"/jobs/{job_id}/package").json()

    def inputs(self, job_id: str) -> dict:
        """Short-lived links to the job's source and each of its source segments."""
        return self._read("GET", f"/jobs/{job_id}/inputs").json()

    def events(self, job_id: str) -> dict:
        return self._read("GET", f"/jobs/{job_id}/events").json()

    def jobs(self, state: str | None = None, limit: int = 50,
             client: str | None = None) -> list[dict]:
        """The newest `limit` jobs (summaries), following the pages' cursors."""
        params = {**({"state": state} if state else {}), **({"client": client} if client else {})}
        return self._pages("/jobs", "jobs", params, limit)

    def _pages(self, path: str, key: str, params: dict, limit: int) -> list[dict]:
        """Up to `limit` items of a paged list, following each page's `next` cursor."""
        found: list[dict] = []
        cursor = None
        while len(found) < limit:
            page = self._read("GET", path, params={
                **params, "limit": min(500, limit - len(found)),
                **({"cursor": cursor} if cursor else {})}).json()
            found += page[key]
            cursor = page.get("next")
            if not cursor:
                break
        return found

    def cancel(self, job_id: str) -> dict:
        return self._request("POST", f"/jobs/{job_id}/cancel",
                             headers=self._signature("cancel", {"job_id": job_id})).json()

    def settlement_drift(self) -> list[dict]:
        return self._read("GET", "/settlement/drift").json()["drift"]

    def health(self) -> dict:
        return self._request("GET", "/health").json()

    def deep_health(self) -> dict:
        """`GET /health?deep=1`, signed in as the reader (an operator): the stage's
        server-side checks, `{ok, stage, checks: [{name, ok, detail}]}`."""
        return self._read("GET", "/health", params={"deep": "1"}).json()

    def quote(self, request: dict) -> dict:
        """What a job would be charged on this stage, in its payment token (POST /quotes)."""
        return self._request("POST", "/quotes", json=request).json()

    def upload(self, path: Path, *, wait_s: float = 120, private: bool = False) -> dict:
        """Upload a local input (signed, as the job's client will be), then wait until the
        control plane has hashed and promoted it; skipped when this client already holds
        those bytes. A `private` object stays private in every job over it. Returns the
        slot: `input_uri` and `input_hash` for a manifest."""
        body = {"sha256": sha256_file(path), "size": path.stat().st_size,
                **({"data_sensitivity": "private"} if private else {})}
        slot = self._request("POST", "/uploads", json=body,
                             headers=self._signature("upload", body)).json()
        if slot.get("parts"):
            self._upload_parts(path, slot)
        elif slot["upload_url"] is None:
            return slot
        else:
            self._put_whole(path, slot, body["size"])
        deadline = time.monotonic() + wait_s
        while True:
            state = self._read("GET", f"/uploads/{slot['upload_id']}").json()
            if state["state"] == "ready":
                return {**slot, "state": "ready"}
            if state["state"] == "failed":
                raise ApiError(422, state.get("reason") or "upload_failed",
                               f"the upload of {path} was refused")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the upload of {path} was not promoted in {wait_s} s")
            time.sleep(0.2)

    def _put_whole(self, path: Path, slot: dict, size: int) -> None:
        with open(path, "rb") as data:
            # An empty file object would go out chunked, against the signed Content-Length.
            put = self._http.put(slot["upload_url"], data=data if size else b"",
                                 headers=slot["upload_headers"], timeout=self.timeout * 10)
        put.raise_for_status()

    def _upload_parts(self, path: Path, slot: dict) -> None:
        """A multipart upload: each part PUT to its own URL, then the list of ETags."""
        done = []
        with open(path, "rb") as data:
            for part in slot["parts"]:
                data.seek((part["part_number"] - 1) * slot["part_bytes"])
                put = self._http.put(part["url"], data=data.read(part["size"]),
                                     timeout=self.timeout * 10)
                put.raise_for_status()
                done.append({"part_number": part["part_number"], "etag": put.headers["ETag"]})
        body = {"upload_id": slot["upload_id"], "parts": done}
        self._request("POST", f"/uploads/{slot['upload_id']}/complete", json=body,
                      headers=self._signature("upload", body))

    def follow(self, job_id: str, *, poll_s: float = 0.5, timeout_s: float = 600) -> Iterator[dict]:
        """Yield the job's events as they happen, until it reaches a terminal state."""
        seen, deadline = 0, time.monotonic() + timeout_s
        while True:
            timeline = self.events(job_id)
            for event in timeline["events"][seen:]:
                yield event
            seen = len(timeline["events"])
            if timeline["state"] in TERMINAL:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {timeline['state']} after {timeout_s}s")
            time.sleep(poll_s)

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        response = self._http.request(method, self.base_url + path, timeout=self.timeout, **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"message": response.text[:500]}
            # The gateway's own refusals (no token, a token its authorizer denied) carry a
            # message and no reason code.
            gateway = {401: "unauthorized", 403: "forbidden"}.get(response.status_code,
                                                                  "http_error")
            raise ApiError(response.status_code, body.get("reason", gateway),
                           body.get("message", body.get("Message", "")), body.get("details"))
        return response
