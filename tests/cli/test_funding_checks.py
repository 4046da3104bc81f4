"""The CLI checks the escrow terms an API answers before it pays: a compromised or mistaken
API cannot make it fund a decoy contract, another chain, someone else's job, or more than
the client's max price. Each attempt is made for real against the stack's chain."""
import uuid

import click
import pytest
from conftest import fund_job, wait_for
from eth_account import Account
from web3 import Web3

from chalicelib.models import EscrowTerms
from chalicelib.settlement import chain
from chalicelib.settlement.chain import Escrow
from chalicelib.settlement.escrow import quote_of, sign_funding
from proofline import common

pytestmark = pytest.mark.stack


@pytest.fixture()
def configured(stack, monkeypatch):
    """This machine's configuration: the stage's chain and escrow, the client's key."""
    monkeypatch.setenv("PROOFLINE_CHAIN_ID", str(stack.info.chain_id))
    monkeypatch.setenv("PROOFLINE_ESCROW_ADDRESS", stack.info.escrow_address)
    monkeypatch.setenv("PROOFLINE_RPC_URL", stack.info.rpc_url)
    monkeypatch.setenv("PROOFLINE_CLIENT_KEY", stack.info.dev_keys["client"])
    return stack


@pytest.fixture()
def job(client_api, clip):
    slot = client_api.upload(clip)
    job, _ = client_api.submit({"kind": "media_probe", "input_uri": slot["input_uri"],
                                "payment_policy": "escrow_before_start", "max_price": "0.01"},
                               idempotency_key=str(uuid.uuid4()))
    return job


def refused(job, max_price="0.01") -> str:
    with pytest.raises(click.ClickException) as info:
        common.fund_escrow(job, max_price)
    return info.value.message


def test_a_decoy_contract_whose_router_signed_is_refused(configured, job):
    """The API names a contract the attacker deployed, with a quote its own router key signed."""
    w3 = Web3(Web3.HTTPProvider(configured.info.rpc_url))
    attacker = configured.anvil.accounts[8]
    decoy = Escrow(w3, chain.deploy(w3, attacker, "ProoflineEscrow", attacker.address,
                                    attacker.address))
    decoy.send(attacker, "grantRole", decoy.contract.functions.ROUTER_ROLE().call(), attacker.address)
    terms = EscrowTerms.model_validate(job["escrow"]).model_copy(update={"contract": decoy.address})
    signature = sign_funding(attacker, decoy.result_domain(), quote_of(terms))
    doctored = {**job, "escrow": {**terms.model_dump(), "quote_signature": "0x" + signature.hex()}}
    assert "this stage's escrow is" in refused(doctored)


def test_a_quote_not_signed_by_the_stages_router_is_refused(configured, job):
    impostor = Account.create()
    terms = EscrowTerms.model_validate(job["escrow"])
    w3 = Web3(Web3.HTTPProvider(configured.info.rpc_url))
    signature = sign_funding(impostor, Escrow(w3, terms.contract).result_domain(), quote_of(terms))
    doctored = {**job, "escrow": {**job["escrow"], "quote_signature": "0x" + signature.hex()}}
    assert f"signed by {impostor.address}" in refused(doctored)


def test_an_amount_over_the_max_price_or_another_chain_is_refused(configured, job):
    assert "over the max price" in refused(job, max_price="0.005")
    other_chain = {**job, "escrow": {**job["escrow"], "chain_id": 1}}
    assert "this stage settles on chain" in refused(other_chain)


def test_terms_for_another_client_are_refused(configured, job):
    other = {**job, "escrow": {**job["escrow"], "client": Account.create().address}}
    assert "not this key" in refused(other)


def test_honest_terms_are_funded_and_the_job_runs(configured, job, client_api):
    receipt = common.fund_escrow(job, "0.01")
    assert receipt.gas_used > 0
    assert wait_for(client_api, job["job_id"], timeout=90)["state"] == "settled"


def test_without_a_configured_escrow_the_cli_does_not_guess(stack, job, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)                          # no local stack state here
    monkeypatch.delenv("PROOFLINE_ESCROW_ADDRESS", raising=False)
    monkeypatch.setenv("PROOFLINE_RPC_URL", stack.info.rpc_url)
    monkeypatch.setenv("PROOFLINE_CLIENT_KEY", stack.info.dev_keys["client"])
    assert "never pays a contract the API names" in refused(job)
    fund_job(stack, job)                                 # tidy: the job still gets its money
