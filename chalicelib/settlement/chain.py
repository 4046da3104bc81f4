"""web3 adapter for the escrow contract: typed calls, signed transactions with managed nonces,
receipts decoded into events, reverts decoded into the contract's custom errors."""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import requests
from eth_abi import decode as abi_decode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError, Web3RPCError
from web3.logs import DISCARD
from web3.providers.rpc.utils import ExceptionRetryConfiguration

from chalicelib.config import secret
from chalicelib.errors import ProoflineError
from chalicelib.settlement.escrow import (
    EscrowState,
    FundingQuote,
    domain,
    job_key_bytes,
    result_hash,
    sign_result,
)

# ABI and bytecode, packaged with this module (every package that talks to the chain has them).
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
NATIVE = "0x0000000000000000000000000000000000000000"
NONCE_RETRIES = 3


class ChainError(ProoflineError):
    reason = "chain_error"


class ContractReverted(ChainError):
    """The contract refused: `error` is its custom error name, `args` its arguments."""
    status = 409
    reason = "contract_reverted"

    def __init__(self, error: str, args: tuple = ()):
        super().__init__(f"escrow reverted with {error}{args}", reason=f"escrow_{error}")
        self.error, self.args_ = error, args


@dataclass(frozen=True)
class Receipt:
    tx_hash: str
    block: int
    gas_used: int
    events: list[dict] = field(default_factory=list)

    def as_event(self) -> dict:
        return {"tx_hash": self.tx_hash, "block": self.block, "gas_used": self.gas_used}


@dataclass(frozen=True)
class EscrowJob:
    """`jobOf`, field for field."""
    client: str
    deadline: int
    verified_at: int
    dispute_window: int
    state: EscrowState
    worker: str
    price: int
    assignments: int
    token: str
    amount: int
    fee_bps: int
    arbitration_window: int
    disputed_at: int


# Backs off 0.5, 1, 2, 4, 8 s while the RPC is down; the queue redelivers after that.
RPC_RETRIES = ExceptionRetryConfiguration(
    errors=(ConnectionError, requests.ConnectionError, requests.HTTPError, requests.Timeout),
    retries=5, backoff_factor=0.5)


def connect(rpc_url: str) -> Web3:
    return Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30},
                                  exception_retry_configuration=RPC_RETRIES))


@lru_cache(maxsize=None)
def artifact(name: str) -> dict:
    return json.loads((ARTIFACTS / f"{name}.json").read_text())


class Escrow:
    def __init__(self, w3: Web3, address: str):
        self.w3 = w3
        self.contract = w3.eth.contract(address=Web3.to_checksum_address(address),
                                        abi=artifact("ProoflineEscrow")["abi"])
        self._errors = _error_selectors(self.contract.abi)
        self._nonce_locks: dict[str, threading.Lock] = {}

    @property
    def address(self) -> str:
        return self.contract.address

    # -- reads ----------------------------------------------------------------------------
    def job(self, job_id: bytes) -> EscrowJob:
        raw = list(self.contract.functions.jobOf(job_id).call())
        raw[4] = EscrowState(raw[4])
        return EscrowJob(*raw)

    def windows(self) -> tuple[int, int]:
        """(dispute window, arbitration window) in seconds, for jobs funded now."""
        functions = self.contract.functions
        return functions.disputeWindow().call(), functions.arbitrationWindow().call()

    def credit(self, token: str, account: str) -> int:
        """What `account` can `withdraw` in `token`."""
        return self.contract.functions.credits(token, account).call()

    def has_role(self, role: str, address: str) -> bool:
        functions = self.contract.functions
        return functions.hasRole(getattr(functions, role)().call(), address).call()

    def result_domain(self) -> dict:
        return domain(self.w3.eth.chain_id, self.address)

    def released_tx(self, job_id: bytes, from_block: int, step: int) -> str | None:
        """The transaction that released `job_id`, if any (for idempotent bookkeeping),
        searched from `from_block` (its funding) in ranges of `step` blocks, as providers
        cap `eth_getLogs`."""
        event, head = self.contract.events.Released(), self.w3.eth.block_number
        for start in range(from_block, head + 1, step):
            logs = event.get_logs(from_block=start, to_block=min(head, start + step - 1),
                                  argument_filters={"jobId": job_id})
            if logs:
                return logs[0]["transactionHash"].to_0x_hex()
        return None

    def logs(self, names, from_block: int, to_block: int) -> list:
        """The escrow's logs of the named events in a block range, decoded, in chain order."""
        events = {getattr(self.contract.events, name)().topic: getattr(self.contract.events, name)()
                  for name in names}
        raw = self.w3.eth.get_logs({"address": self.address, "fromBlock": from_block,
                                    "toBlock": to_block, "topics": [list(events)]})
        return [events[log["topics"][0].to_0x_hex()].process_log(log) for log in raw]

    # -- writes ---------------------------------------------------------------------------
    def fund(self, account: LocalAccount, quote: FundingQuote, signature: bytes) -> Receipt:
        """Fund a job on a router's quote; for an ERC-20, first allow the escrow to take
        exactly what is missing."""
        args = (quote.job_key, quote.token, quote.amount, quote.duration, quote.expiry, signature)
        token = quote.token
        if token == NATIVE or not self.contract.functions.allowedToken(token).call():
            return self.send(account, "fund", *args, value=quote.amount if token == NATIVE else 0)
        erc20 = self.w3.eth.contract(address=Web3.to_checksum_address(token),
                                     abi=artifact("TestToken")["abi"])
        if erc20.functions.allowance(account.address, self.address).call() < quote.amount:
            self._transact(account, erc20.functions.approve(self.address, quote.amount),
                           "approve")
        return self.send(account, "fund", *args)

    def send(self, account: LocalAccount, function: str, *args: Any, value: int = 0) -> Receipt:
        """Call an escrow function in a signed transaction and wait for its receipt."""
        return self._transact(account, getattr(self.contract.functions, function)(*args),
                              function, value=value)

    def _transact(self, account: LocalAccount, call, name: str, *, value: int = 0) -> Receipt:
        """Simulate first (a revert raises ContractReverted without spending gas), then sign
        and send. Nonces are taken under a per-account lock; a nonce another process used
        meanwhile (several Lambdas share the control key) is retaken and the send repeated."""
        params = {"from": account.address, "value": value}
        try:
            gas = call.estimate_gas(params)
        except (ContractCustomError, ContractLogicError) as exc:
            raise self._decode(exc) from exc
        lock = self._nonce_locks.setdefault(account.address, threading.Lock())
        for attempt in range(NONCE_RETRIES):
            with lock:
                nonce = self.w3.eth.get_transaction_count(account.address, "pending")
                tx = call.build_transaction({**params, "gas": int(gas * 1.2) + 10_000,
                                             "nonce": nonce})
                try:
                    tx_hash = self.w3.eth.send_raw_transaction(
                        account.sign_transaction(tx).raw_transaction)
                    break
                except Web3RPCError as exc:
                    if not _nonce_taken(exc) or attempt == NONCE_RETRIES - 1:
                        raise
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)
        if receipt["status"] != 1:
            raise ChainError(f"{name} transaction {tx_hash.to_0x_hex()} failed")
        return Receipt(tx_hash=tx_hash.to_0x_hex(), block=receipt["blockNumber"],
                       gas_used=receipt["gasUsed"], events=self._events(receipt))

    def _events(self, receipt) -> list[dict]:
        """The escrow's events in the receipt, in log order."""
        decoded = [(log["logIndex"], {"event": log["event"], **dict(log["args"])})
                   for event in self.contract.events
                   for log in event().process_receipt(receipt, errors=DISCARD)]
        return [event for _, event in sorted(decoded, key=lambda pair: pair[0])]

    def _decode(self, exc: Exception) -> ProoflineError:
        data = getattr(exc, "data", None) or (exc.args[1] if len(exc.args) > 1 else None)
        if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
            name, types = self._errors.get(data[2:10], (None, None))
            if name:
                values = abi_decode(types, bytes.fromhex(data[10:]))
                return ContractReverted(name, tuple(
                    Web3.to_checksum_address(v) if t == "address" else v
                    for t, v in zip(types, values)))
        return ChainError(f"escrow call failed: {exc}")


def deploy(w3: Web3, account: LocalAccount, name: str, *args: Any) -> str:
    """Deploy one of the artifacts; its address."""
    return _deployed(w3, account, name, *args)["contractAddress"]


def _deployed(w3: Web3, account: LocalAccount, name: str, *args: Any):
    built = artifact(name)
    contract = w3.eth.contract(abi=built["abi"], bytecode=built["bytecode"])
    tx = contract.constructor(*args).build_transaction({
        "from": account.address, "nonce": w3.eth.get_transaction_count(account.address, "pending")})
    tx_hash = w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=300)
    if receipt["status"] != 1:
        raise ChainError(f"deploying {name} failed in transaction {tx_hash.to_0x_hex()}")
    return receipt


# The control plane's signers, each a key of its own holding one escrow role, so a leaked key
# does one thing: the secret that holds it, its role, and what it signs.
SIGNERS = {"router": ("PROOFLINE_ROUTER_KEY", "ROUTER_ROLE", "signs funding quotes and assigns"),
           "verifier": ("PROOFLINE_VERIFIER_KEY", "VERIFIER_ROLE", "releases verified work"),
           "operator": ("PROOFLINE_REFUNDER_KEY", "OPERATOR_ROLE", "refunds failed jobs")}


def deploy_escrow(w3: Web3, admin: LocalAccount, *, treasury: str, holders: dict[str, str],
                  tokens: tuple[str, ...] = (),
                  windows: tuple[int, int] | None = None) -> tuple[Escrow, int]:
    """A stage's escrow: deployed by `admin` (who keeps DEFAULT_ADMIN_ROLE) paying fees to
    `treasury`, each role in `holders` granted to its address, the payment tokens allowed and
    the (dispute, arbitration) windows set. Returns it with its deployment block, where the
    chain follower starts."""
    receipt = _deployed(w3, admin, "ProoflineEscrow", admin.address,
                        Web3.to_checksum_address(treasury))
    escrow = Escrow(w3, receipt["contractAddress"])
    for role, holder in holders.items():
        escrow.send(admin, "grantRole", getattr(escrow.contract.functions, role)().call(),
                    Web3.to_checksum_address(holder))
    for token in tokens:
        escrow.send(admin, "setTokenAllowed", Web3.to_checksum_address(token), True)
    if windows is not None:
        escrow.send(admin, "setDisputeWindows", *windows)
    return escrow, receipt["blockNumber"]


def _error_selectors(abi: list[dict]) -> dict[str, tuple[str, list[str]]]:
    selectors = {}
    for item in abi:
        if item["type"] == "error":
            types = [i["type"] for i in item["inputs"]]
            selectors[keccak(text=f"{item['name']}({','.join(types)})")[:4].hex()] = (item["name"], types)
    return selectors


def _nonce_taken(exc: Exception) -> bool:
    message = str(exc).lower()
    return any(sign in message for sign in ("nonce too low", "already known",
                                            "replacement transaction underpriced"))


def pool_signature(job, output) -> str | None:
    """A built-in pool's signature over an escrow job's result (EIP-712 over the job key and
    the output's hash): what `release` checks. None for jobs without escrow."""
    if job.escrow is None or not (job.worker or "").startswith("pool:"):
        return None                  # a marketplace payee signs for itself (countersign)
    signature = sign_result(Account.from_key(secret("PROOFLINE_POOL_KEY")),
                            domain(job.escrow.chain_id, job.escrow.contract),
                            job_key_bytes(job), result_hash([output.sha256]))
    return "0x" + signature.hex()
