"""Gas of the escrow's hot paths, from receipts on anvil, in the payment token (the ERC-20
path every stablecoin job takes, fee on): fund (the client's), assign, release with change
returned, refund, and assign + release in batches of 50 — per job, as the control plane pays."""
from __future__ import annotations

import secrets

from chalicelib.settlement import chain
from chalicelib.settlement.chain import Escrow
from chalicelib.settlement.escrow import FundingQuote, job_key, sign_funding, sign_result
from proofline.anvil import Anvil
from proofline.devstack import free_port

BATCH = 50
AMOUNT, PRICE = 2_000_000, 1_500_000            # 2 PUSD held, 1.5 charged, 0.5 back


def run() -> dict[str, float]:
    node = Anvil(free_port()).start()
    try:
        return _measure(node)
    finally:
        node.stop()


def _measure(node: Anvil) -> dict[str, float]:
    w3 = node.web3()
    admin, client, worker, treasury = (node.accounts[i] for i in (0, 5, 6, 9))
    escrow = Escrow(w3, chain.deploy(w3, admin, "ProoflineEscrow", admin.address, treasury.address))
    for role in ("ROUTER_ROLE", "VERIFIER_ROLE", "OPERATOR_ROLE"):
        escrow.send(admin, "grantRole", getattr(escrow.contract.functions, role)().call(), admin.address)
    escrow.send(admin, "setFee", 100, treasury.address)        # fees on: the realistic path
    token = chain.deploy(w3, admin, "TestToken")
    escrow.send(admin, "setTokenAllowed", token, True)
    erc20 = w3.eth.contract(address=token, abi=chain.artifact("TestToken")["abi"])
    w3.eth.wait_for_transaction_receipt(erc20.functions.mint(client.address, 10**15).transact(
        {"from": admin.address}))
    result = chain.result_hash(["sha256:" + "ab" * 32])
    expiry = w3.eth.get_block("latest")["timestamp"] + 86_400

    def funded() -> tuple[bytes, int]:
        key = job_key(chain_id=node.chain_id, contract=escrow.address, client=client.address,
                      job_id="bench", salt=secrets.token_bytes(32))
        quote = FundingQuote(key, client.address, token, AMOUNT, 86_400, expiry)
        receipt = escrow.fund(client, quote, sign_funding(admin, escrow.result_domain(), quote))
        return key, receipt.gas_used

    def release(key: bytes):
        return escrow.send(admin, "release", key, result, sign_result(worker, escrow, key, result))

    warm, _ = funded()                          # the balances and fee slot exist from here on
    escrow.send(admin, "assign", warm, worker.address, PRICE)
    release(warm)

    key, gas_fund = funded()
    gas_assign = escrow.send(admin, "assign", key, worker.address, PRICE).gas_used
    gas_release = release(key).gas_used
    refunded, _ = funded()
    escrow.send(admin, "assign", refunded, worker.address, PRICE)
    gas_refund = escrow.send(admin, "refund", refunded).gas_used

    keys = [funded()[0] for _ in range(BATCH)]
    assign_batch = escrow.send(admin, "assignBatch", keys, [worker.address] * BATCH,
                               [PRICE] * BATCH)
    release_batch = escrow.send(admin, "releaseBatch", keys, [result] * BATCH,
                                [sign_result(worker, escrow, k, result) for k in keys])
    return {"gas_fund": gas_fund, "gas_assign": gas_assign, "gas_release": gas_release,
            "gas_refund": gas_refund,
            "gas_per_job_single": gas_assign + gas_release,
            "gas_assign_batch_per_job": round(assign_batch.gas_used / BATCH),
            "gas_release_batch_per_job": round(release_batch.gas_used / BATCH),
            "gas_per_job_batched_contract": round(
                (assign_batch.gas_used + release_batch.gas_used) / BATCH)}
