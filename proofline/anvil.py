"""anvil (Foundry's local Ethereum node, from the npm package) on 127.0.0.1, with its dev
accounts read from the config it writes — no keys live in this repository.

`@foundry-rs/anvil` is platform-neutral: npm installs the one build for this machine as an
optional dependency (`@foundry-rs/anvil-<os>-<arch>`), which is run directly, not through
the package's Node wrapper, so stopping it stops the node."""
from __future__ import annotations

import json
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

ROOT = Path(__file__).resolve().parent.parent
ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def binary(modules: Path = ROOT / "node_modules") -> Path:
    """This platform's anvil build, as npm installed it."""
    system = {"windows": "win32"}.get(platform.system().lower(), platform.system().lower())
    arch = ARCHES.get(platform.machine().lower(), platform.machine().lower())
    name = "anvil.exe" if system == "win32" else "anvil"
    return modules / "@foundry-rs" / f"anvil-{system}-{arch}" / "bin" / name


BINARY = binary()
CHAIN_ID = 31337


class Anvil:
    def __init__(self, port: int, *, chain_id: int = CHAIN_ID, accounts: int = 10,
                 block_time: int | None = 1):
        self.port, self.chain_id, self.accounts_count = port, chain_id, accounts
        self.block_time = block_time          # None: blocks only when a transaction comes
        self.url = f"http://127.0.0.1:{port}"
        self._process: subprocess.Popen | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="proofline-anvil-"))
        self.accounts: list[LocalAccount] = []

    def start(self, timeout: float = 30) -> "Anvil":
        if not BINARY.exists():
            raise RuntimeError(f"{BINARY} is missing: run `npm ci` (make does); anvil is "
                               f"published for linux and darwin (amd64, arm64) and win32-amd64")
        config = self._dir / "anvil.json"
        self._process = subprocess.Popen(
            [str(BINARY), "--host", "127.0.0.1", "--port", str(self.port), "--chain-id",
             str(self.chain_id), "--accounts", str(self.accounts_count), "--hardfork", "cancun",
             "--silent", "--config-out", str(config),
             # Transactions mine at once, and an empty block each second keeps chain time
             # moving as on a real network (dispute windows end without new transactions).
             *(["--block-time", str(self.block_time), "--mixed-mining"]
               if self.block_time else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        w3 = Web3(Web3.HTTPProvider(self.url, request_kwargs={"timeout": 10}))
        deadline = time.monotonic() + timeout
        while not (config.exists() and _connected(w3)):
            if self._process.poll() is not None:
                raise RuntimeError(f"anvil exited: {self._process.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"anvil did not answer on {self.url} within {timeout}s")
            time.sleep(0.1)
        keys = json.loads(config.read_text())["private_keys"]
        self.accounts = [Account.from_key(k) for k in keys]
        return self

    def web3(self) -> Web3:
        return Web3(Web3.HTTPProvider(self.url, request_kwargs={"timeout": 30}))

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
        shutil.rmtree(self._dir, ignore_errors=True)


def _connected(w3: Web3) -> bool:
    try:
        return w3.is_connected()
    except Exception:
        return False
