"""The `proofline` CLI as a user runs it: its own stack in a fresh directory, then submit,
watch, inspect and stop it."""
import json
from pathlib import Path

import pytest
from conftest import run_cli as run

from proofline import clips

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cli")
    clips.make_clip(cwd / "source.mp4", seconds=1.0, width=128, height=96)
    clips.make_empty(cwd / "empty.mp4")
    yield cwd
    run(cwd, "dev", "down", check=False)


def test_dev_up_status_and_a_second_up_reports_the_same_stack(workdir):
    first = json.loads(run(workdir, "dev", "up", "--json").stdout)
    assert first["started"] is True and first["api_url"].startswith("http://127.0.0.1:")
    second = json.loads(run(workdir, "dev", "up", "--json").stdout)
    assert second["started"] is False and second["pid"] == first["pid"]
    status = json.loads(run(workdir, "dev", "status", "--json").stdout)
    assert status["running"] is True and status["aws_endpoint"] == first["aws_endpoint"]


def test_submit_a_manifest_file_with_a_local_input_and_wait(workdir):
    (workdir / "job.yaml").write_text("kind: media_probe\ninput_uri: source.mp4\nmax_attempts: 2\n")
    result = run(workdir, "submit", "job.yaml", "--wait", "--json")
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[0]["type"] == "job.created" and events[-1]["state"] == "settled"
    job_id = events[0]["job_id"]

    shown = json.loads(run(workdir, "jobs", "show", job_id, "--json").stdout)
    assert shown["state"] == "settled" and shown["max_attempts"] == 2
    assert shown["outputs"][0]["sha256"].startswith("sha256:")
    listed = json.loads(run(workdir, "jobs", "list", "--state", "settled", "--json").stdout)
    assert job_id in {j["job_id"] for j in listed}
    timeline = run(workdir, "jobs", "events", job_id).stdout
    assert "job.created" in timeline and "validation.passed" in timeline


def test_an_escrow_job_is_funded_by_the_cli_and_paid_after_verification(workdir):
    result = run(workdir, "submit", "--kind", "media_probe", "--input", "source.mp4",
                 "--payment-policy", "escrow_before_start", "--max-price", "0.002",
                 "--wait", "--json")
    types = [json.loads(line)["type"] for line in result.stdout.splitlines()]
    assert types[:2] == ["job.created", "payment.authorized"]
    assert types.index("escrow.funded") < types.index("validation.passed") < types.index("settlement.released")
    assert types[-1] == "settlement.released"


def test_a_job_priced_in_an_erc20_is_funded_by_the_cli_and_disputes_need_a_window(workdir):
    result = run(workdir, "submit", "--kind", "media_probe", "--input", "source.mp4",
                 "--payment-policy", "escrow_before_start", "--max-price", "1.25",
                 "--payment-token", "PUSD", "--wait")
    assert "1.25 PUSD" in result.stderr and "settled" in result.stdout
    job_id = result.stdout.split("job ")[1].split()[0]
    # Released at once (no dispute window on this stack): too late to contest.
    refused = run(workdir, "settle", "dispute", job_id, check=False)
    assert refused.returncode != 0 and "escrow_WrongState" in refused.stderr


def test_a_bad_input_fails_with_its_reason_and_a_non_zero_exit(workdir):
    result = run(workdir, "submit", "--kind", "media_probe", "--input", "empty.mp4", "--wait",
                 check=False)
    assert result.returncode == 1
    assert "input_empty" in result.stdout


def test_a_bad_manifest_is_a_readable_error(workdir):
    result = run(workdir, "submit", "--kind", "media_probe", "--input", "source.mp4",
                 "--max-price", "-1", check=False)
    assert result.returncode == 4                  # refused, with the reason code
    assert "400" in result.stderr and "invalid_value" in result.stderr and "max_price" in result.stderr


def test_cancel_of_a_settled_job_explains_why_not(workdir):
    listed = json.loads(run(workdir, "jobs", "list", "--state", "settled", "--json").stdout)
    result = run(workdir, "jobs", "cancel", listed[0]["job_id"], check=False)
    assert result.returncode == 4 and "illegal_transition" in result.stderr


def test_dev_down_stops_the_stack(workdir):
    info = json.loads(run(workdir, "dev", "status", "--json").stdout)
    run(workdir, "dev", "down")
    assert run(workdir, "dev", "status", check=False).returncode == 3
    stat = Path(f"/proc/{info['pid']}/stat")
    assert not stat.exists() or stat.read_text().split(") ")[1][0] == "Z"   # gone, or a zombie
    assert run(workdir, "jobs", "list", check=False).returncode == 3     # unavailable
