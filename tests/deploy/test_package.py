"""The packages as Lambda runs them. `chalice package` builds the control plane's zip; unpacked
into an empty directory and imported by an isolated interpreter (`python -I`) from a bare
virtualenv holding boto3 alone (what the Lambda runtime provides), it starts without PyAV,
stays under Chalice's 50 MB limit, and serves a request against the local stack. The media
worker's image cannot be built here (no Docker): its requirements are installed for the
Lambda platform into a target directory, with the code its Dockerfile copies, and each
entry point is imported the same isolated way."""
from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path

import pytest

from tests.deploy.rehearsal import run

ROOT = Path(__file__).resolve().parents[2]
CHALICE_LIMIT = 50 * 2**20
PLATFORM = ["--platform", "manylinux2014_x86_64", "--only-binary=:all:",
            "--python-version", "3.11", "--implementation", "cp"]

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> Path:
    """A virtualenv with boto3 and nothing else: the Lambda runtime's Python."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "boto3"])
    return venv / "bin" / "python"


def isolated(python: Path, path: Path, code: str, env: dict[str, str]) -> dict:
    """Run `code` in `python -I` with only `path` added to sys.path; it prints one JSON line."""
    script = f"import sys; sys.path.insert(0, {str(path)!r})\n{code}"
    done = run([str(python), "-I", "-c", script], env=env, cwd=path)
    return json.loads(done.stdout.strip().splitlines()[-1])


HEALTH = """
import json
try:
    import av  # noqa: F401
    has_av = True
except ImportError:
    has_av = False
import app

class Context:
    aws_request_id = "req-1"
    function_name = "proofline-dev-api"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:proofline-dev-api"
    def get_remaining_time_in_millis(self):
        return 30000

event = {"resource": "/health", "path": "/health", "httpMethod": "GET",
         "headers": {"Host": "localhost"}, "multiValueHeaders": {"Host": ["localhost"]},
         "queryStringParameters": None, "multiValueQueryStringParameters": None,
         "pathParameters": None, "stageVariables": None, "body": None,
         "isBase64Encoded": False,
         "requestContext": {"resourcePath": "/health", "httpMethod": "GET", "stage": "api",
                            "requestId": "req-1", "identity": {"sourceIp": "127.0.0.1"}}}
response = app.app(event, Context())
asset = dict(event, resource="/ui/assets/{name}", path="/ui/assets/hls.min.js",
             pathParameters={"name": "hls.min.js"},
             requestContext=dict(event["requestContext"], resourcePath="/ui/assets/{name}"))
player = app.app(asset, Context())
print(json.dumps({"has_av": has_av, "status": response["statusCode"],
                  "body": json.loads(response["body"]),
                  "player": [player["statusCode"], player["headers"].get("Content-Type"),
                             len(player["body"])],
                  "app_file": app.__file__}))
"""


def test_the_control_plane_zip_starts_without_pyav_and_serves_a_request(
        control_plane_zip, bare_python, stack, tmp_path):
    size = control_plane_zip.stat().st_size
    assert size < CHALICE_LIMIT, f"{size / 2**20:.1f} MiB"
    with zipfile.ZipFile(control_plane_zip) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "task")
    assert "app.py" in names and "chalicelib/settlement/artifacts/ProoflineEscrow.json" in names
    assert "chalicelib/catalog/job_classes.yaml" in names
    # The job page's player, vendored by `make install`: packaged and served.
    assert {"chalicelib/ui/static/hls.min.js", "chalicelib/ui/static/job.js"} <= set(names)
    assert not any(n.startswith("av/") for n in names)
    env = {**stack.info.environment(), "PATH": "/usr/bin:/bin"}
    answer = isolated(bare_python, tmp_path / "task", HEALTH, env)
    assert answer["has_av"] is False
    assert answer["app_file"].startswith(str(tmp_path / "task"))
    assert answer["status"] == 200 and answer["body"]["status"] == "ok"
    assert answer["player"][:2] == [200, "text/javascript; charset=utf-8"]
    assert answer["player"][2] > 100_000
    assert answer["body"]["signing"]["verifying_contract"].lower() == \
        stack.info.escrow_address.lower()


IMAGE_HANDLERS = """
import json, importlib
loaded = {}
for name in ("media_worker.handler", "gpu_functions.handler"):
    module = importlib.import_module(name)
    loaded[name] = module.__file__
import av
print(json.dumps({"loaded": loaded, "av": av.__version__}))
"""


def test_the_worker_image_installs_for_the_lambda_platform_and_its_handlers_import(
        bare_python, stack, tmp_path):
    task = tmp_path / "task"            # ${LAMBDA_TASK_ROOT}, as the Dockerfile fills it
    run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         *PLATFORM, "--target", str(task), "-r", str(ROOT / "media_worker" / "requirements.txt")])
    for package in ("chalicelib", "media_worker", "gpu_functions"):
        shutil.copytree(ROOT / package, task / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    env = {**stack.info.environment(), "PATH": "/usr/bin:/bin"}
    answer = isolated(bare_python, task, IMAGE_HANDLERS, env)
    assert set(answer["loaded"]) == {"media_worker.handler", "gpu_functions.handler"}
    assert all(path.startswith(str(task)) for path in answer["loaded"].values())


def test_every_sqs_trigger_reports_batch_item_failures(control_plane_zip):
    """Configured by the deployment itself, never by hand after it."""
    from chalice.app import SQSEventConfig

    import app
    template = json.loads((control_plane_zip.parent / "sam.json").read_text())
    events = {name: event for resource in template["Resources"].values()
              if resource["Type"] == "AWS::Serverless::Function"
              for name, event in resource["Properties"].get("Events", {}).items()
              if event["Type"] == "SQS"}
    handlers = [s.name for s in app.app.event_sources if isinstance(s, SQSEventConfig)]
    assert len(events) == len(handlers) == 3
    for name, event in events.items():
        assert event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"], name
    # A merge entry for a trigger that no longer exists would leave a function without it.
    extras = json.loads((ROOT / ".chalice" / "package-template.json").read_text())
    assert {e for r in extras["Resources"].values() for e in r["Properties"].get("Events", {})} \
        == set(events)


def test_every_function_is_named_as_chalice_deploy_names_it(control_plane_zip):
    """The alarms in template.yaml watch `proofline-<stage>-<handler>` (the API handler:
    `proofline-<stage>`), whichever way the control plane was deployed: the merge template
    names each function so; a function it missed would get a name CloudFormation makes up."""
    template = json.loads((control_plane_zip.parent / "sam.json").read_text())
    names = {logical: resource["Properties"].get("FunctionName")
             for logical, resource in template["Resources"].items()
             if resource["Type"] == "AWS::Serverless::Function"}
    assert all(names.values()), [k for k, v in names.items() if not v]
    handlers = {resource["Properties"]["Handler"]: names[logical]["Fn::Sub"]
                for logical, resource in template["Resources"].items() if logical in names}
    assert handlers.pop("app.app") == "proofline-${Stage}"
    assert handlers == {h: f"proofline-${{Stage}}-{h.removeprefix('app.')}" for h in handlers}
    assert template["Parameters"]["Stage"]["AllowedValues"] == ["dev", "prod"]
