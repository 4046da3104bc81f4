"""The control plane's package as Lambda starts it: the zip's size, and the time and memory
of a cold `import app` in a fresh interpreter holding only the zip's contents and boto3 (what
the Lambda runtime provides), with a deployed stage's variables (no AWS call at import)."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from chalicelib.config import stage_environment

ROOT = Path(__file__).resolve().parent.parent
RUNS = 5
COLD_IMPORT = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
started = time.perf_counter()
import app
elapsed = time.perf_counter() - started
print(json.dumps({"import_s": elapsed,
                  "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def package(out: Path) -> Path:
    env = {**{k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR")
              or k.startswith("PIP_")}, **stage_environment("dev"),
           "AWS_DEFAULT_REGION": "us-east-1"}
    subprocess.run([str(Path(sys.executable).with_name("chalice")), "package", "--stage", "dev",
                    "--merge-template", str(ROOT / ".chalice" / "package-template.json"), str(out)],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=900)
    return out / "deployment.zip"


def bare_python(where: Path) -> Path:
    """A virtualenv with boto3 alone, as the Lambda runtime has."""
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                    "boto3"], check=True, timeout=600)
    return venv / "bin" / "python"


def run() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="proofline-cold-") as scratch:
        scratch = Path(scratch)
        archive = package(scratch / "package")
        task = scratch / "task"
        with zipfile.ZipFile(archive) as z:
            z.extractall(task)
        python = bare_python(scratch)
        env = {**stage_environment("dev"), "PATH": "/usr/bin:/bin", "AWS_DEFAULT_REGION":
               "us-east-1", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
        runs = [json.loads(subprocess.run(
            [str(python), "-I", "-c", COLD_IMPORT, str(task)], env=env, cwd=task, check=True,
            capture_output=True, text=True, timeout=120).stdout.strip().splitlines()[-1])
            for _ in range(RUNS)]
        return {"control_plane_zip_mib": archive.stat().st_size / 2**20,
                "cold_import_app_s_median": statistics.median(r["import_s"] for r in runs),
                "cold_import_app_max_rss_mib": max(r["max_rss_mib"] for r in runs)}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
