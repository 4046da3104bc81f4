"""The exit statuses that need no stack: nothing to talk to (3), a wrong command line (2).
Refusals (4), failures (1) and timeouts (5) are checked against the stack in test_cli.py,
test_transcode_cli.py and test_infer_cli.py."""
import os
import subprocess
import sys

from proofline.common import Exit
from proofline.devstack import free_port


def proofline(*args, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROOFLINE_")}
    return subprocess.run([sys.executable, "-m", "proofline.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_no_local_stack_here_is_unavailable(tmp_path):
    done = proofline("jobs", "list", cwd=tmp_path)
    assert done.returncode == Exit.UNAVAILABLE == 3
    assert "proofline dev up" in done.stderr


def test_an_api_that_does_not_answer_is_unavailable(tmp_path):
    silent = f"http://127.0.0.1:{free_port()}"         # nothing listens there
    done = proofline("--api", silent, "infer", "quote", "embed_batch", "--texts", "3",
                     cwd=tmp_path)
    assert done.returncode == 3 and "nothing answers" in done.stderr


def test_a_wrong_command_line_is_a_usage_error(tmp_path):
    done = proofline("jobs", "list", "--limit", "many", cwd=tmp_path)
    assert done.returncode == Exit.USAGE == 2 and "--limit" in done.stderr
