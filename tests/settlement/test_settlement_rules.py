"""Settlement rules without a chain: exact amounts, escrow terms and their deadline, prices
in the payment token, funding checks, what a client checks before it pays, and the evidence
a release needs."""
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from chalicelib.catalog import load
from chalicelib.errors import InvalidManifest, InvalidRequest, ProoflineError
from chalicelib.jobs.lifecycle import new_job
from chalicelib.models import Event, Manifest, Output, State
from chalicelib.settlement.money import from_base_units, to_base_units
from chalicelib.settlement.rules import (
    DEADLINE_MARGIN_S,
    EscrowStage,
    ReleaseBlocked,
    funding_problem,
    quote_problems,
    release_evidence,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
SHA = "sha256:" + "ab" * 32
CLIENT = "0x" + "c1" * 20
CLIENT_DID = f"did:pkh:eip155:31337:{CLIENT}"
STAGE = EscrowStage(chain_id=31337, contract=CONTRACT, dispute_s=600, countersign_s=3600)


@pytest.mark.parametrize("amount, decimals, units", [
    ("0.001", 18, 10**15), ("1", 6, 10**6), ("0", 18, 0),
    ("123456789.123456789123456789", 18, 123456789123456789123456789), (Decimal("2.5"), 6, 2_500_000)])
def test_amounts_convert_exactly(amount, decimals, units):
    assert to_base_units(amount, decimals) == units
    assert to_base_units(str(from_base_units(units, decimals)), decimals) == units


@pytest.mark.parametrize("amount", ["0.0000001", "-1", "abc", "NaN", "Infinity"])
def test_amounts_that_cannot_be_exact_are_refused(amount):
    with pytest.raises(InvalidRequest) as info:
        to_base_units(amount, 6)
    assert info.value.reason == "invalid_amount"


def escrow_job(salt=b"\1" * 32, **fields):
    fields.setdefault("client_did", CLIENT_DID)
    manifest = Manifest(kind="media_probe", input_uri="s3://bucket-a/x",
                        payment_policy="escrow_before_start", **fields)
    job, _ = new_job(manifest, catalog=load(), job_id="job-escrow1", source="http",
                     correlation_id="c", now=NOW, escrow=STAGE, salt=salt)
    return job


def test_escrow_terms_are_exact_base_units_under_a_salted_key():
    job = escrow_job(max_price="0.01")
    assert job.escrow.amount == 10**16 and job.escrow.chain_id == 31337
    assert job.escrow.job_key.startswith("0x") and len(job.escrow.job_key) == 66
    assert job.escrow.client.lower() == CLIENT
    assert job.state == State.REQUESTED
    assert escrow_job(max_price="0.01", salt=b"\2" * 32).escrow.job_key != job.escrow.job_key


def test_the_deadline_covers_every_attempt_the_countersign_and_dispute_windows():
    job = escrow_job(max_price="0.01")
    timeouts = load().job_class("media_probe").timeouts_s
    per_attempt = sum(v for k, v in timeouts.items() if k != State.REQUESTED)
    assert job.escrow.duration_s == per_attempt * job.max_attempts + 3600 + 600 + DEADLINE_MARGIN_S
    # The quote lasts as long as the job waits for its funding.
    assert job.escrow.quote_expiry == int(NOW.timestamp()) + timeouts[State.REQUESTED]


def test_an_escrow_job_needs_a_client_to_fund_it():
    with pytest.raises(InvalidManifest) as info:
        escrow_job(max_price="0.01", client_did=None)
    assert info.value.reason == "client_required"


def test_a_job_priced_over_its_ceiling_is_refused_at_the_door():
    with pytest.raises(InvalidManifest) as info:
        escrow_job(max_price="0.00000001")        # a probe is 0.00000004 ETH
    assert (info.value.status, info.value.reason) == (400, "price_above_ceiling")


def test_a_client_checks_the_terms_before_it_pays():
    terms = escrow_job(max_price="0.01").escrow.model_copy(update={"quote_signature": "0x01"})
    ok = dict(chain_id=31337, rpc_chain_id=31337, contract=CONTRACT, client=CLIENT, ceiling=10**16)
    assert quote_problems(terms, **ok) == []
    assert "contract" in quote_problems(terms, **{**ok, "contract": "0x" + "99" * 20})[0]
    assert "chain" in quote_problems(terms, **{**ok, "rpc_chain_id": 1})[0]
    assert "chain" in quote_problems(terms, **{**ok, "chain_id": 1})[0]
    assert "not this key" in quote_problems(terms, **{**ok, "client": "0x" + "77" * 20})[0]
    assert "over the max price" in quote_problems(terms, **{**ok, "ceiling": 10**16 - 1})[0]
    assert "no router signature" in quote_problems(
        terms.model_copy(update={"quote_signature": None}), **ok)[0]


@pytest.mark.parametrize("price", [None, "0"])
def test_an_escrow_job_needs_a_price(price):
    with pytest.raises(InvalidManifest) as info:
        escrow_job(**({"max_price": price} if price else {}))
    assert info.value.reason == "missing_price"


def test_funding_checks():
    terms = escrow_job(max_price="0.01").escrow
    assert funding_problem(terms, CLIENT, terms.token, 10**16) is None
    assert funding_problem(terms, CLIENT, terms.token, 10**16 + 1) is None
    assert "needs" in funding_problem(terms, CLIENT, terms.token, 10**16 - 1)
    assert "priced in" in funding_problem(terms, CLIENT, CONTRACT, 10**16)
    assert "client is" in funding_problem(terms, CONTRACT, terms.token, 10**16)


def passed(sha):
    return Event(job_id="job-escrow1", seq=5, type="validation.passed", at=NOW,
                 state=State.VERIFIED, correlation_id="c", data={"measured": {"sha256": sha}})


def test_release_needs_validation_of_exactly_the_outputs_paid_for():
    job = escrow_job(max_price="0.01").model_copy(update={
        "state": State.VERIFIED,
        "outputs": [Output(name="probe.json", uri="s3://b/k", sha256=SHA, size_bytes=3)]})
    assert release_evidence(job, [passed(SHA)]) == [SHA]
    with pytest.raises(ReleaseBlocked):
        release_evidence(job, [passed("sha256:" + "cd" * 32)])
    with pytest.raises(ReleaseBlocked):
        release_evidence(job, [])
    with pytest.raises(ReleaseBlocked):
        release_evidence(job.model_copy(update={"outputs": []}), [passed(SHA)])


def test_reconcile_classification():
    from chalicelib.settlement.chain import EscrowState as C
    from chalicelib.settlement.reconcile import classify
    assert classify("j", State.SETTLED, True, False, C.RELEASED) is None
    assert classify("j", State.SETTLED, True, False, C.ASSIGNED).kind == "settled_but_not_released_on_chain"
    assert classify("j", State.FAILED, True, False, C.FUNDED).repair == "refund"
    assert classify("j", State.FAILED, True, False, C.REFUNDED).kind == "refunded_on_chain_not_recorded"
    assert classify("j", State.FAILED, True, True, C.REFUNDED) is None
    assert classify("j", State.REQUESTED, False, False, C.FUNDED).kind == "funded_not_seen"
    assert classify("j", State.REQUESTED, False, False, C.NONE) is None


def test_disputes_and_resolutions_on_chain_are_drift_until_recorded():
    from chalicelib.settlement.chain import EscrowState as C
    from chalicelib.settlement.reconcile import classify
    assert classify("j", State.VERIFIED, True, False, C.VERIFIED) is None   # window open: scheduled
    assert classify("j", State.VERIFIED, True, False, C.DISPUTED).kind == "dispute_not_recorded"
    assert classify("j", State.DISPUTED, True, False, C.RESOLVED).kind == "resolution_not_recorded"
    assert classify("j", State.SETTLED, True, False, C.RESOLVED) is None


def test_a_price_is_converted_exactly_in_the_payment_tokens_units():
    from chalicelib.config import NATIVE_TOKEN, PaymentToken
    from chalicelib.settlement.rules import terms
    tokens = {"ETH": NATIVE_TOKEN, "PUSD": PaymentToken("PUSD", "0x" + "11" * 20, 6)}
    manifest = Manifest(kind="media_probe", input_uri="s3://bucket/k", max_price="0.000001",
                        payment_token="PUSD", client_did=CLIENT_DID)
    shared = dict(job_id="job-1", salt=b"\0" * 32, stage=STAGE, max_attempts=1, now_s=0,
                  job_class=load().job_class("media_probe"), tokens=tokens)
    agreed = terms(manifest, **shared)
    assert (agreed.amount, agreed.token, agreed.decimals) == (1, "0x" + "11" * 20, 6)
    too_fine = manifest.model_copy(update={"max_price": Decimal("0.0000001")})
    with pytest.raises(ProoflineError) as refused:
        terms(too_fine, **shared)
    assert refused.value.reason == "invalid_amount"


def test_prices_are_in_the_payment_token_from_the_catalog():
    from chalicelib.settlement import pricing
    catalog = load()
    embed = catalog.job_class("embed_batch")
    texts = pricing.items(Manifest(kind="embed_batch", texts=["a"] * 100))
    # 0.5 s + 100 x 0.002 s at 0.000164 PUSD/s, rounded up to the token's 6 places.
    assert pricing.work_price(embed, texts, "PUSD", 6) == Decimal("0.000115")
    assert pricing.work_price(embed, texts, "ETH", 18) == Decimal("0.7") * Decimal("0.0000000656")
    with pytest.raises(InvalidManifest) as unpriced:
        pricing.work_price(embed, texts, "DOGE", 8)
    assert unpriced.value.reason == "unpriced_token"


def test_keys_open_from_an_encrypted_keystore(tmp_path, monkeypatch):
    import json

    from eth_account import Account

    from chalicelib.config import secret
    account = Account.create()
    (tmp_path / "router.json").write_text(json.dumps(Account.encrypt(account.key, "s3cret",
                                                                      iterations=2)))
    monkeypatch.delenv("PROOFLINE_ROUTER_KEY", raising=False)
    monkeypatch.setenv("PROOFLINE_ROUTER_KEY_KEYSTORE", str(tmp_path / "router.json"))
    monkeypatch.setenv("PROOFLINE_PASSPHRASE", "s3cret")
    assert Account.from_key(secret("PROOFLINE_ROUTER_KEY")).address == account.address
    monkeypatch.setenv("PROOFLINE_PASSPHRASE", "wrong")
    with pytest.raises(ValueError):
        secret("PROOFLINE_ROUTER_KEY")
    monkeypatch.delenv("PROOFLINE_PASSPHRASE")
    with pytest.raises(KeyError):
        secret("PROOFLINE_ROUTER_KEY")


def test_a_quote_before_submitting_uses_the_same_rates_as_the_charge():
    from chalicelib.config import NATIVE_TOKEN, PaymentToken
    from chalicelib.models import TranscodePlan
    from chalicelib.settlement import pricing
    tokens = {"ETH": NATIVE_TOKEN, "PUSD": PaymentToken("PUSD", "0x" + "11" * 20, 6)}
    source = {"duration_s": 10.0, "width": 1280, "height": 720, "size_bytes": 2_000_000}
    asked = pricing.quote(pricing.QuoteRequest(kind="ffmpeg_hls", profile="hls-720p",
                                               payment_token="PUSD", source=source),
                          catalog=load(), tokens=tokens)
    # The plan the media pool would make of that source is charged exactly the quote.
    plan = TranscodePlan(profile="hls-720p", container="hls", segment_s=4, fps="30",
                         duration_s=10.0, renditions=[], has_audio=True, command_template={},
                         segments=[{"size_bytes": 2_000_000}],
                         split={"source": {"width": 1280, "height": 720, "rotation": 0}})
    charged = pricing.transcode_price(plan, "PUSD", 6).total
    assert Decimal(asked["price"]) == charged and asked["symbol"] == "PUSD"
    assert asked["price_units"] == to_base_units(charged, 6) > 0
    embed = pricing.quote(pricing.QuoteRequest(kind="embed_batch", texts=100, payment_token="PUSD"),
                          catalog=load(), tokens=tokens)
    assert embed["price"] == "0.000115"
    with pytest.raises(InvalidRequest) as missing:
        pricing.quote(pricing.QuoteRequest(kind="ffmpeg_hls"), catalog=load(), tokens=tokens)
    assert missing.value.reason == "missing_source"


def test_a_marketplace_payee_that_fails_its_own_whole_job_loses_it_once():
    from chalicelib.jobs.lifecycle import assign
    catalog = load()
    payee = "did:pkh:eip155:31337:0x" + "ab" * 20
    for kind, fields, moves in (("embed_batch", {"texts": ["a", "b"]}, True),
                                ("ffmpeg_hls", {"input_uri": "s3://bucket-a/k.mp4"}, False)):
        manifest = Manifest(kind=kind, payment_policy="escrow_before_start", max_price="0.01",
                            client_did=CLIENT_DID, **fields)
        job, job_class = new_job(manifest, catalog=catalog, job_id=f"job-{kind}", source="http",
                                 correlation_id="c", now=NOW, escrow=STAGE)
        retried = job.model_copy(update={"worker": payee, "attempt": 1})
        again, attempt, _ = assign(retried, job_class, NOW)
        if moves:      # its own attempt failed: the pool redoes it, the escrow moves once
            assert again.worker == attempt.worker == "pool:inference"
            assert again.escrow.reassigned is True
        else:          # a transcode's job-level attempt is the pool's: the payee keeps it
            assert again.worker == payee and again.escrow.reassigned is False
