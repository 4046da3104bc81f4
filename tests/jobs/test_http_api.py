"""The HTTP door: idempotent submission, typed errors, queries, cancel — through the real API."""
import json
import uuid

import pytest
import requests
from conftest import event_types, wait_for
from eth_account import Account

from chalicelib.identity.signing import did_for
from proofline.client import Api, ApiError

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def uploaded(api, clip):
    return api.upload(clip)


def manifest(uploaded, **extra):
    return {"kind": "media_probe", "input_uri": uploaded["input_uri"],
            "input_hash": uploaded["input_hash"], **extra}


def post(api, body, key=None, content_type="application/json"):
    headers = {"Content-Type": content_type, **({"Idempotency-Key": key} if key else {})}
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(f"{api.base_url}/jobs", data=data, headers=headers, timeout=30)


def test_submitted_job_runs_to_settled_with_a_verified_output(api, uploaded, aws):
    response = post(api, manifest(uploaded, max_attempts=2), key=str(uuid.uuid4()))
    assert response.status_code == 201
    assert response.headers["Location"] == f"/jobs/{response.json()['job_id']}"
    job = wait_for(api, response.json()["job_id"])
    assert job["state"] == "settled", api.events(job["job_id"])
    assert event_types(api, job["job_id"]) == [
        "job.created", "job.assigned", "execution.started", "execution.completed",
        "output.uploaded", "verification.started", "validation.passed", "output.promoted",
        "settlement.skipped"]
    [output] = job["outputs"]
    assert output["uri"].endswith(f"/outputs/{output['sha256'].replace(':', '/')}/probe.json")
    report = requests.get(output["download_url"], timeout=10)
    assert report.status_code == 200
    probe = report.json()
    assert probe["video"]["width"] == 160 and probe["has_audio"] is True
    assert abs(probe["duration_s"] - 1.0) < 0.15


def test_every_decision_is_on_the_timeline_with_the_correlation_id(api, uploaded):
    correlation = f"trace-{uuid.uuid4().hex[:8]}"
    response = requests.post(f"{api.base_url}/jobs", json=manifest(uploaded),
                             headers={"X-Correlation-Id": correlation}, timeout=30)
    job = wait_for(api, response.json()["job_id"])
    events = {e["type"]: e for e in api.events(job["job_id"])["events"]}
    assert {e["correlation_id"] for e in events.values()} == {correlation}
    routing = events["job.assigned"]["data"]
    assert routing["worker"] == "pool:media" and routing["ranking"]["ranked"][0]["score"] > 0
    verdict = events["validation.passed"]["data"]
    assert all(verdict["checks"].values()) and verdict["measured"]["sha256"] == job["outputs"][0]["sha256"]


def test_without_a_correlation_header_the_job_id_is_the_correlation_id(api, uploaded):
    job = api.submit(manifest(uploaded, max_attempts=1))[0]
    assert job["correlation_id"] == job["job_id"]


def test_replay_with_the_same_key_returns_the_same_job(api, uploaded):
    key = str(uuid.uuid4())
    first = post(api, manifest(uploaded, max_attempts=1), key=key)
    again = post(api, manifest(uploaded, max_attempts=1), key=key)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["job_id"] == again.json()["job_id"]


def test_same_key_with_another_body_is_a_conflict(api, uploaded):
    key = str(uuid.uuid4())
    assert post(api, manifest(uploaded, max_attempts=1), key=key).status_code == 201
    clash = post(api, manifest(uploaded, max_attempts=2), key=key)
    assert clash.status_code == 409
    assert clash.json()["reason"] == "idempotency_key_reused"


def test_without_a_key_the_same_body_is_one_job(api, uploaded):
    body = manifest(uploaded, max_attempts=3, job_id=None)
    body.pop("job_id")
    body["validation"] = {"nonce": str(uuid.uuid4())}
    first, again = post(api, body), post(api, body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["job_id"] == again.json()["job_id"]


def test_a_client_chosen_job_id_cannot_be_reused_for_other_work(api, uploaded):
    job_id = f"mine-{uuid.uuid4().hex[:8]}"
    assert post(api, manifest(uploaded, job_id=job_id), key="a-" + job_id).status_code == 201
    clash = post(api, manifest(uploaded, job_id=job_id, max_attempts=1), key="b-" + job_id)
    assert clash.status_code == 409 and clash.json()["reason"] == "job_exists"


@pytest.mark.parametrize("body, reason", [
    ({"input_uri": "s3://bucket-a/x"}, "missing_field"),
    ({"kind": "media_probe"}, "missing_field"),
    ({"kind": "media_probe", "input_uri": "s3://bucket-a/x", "colour": "red"}, "unknown_field"),
    ({"kind": "media_probe", "input_uri": "s3://bucket-a/x", "max_attempts": "many"}, "wrong_type"),
    ({"kind": "media_probe", "input_uri": "s3://bucket-a/x", "max_price": "-0.5"}, "invalid_value"),
    ({"kind": "media_probe", "input_uri": "/etc/passwd"}, "invalid_value"),
    ({"kind": "transmogrify", "input_uri": "s3://bucket-a/x"}, "unknown_job_class"),
    ({"kind": "media_probe", "input_uri": "s3://bucket-a/x", "payment_policy": "gratis"},
     "unknown_payment_policy"),
    ({"kind": "media_probe", "input_uri": "s3://bucket-a/x", "deadline": "2001-01-01T00:00:00Z"},
     "deadline_passed"),
    ("[1, 2]", "body_not_object"),
    ("{nope", "malformed_json"),
    ('{"kind": "media_probe", "max_price": NaN}', "non_finite_number"),
    ('{"kind": "media_probe", "x": ' + "[" * 30_000 + "]" * 30_000 + "}", "body_too_deep"),
    ('{"kind": "media_probe", "x": ' + "[" * 20 + "]" * 20 + "}", "body_too_deep"),
])
def test_bad_manifests_get_400_with_a_reason(api, body, reason):
    response = post(api, body)
    assert response.status_code == 400, response.text
    assert response.json()["reason"] == reason
    assert response.json()["message"]


@pytest.mark.parametrize("body, reason", [
    ("kind: media_probe\nx: " + "[" * 20_000 + "]" * 20_000 + "\n", "body_too_deep"),
    ("kind: media_probe\nmax_attempts: .nan\n", "non_finite_number"),
])
def test_bad_yaml_manifests_get_400_with_a_reason(api, body, reason):
    response = post(api, body, content_type="application/x-yaml")
    assert response.status_code == 400, response.text
    assert response.json()["reason"] == reason


@pytest.mark.parametrize("path", ["/uploads", "/workers", "/tasks/job-x~240p-00000/result",
                                  "/jobs/job-x/result", "/jobs/job-x/countersign"])
@pytest.mark.parametrize("body, reason", [
    ("[" * 30_000 + "]" * 30_000, "body_too_deep"),
    ('{"sha256": NaN}', "non_finite_number"),
    ('"just a string"', "body_not_object"),
    ("{oops", "malformed_json"),
])
def test_every_route_refuses_a_malformed_body_with_a_reason(api, path, body, reason):
    response = requests.post(f"{api.base_url}{path}", data=body, timeout=30,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["reason"] == reason


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "limit=-3", "limit=ten",
                                   "state=nonsense"])
def test_a_bad_listing_query_is_400(api, query):
    response = requests.get(f"{api.base_url}/jobs?{query}", headers=api.session_headers(), timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["reason"] == "invalid_query"


def test_oversize_manifest_is_413(api):
    body = {"kind": "media_probe", "input_uri": "s3://bucket-a/x", "validation": {"pad": "x" * 70_000}}
    response = post(api, body)
    assert response.status_code == 413
    assert response.json()["reason"] == "manifest_too_large"


def test_yaml_manifests_are_accepted(api, uploaded):
    body = f"kind: media_probe\ninput_uri: {uploaded['input_uri']}\nmax_attempts: 1\n"
    response = post(api, body, key=str(uuid.uuid4()), content_type="application/x-yaml")
    assert response.status_code == 201
    assert response.json()["max_attempts"] == 1


def test_unknown_job_is_404(api):
    response = requests.get(f"{api.base_url}/jobs/job-doesnotexist", headers=api.session_headers(), timeout=10)
    assert response.status_code == 404 and response.json()["reason"] == "job_not_found"


def test_cancelling_a_finished_job_is_409(api, uploaded):
    job = api.submit(manifest(uploaded, max_attempts=1))[0]
    wait_for(api, job["job_id"])
    response = requests.post(f"{api.base_url}/jobs/{job['job_id']}/cancel", timeout=10)
    assert response.status_code == 409
    assert response.json()["reason"] == "illegal_transition"


def test_list_by_state(api, uploaded):
    job = api.submit(manifest(uploaded, max_attempts=1), idempotency_key=str(uuid.uuid4()))[0]
    wait_for(api, job["job_id"])
    settled = {j["job_id"] for j in api.jobs("settled", limit=500)}
    assert job["job_id"] in settled
    assert job["job_id"] not in {j["job_id"] for j in api.jobs("failed", limit=500)}
    assert requests.get(f"{api.base_url}/jobs?state=bogus", headers=api.session_headers(), timeout=10).status_code == 400


def test_an_unreadable_stored_job_is_left_out_of_a_listing_not_fatal_to_it(api, aws,
                                                                          uploaded):
    job, _ = api.submit(manifest(uploaded), idempotency_key=str(uuid.uuid4()))
    wait_for(api, job["job_id"])
    corrupted = {"pk": {"S": "JOB#job-corrupted"}, "sk": {"S": "JOB"}}
    aws.dynamodb.put_item(TableName="proofline-local-jobs", Item={
        **corrupted, "state": {"S": "settled"}, "created_at": {"S": "2999-01-01T00:00:00Z"},
        "doc": {"S": '{"job_id": 7'}})
    try:
        response = requests.get(f"{api.base_url}/jobs?state=settled&limit=500", headers=api.session_headers(), timeout=30)
    finally:
        aws.dynamodb.delete_item(TableName="proofline-local-jobs", Key=corrupted)
    assert response.status_code == 200, response.text
    listed = [j["job_id"] for j in response.json()["jobs"]]
    assert job["job_id"] in listed and "job-corrupted" not in listed


def test_a_clients_listing_pages_through_its_own_jobs_as_summaries(stack, clip):
    account = Account.create()
    client = Api(stack.info.api_url,
                 signer=(account, did_for(account.address, stack.info.chain_id)))
    slot = client.upload(clip)
    made = [client.submit({"kind": "media_probe", "input_uri": slot["input_uri"],
                           "job_id": f"page-{n}"})[0]["job_id"] for n in range(3)]
    first = client._read("GET", "/jobs", params={"limit": 2}).json()
    assert [j["job_id"] for j in first["jobs"]] == made[::-1][:2] and first["next"]
    assert "manifest" not in first["jobs"][0] and "download_url" not in str(first)
    second = client._read("GET", "/jobs", params={"limit": 2, "cursor": first["next"]}).json()
    assert [j["job_id"] for j in second["jobs"]] == made[:1] and second["next"] is None
    assert [j["job_id"] for j in client.jobs(limit=10)] == made[::-1]
    with pytest.raises(ApiError) as bad:
        client._read("GET", "/jobs", params={"cursor": "yesterday"})
    assert (bad.value.status, bad.value.reason) == (400, "invalid_query")
