"""Gas of the escrow's hot paths, from receipts on anvil: fund, release, refund, and release
in batches of 50."""
from __future__ import annotations

from chalicelib.settlement import chain
from chalicelib.settlement.chain import Escrow
from chalicelib.settlement.escrow import job_key, sign_result
from proofline.anvil import Anvil
from proofline.devstack import free_port

BATCH = 50
AMOUNT = 10**16


def run() -> dict[str, float]:
    node = Anvil(free_port()).start()
    try:
        return _measure(node)
    finally:
        node.stop()


def _measure(node: Anvil) -> dict[str, float]:
    w3 = node.web3()
    admin, client, worker, treasury = node.accounts[0], node.accounts[5], node.accounts[6], node.accounts[9]
    escrow = Escrow(w3, chain.deploy(w3, admin, "ProoflineEscrow", admin.address, treasury.address))
    for role in ("ROUTER_ROLE", "VERIFIER_ROLE", "OPERATOR_ROLE"):
        escrow.send(admin, "grantRole", getattr(escrow.contract.functions, role)().call(), admin.address)
    escrow.send(admin, "setFee", 100, treasury.address)        # fees on: the realistic path
    deadline = w3.eth.get_block("latest")["timestamp"] + 86_400
    result = chain.result_hash(["sha256:" + "ab" * 32])

    def assigned(name: str) -> bytes:
        job = job_key(name)
        fund = escrow.fund(client, job, AMOUNT, deadline)
        escrow.send(admin, "assign", job, worker.address)
        return job, fund.gas_used

    warm, _ = assigned("bench-warm")                             # fee slot and worker warmed once
    escrow.send(admin, "release", warm, result, sign_result(worker, escrow, warm, result))

    job, gas_fund = assigned("bench-single")
    gas_release = escrow.send(admin, "release", job, result,
                              sign_result(worker, escrow, job, result)).gas_used
    refunded, _ = assigned("bench-refund")
    gas_refund = escrow.send(admin, "refund", refunded).gas_used

    jobs = [assigned(f"bench-batch-{i}")[0] for i in range(BATCH)]
    batch = escrow.send(admin, "releaseBatch", jobs, [result] * BATCH,
                        [sign_result(worker, escrow, j, result) for j in jobs])
    return {"gas_fund": gas_fund, "gas_release": gas_release, "gas_refund": gas_refund,
            "gas_release_batch_per_job": round(batch.gas_used / BATCH)}
