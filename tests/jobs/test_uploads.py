"""Inputs a client owns: uploads bound to their content through quarantine, and jobs that may
name only their own client's inputs. Each attack is made as the attacker would make it: a
second client with its own key, against the running stack."""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid

import pytest
import requests
from eth_account import Account

from chalicelib.aws.blobs import S3Uri
from chalicelib.identity.signing import did_for
from chalicelib.jobs.uploads import QUARANTINE
from proofline.client import Api, ApiError
from tests.conftest import INTAKE, drop, stage_signed, wait_for

pytestmark = pytest.mark.stack

ARTIFACTS = "proofline-local-artifacts"


def new_client(stack) -> Api:
    account = Account.create()
    return Api(stack.info.api_url, signer=(account, did_for(account.address,
                                                            stack.info.chain_id)))


@pytest.fixture
def alice(stack) -> Api:
    return new_client(stack)


@pytest.fixture
def mallory(stack) -> Api:
    return new_client(stack)


def texts_file(tmp_path, name="texts.jsonl") -> tuple:
    path = tmp_path / name
    path.write_text("".join(json.dumps({"text": f"private line {i} {uuid.uuid4()}"}) + "\n"
                            for i in range(3)))
    return path, "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def slot(api: Api, sha: str, size: int) -> dict:
    """POST /uploads as `api`'s signer, without putting anything."""
    body = {"sha256": sha, "size": size}
    response = requests.post(f"{api.base_url}/uploads", json=body, timeout=10,
                             headers=api._signature("upload", body))
    assert response.status_code == 201, response.text
    return response.json()


def settled_upload(api: Api, upload_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = api._read("GET", f"/uploads/{upload_id}").json()
        if state["state"] != "pending" or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def tags(aws, uri: str) -> dict:
    s3 = S3Uri.parse(uri)
    return {t["Key"]: t["Value"]
            for t in aws.s3.get_object_tagging(Bucket=s3.bucket, Key=s3.key)["TagSet"]}


def test_an_upload_is_promoted_only_after_it_is_hashed_and_then_needs_no_second_put(
        alice, aws, tmp_path):
    path, sha = texts_file(tmp_path)
    first = alice.upload(path)
    assert first["state"] == "ready" and first["input_hash"] == sha
    assert first["upload_url"] and QUARANTINE in first["upload_url"]   # quarantine, not content
    stored = S3Uri.parse(first["input_uri"])
    body = aws.s3.get_object(Bucket=stored.bucket, Key=stored.key)["Body"].read()
    assert body == path.read_bytes()
    assert tags(aws, first["input_uri"]) == {"proofline-used": "false"}
    # The quarantine copy is gone once promoted.
    assert aws.s3.list_objects_v2(Bucket=INTAKE, Prefix=f"{QUARANTINE}{first['upload_id']}"
                                  ).get("KeyCount") == 0
    again = alice.upload(path)
    assert again["upload_url"] is None and again["input_uri"] == first["input_uri"]

    job, _ = alice.submit({"kind": "embed_batch", "input_uri": first["input_uri"]})
    assert job["manifest"]["input_hash"] == sha
    assert tags(aws, first["input_uri"]) == {"proofline-used": "true"}


def test_garbage_under_someone_elses_hash_is_refused_and_never_reaches_the_content_key(
        alice, mallory, aws, tmp_path):
    path, sha = texts_file(tmp_path)
    size = path.stat().st_size
    # Mallory learns the hash of a file Alice is about to upload and gets there first.
    poisoned = slot(mallory, sha, size)
    assert poisoned["upload_url"] is not None                # knowing a hash proves nothing
    put = requests.put(poisoned["upload_url"], data=b"x" * size,
                       headers={"Content-Length": str(size)}, timeout=10)
    assert put.status_code == 200
    refused = settled_upload(mallory, poisoned["upload_id"])
    assert (refused["state"], refused["reason"]) == ("failed", "input_hash_mismatch")
    content = S3Uri.parse(poisoned["input_uri"])
    assert aws.s3.list_objects_v2(Bucket=content.bucket, Prefix=content.key).get("KeyCount") == 0

    # Alice's own upload goes through, and a late PUT through Mallory's old URL changes nothing.
    mine = alice.upload(path)
    requests.put(poisoned["upload_url"], data=b"y" * size, timeout=10)
    job, _ = alice.submit({"kind": "embed_batch", "input_uri": mine["input_uri"]})
    done = wait_for(alice, job["job_id"], timeout=120)
    assert done["state"] == "settled", done.get("reason")
    body = aws.s3.get_object(Bucket=content.bucket, Key=content.key)["Body"].read()
    assert body == path.read_bytes()


def test_bytes_other_than_the_declared_size_fail_the_upload(alice, tmp_path):
    path, sha = texts_file(tmp_path)
    declared = slot(alice, sha, 10)                         # declared 10 bytes, sends more
    requests.put(declared["upload_url"], data=path.read_bytes(), timeout=10)
    assert settled_upload(alice, declared["upload_id"])["reason"] == "input_hash_mismatch"


@pytest.mark.parametrize("body, status, reason", [
    ({"sha256": "abc", "size": 3}, 400, "invalid_value"),
    ({"sha256": "sha256:" + "0" * 64}, 400, "invalid_value"),
    ({"sha256": "sha256:" + "0" * 64, "size": 3, "owner": "me"}, 400, "invalid_value"),
    ({"sha256": "sha256:" + "0" * 64, "size": "3"}, 400, "invalid_value"),
    ({"sha256": "sha256:" + "0" * 64, "size": -1}, 400, "invalid_value"),
    ({"sha256": "sha256:" + "0" * 64, "size": 20 * 2**30}, 422, "input_too_large"),
])
def test_an_upload_request_is_strict(alice, body, status, reason):
    response = requests.post(f"{alice.base_url}/uploads", json=body, timeout=10,
                             headers=alice._signature("upload", body))
    assert (response.status_code, response.json()["reason"]) == (status, reason)


def test_a_job_may_name_only_its_own_clients_input(alice, mallory, aws, stack, tmp_path):
    path, _ = texts_file(tmp_path)
    victim = alice.upload(path)
    # Mallory names Alice's private texts as the input of its own job: refused at the door.
    with pytest.raises(ApiError) as stolen:
        mallory.submit({"kind": "embed_batch", "input_uri": victim["input_uri"]})
    assert (stolen.value.status, stolen.value.reason) == (403, "input_not_yours")
    # Nor may it look at Alice's upload.
    with pytest.raises(ApiError) as peek:
        mallory._read("GET", f"/uploads/{victim['upload_id']}")
    assert peek.value.status == 404
    # Nor any other object the platform can read: a drop, a challenge clip, any key.
    dropped_key = f"intake/media_probe/{uuid.uuid4().hex}.bin"
    aws.s3.put_object(Bucket=INTAKE, Key=dropped_key + ".job.json", Body=b"{}")
    for uri in (f"s3://{INTAKE}/{dropped_key}", f"s3://{ARTIFACTS}/challenges/media/x.mp4",
                f"s3://{ARTIFACTS}/outputs/sha256/{'0' * 64}/probe.json",
                f"s3://{INTAKE}/{QUARANTINE}{victim['upload_id']}"):
        with pytest.raises(ApiError) as other:
            mallory.submit({"kind": "media_probe", "input_uri": uri})
        assert (other.value.status, other.value.reason) == (403, "input_not_yours"), uri
    # Once Mallory uploads the same bytes itself, it holds them and may use them.
    mine = mallory.upload(path)
    assert mine["upload_url"] is not None and mine["input_uri"] == victim["input_uri"]
    job, created = mallory.submit({"kind": "embed_batch", "input_uri": mine["input_uri"]})
    assert created


def test_a_drop_belongs_to_the_client_its_prefix_is_mapped_to(aws, api, stack, clip):
    """Here intake/ is mapped to the stack's development client: its drop is its job, and a
    sidecar cannot name another client."""
    client = Account.from_key(stack.info.dev_keys["client"])
    owner = did_for(client.address, stack.info.chain_id)
    key = f"intake/media_probe/{uuid.uuid4().hex}.mp4"
    aws.s3.put_object(Bucket=INTAKE, Key=key + ".job.json",
                      Body=json.dumps({"kind": "media_probe",
                                       "client_did": did_for(Account.create().address,
                                                             stack.info.chain_id)}).encode())
    job_id, _ = drop(aws, key, path=clip)
    job = wait_for(api, job_id, timeout=60)
    assert job["manifest"]["client_did"] == owner
    reader = Api(stack.info.api_url, signer=(client, owner))
    assert reader.job(job_id)["job_id"] == job_id
    assert job_id in {j["job_id"] for j in reader.jobs(limit=500)}
    # The client may name its own dropped object as the input of a job over HTTP.
    again, _ = reader.submit({"kind": "media_probe", "input_uri": f"s3://{INTAKE}/{key}"})
    assert again["manifest"]["client_did"] == owner


def test_an_unsigned_manifest_cannot_name_a_client(api, stack, clip):
    slot_ = api.upload(clip)
    victim = did_for(Account.create().address, stack.info.chain_id)
    with pytest.raises(ApiError) as named:
        api.submit({"kind": "media_probe", "input_uri": slot_["input_uri"],
                    "client_did": victim})
    assert (named.value.status, named.value.reason) == (401, "missing_signature")


def test_an_upload_signature_is_bound_to_its_hash_and_size(alice, tmp_path):
    path, sha = texts_file(tmp_path)
    account, did = alice.signer
    signed = stage_signed(account, action="upload", did=did,
                          body={"sha256": sha, "size": 10}, chain_id=int(did.split(":")[3]))
    response = requests.post(f"{alice.base_url}/uploads", json={"sha256": sha, "size": 11},
                             headers=signed, timeout=10)
    assert (response.status_code, response.json()["reason"]) == (403, "wrong_signer")


def test_a_large_upload_goes_in_parts_and_is_hashed_whole(alice, aws, tmp_path):
    """Past the single-PUT limit (5 GB deployed; 8 MiB on this stack) an upload is multipart:
    a URL per part bound to its length, then the ETags; promoted only once hashed whole."""
    path = tmp_path / "large.bin"
    path.write_bytes(os.urandom(11 * 2**20))
    sha = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    planned = slot(alice, sha, path.stat().st_size)
    assert [p["size"] for p in planned["parts"]] == [5 * 2**20, 5 * 2**20, 2**20]
    done = alice.upload(path)
    assert done["state"] == "ready" and done["input_hash"] == sha
    stored = S3Uri.parse(done["input_uri"])
    assert aws.s3.head_object(Bucket=stored.bucket, Key=stored.key)["ContentLength"] == 11 * 2**20

    # Parts of other bytes under the same claim: first a wrong ETag (a 400 with a reason,
    # not a 500), then the parts as sent: assembled, hashed, refused.
    forged = slot(alice, "sha256:" + "ab" * 32, path.stat().st_size)
    etags = [{"part_number": p["part_number"],
              "etag": requests.put(p["url"], data=b"z" * p["size"], timeout=30).headers["ETag"]}
             for p in forged["parts"]]
    for parts, status in (([{"part_number": 1, "etag": '"nope"'}], 400), (etags, 202)):
        body = {"upload_id": forged["upload_id"], "parts": parts}
        response = requests.post(f"{alice.base_url}/uploads/{forged['upload_id']}/complete",
                                 json=body, headers=alice._signature("upload", body),
                                 timeout=30)
        assert response.status_code == status, response.text
    assert settled_upload(alice, forged["upload_id"])["reason"] == "input_hash_mismatch"


def test_a_private_objects_sensitivity_follows_it_into_every_job(alice, tmp_path):
    path, _ = texts_file(tmp_path)
    private = alice.upload(path, private=True)
    for said in ({}, {"data_sensitivity": "public"}):
        job, _ = alice.submit({"kind": "embed_batch", "input_uri": private["input_uri"],
                               **said})
        assert job["manifest"]["data_sensitivity"] == "private"
    # Asking for it as public later does not make it public.
    assert alice.upload(path)["upload_url"] is None
    job, _ = alice.submit({"kind": "embed_batch", "input_uri": private["input_uri"],
                           "max_attempts": 2})
    assert job["manifest"]["data_sensitivity"] == "private"
