"""The control plane's deployment package, built once for the deploy tests."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from chalicelib.config import stage_environment
from tests.deploy.rehearsal import run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def control_plane_zip(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chalice-package")
    # Chalice imports app.py to find its handlers: with the stage's variables, as a deploy does.
    # Nothing of this machine's stack leaks in: the stage's own variables, pip's settings.
    env = {**{k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR")
              or k.startswith("PIP_")},
           **stage_environment("dev"), "AWS_DEFAULT_REGION": "us-east-1"}
    # The merge template turns on partial batch responses for every SQS trigger: without it
    # Lambda deletes a whole batch when the handler returns, failed records included.
    run([str(Path(sys.executable).with_name("chalice")), "package", "--stage", "dev",
         "--merge-template", str(ROOT / ".chalice" / "package-template.json"), str(out)],
        cwd=ROOT, env=env)
    return out / "deployment.zip"


