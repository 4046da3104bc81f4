"""`proofline --version` names the installed package's version."""
import subprocess
import sys
from importlib.metadata import version


def test_version_is_the_installed_packages():
    done = subprocess.run([sys.executable, "-m", "proofline.cli", "--version"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"proofline, version {version('proofline')}"
