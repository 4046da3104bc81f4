"""Signed requests: who may act for a did:pkh, checked without a server."""
import pytest
from eth_account import Account

from chalicelib.errors import Forbidden, Unauthorized
from chalicelib.identity import signing
from chalicelib.identity.signing import MemoryNonceStore, did_for, sign_request, verify_request

CHAIN = 31337
NOW = 1_700_000_000
BODY = {"task_id": "task-1", "outputs": ["sha256:" + "ab" * 32, "sha256:" + "cd" * 32]}


@pytest.fixture(scope="module")
def worker():
    return Account.from_key("0x" + "11" * 32)


@pytest.fixture(scope="module")
def stranger():
    return Account.from_key("0x" + "22" * 32)


@pytest.fixture
def nonces():
    return MemoryNonceStore()


def signed(account, *, did=None, body=BODY, action="result", chain_id=CHAIN, **kw):
    return sign_request(account, action=action, did=did or did_for(account.address, chain_id),
                        body=body, chain_id=chain_id, now=NOW, **kw)


def verify(headers, nonces, *, body=BODY, action="result", now=NOW, **kw):
    return verify_request(headers, action=action, body=body, chain_id=CHAIN, now=now,
                          nonces=nonces, **kw)


def refused(error, reason, status, call):
    with pytest.raises(error) as caught:
        call()
    assert (caught.value.reason, caught.value.status) == (reason, status), caught.value.message
    return caught.value


def forged(account, did, *, nonce=7, expiry=NOW + 60, body=BODY, action="result"):
    """A request claiming `did`, signed by whoever `account` is."""
    message = signing.request_typed_data(action=action, did=did, body=body, chain_id=CHAIN,
                                         nonce=nonce, expiry=expiry)
    signature = Account.sign_typed_data(account.key, full_message=message).signature
    return {"X-Proofline-Did": did, "X-Proofline-Nonce": str(nonce),
            "X-Proofline-Expiry": str(expiry),
            "X-Proofline-Signature": "0x" + bytes(signature).hex()}


def test_a_signed_request_verifies_as_its_did(worker, nonces):
    headers = signed(worker)
    assert set(headers) == {"X-Proofline-Did", "X-Proofline-Nonce", "X-Proofline-Expiry",
                            "X-Proofline-Signature"}
    assert int(headers["X-Proofline-Expiry"]) == NOW + signing.DEFAULT_LIFETIME_S
    assert verify(headers, nonces) == f"did:pkh:eip155:{CHAIN}:{worker.address}"
    assert verify(signed(worker), nonces, expected_did=did_for(worker.address, CHAIN).lower())


def test_key_order_and_whitespace_do_not_matter_but_the_content_does(worker, nonces):
    reordered = {"outputs": BODY["outputs"], "task_id": "task-1"}
    assert verify(signed(worker), nonces, body=reordered)
    assert signing.canonical_body(reordered) == signing.canonical_body(BODY)


@pytest.mark.parametrize("change", [
    {"task_id": "task-2"},
    {"outputs": BODY["outputs"][:1]},
    {"extra": True},
])
def test_a_changed_body_is_not_signed_by_the_did(worker, nonces, change):
    # The signature still recovers, but to an unrelated address: the digest it is checked
    # against is another one. So the failure is wrong_signer (403), not bad_signature (401),
    # which is kept for signatures that cannot be parsed or recovered at all.
    headers = signed(worker)
    refused(Forbidden, "wrong_signer", 403,
            lambda: verify(headers, nonces, body={**BODY, **change}))
    assert verify(headers, nonces) == did_for(worker.address, CHAIN)


def test_a_signature_for_one_action_does_not_pass_for_another(worker, nonces):
    headers = signed(worker, action="heartbeat", body={})
    refused(Forbidden, "wrong_signer", 403,
            lambda: verify(headers, nonces, action="cancel", body={}))


def test_another_key_cannot_claim_the_did(worker, stranger, nonces):
    did = did_for(worker.address, CHAIN)
    refused(Forbidden, "wrong_signer", 403, lambda: verify(forged(stranger, did), nonces))
    with pytest.raises(ValueError):
        signed(stranger, did=did)


def test_only_the_expected_did_may_sign(worker, stranger, nonces):
    headers = signed(stranger)
    refused(Forbidden, "wrong_signer", 403,
            lambda: verify(headers, nonces, expected_did=did_for(worker.address, CHAIN)))
    assert len(nonces) == 0


def test_expired_and_far_future_signatures_are_refused(worker, nonces):
    headers = signed(worker, expiry=NOW + 10)
    assert verify(headers, MemoryNonceStore(), now=NOW + 10)
    refused(Unauthorized, "expired", 401, lambda: verify(headers, nonces, now=NOW + 11))
    far = signed(worker, expiry=NOW + signing.MAX_LIFETIME_S + 1)
    refused(Unauthorized, "expired", 401, lambda: verify(far, nonces))
    assert len(nonces) == 0


def test_a_replayed_request_is_refused(worker, nonces):
    headers = signed(worker)
    verify(headers, nonces)
    refused(Unauthorized, "replayed_nonce", 401, lambda: verify(headers, nonces))
    nonce = int(headers["X-Proofline-Nonce"])
    assert verify(signed(worker, nonce=nonce + 1), nonces)


def test_nonces_are_per_did(worker, stranger, nonces):
    assert verify(signed(worker, nonce=5), nonces)
    assert verify(signed(stranger, nonce=5), nonces)


def test_a_forged_request_does_not_burn_the_nonce(worker, stranger, nonces):
    did = did_for(worker.address, CHAIN)
    refused(Forbidden, "wrong_signer", 403, lambda: verify(forged(stranger, did, nonce=9), nonces))
    bad = {**signed(worker, nonce=9), "X-Proofline-Signature": "0x" + "00" * 65}
    refused(Unauthorized, "bad_signature", 401, lambda: verify(bad, nonces))
    assert len(nonces) == 0
    assert verify(signed(worker, nonce=9), nonces) == did


def test_a_did_on_another_chain_is_refused(worker, nonces):
    headers = signed(worker, chain_id=1)
    assert headers["X-Proofline-Did"].startswith("did:pkh:eip155:1:")
    refused(Forbidden, "wrong_chain", 403, lambda: verify(headers, nonces))
    with pytest.raises(ValueError):
        sign_request(worker, action="result", did=did_for(worker.address, 1), body=BODY,
                     chain_id=CHAIN)


@pytest.mark.parametrize("missing", ["X-Proofline-Did", "X-Proofline-Nonce",
                                     "X-Proofline-Expiry", "X-Proofline-Signature"])
def test_each_header_is_required(worker, nonces, missing):
    headers = {k: v for k, v in signed(worker).items() if k != missing}
    error = refused(Unauthorized, "missing_signature", 401, lambda: verify(headers, nonces))
    assert error.details == {"missing": [missing]}
    refused(Unauthorized, "missing_signature", 401, lambda: verify({}, nonces))
    refused(Unauthorized, "missing_signature", 401,
            lambda: verify({**headers, missing: "  "}, nonces))


@pytest.mark.parametrize("header,value", [
    ("X-Proofline-Signature", "0x1234"),
    ("X-Proofline-Signature", "zz" * 65),
    ("X-Proofline-Signature", "0x" + "ff" * 65),          # r and s out of range: unrecoverable
    ("X-Proofline-Nonce", "-1"),
    ("X-Proofline-Nonce", "0x10"),
    ("X-Proofline-Nonce", str(2**256)),
    ("X-Proofline-Expiry", "soon"),
    ("X-Proofline-Did", "did:pkh:eip155:31337:0x1234"),
    ("X-Proofline-Did", "did:key:z6Mk"),
])
def test_malformed_headers_are_bad_signatures(worker, nonces, header, value):
    headers = {**signed(worker), header: value}
    refused(Unauthorized, "bad_signature", 401, lambda: verify(headers, nonces))
    assert len(nonces) == 0


def test_header_names_are_case_insensitive(worker, nonces):
    headers = signed(worker)
    lower = {k.lower(): v for k, v in headers.items()}
    assert verify(lower, nonces) == headers["X-Proofline-Did"]
    upper = {k.upper(): v for k, v in signed(worker).items()}
    assert verify(upper, nonces) == headers["X-Proofline-Did"]
    both = {**signed(worker), "x-proofline-nonce": "1"}
    refused(Unauthorized, "bad_signature", 401, lambda: verify(both, nonces))


def test_the_did_comes_back_canonical(worker, nonces):
    lower = f"did:pkh:eip155:{CHAIN}:{worker.address.lower()}"
    assert verify(signed(worker, did=lower), nonces) == did_for(worker.address, CHAIN)


def test_did_helpers():
    address = Account.from_key("0x" + "11" * 32).address
    did = did_for(address.lower(), 8453)
    assert did == f"did:pkh:eip155:8453:{address}"
    assert signing.address_of(did) == address and signing.parse_did(did) == (8453, address)
    bad_checksum = address[:2] + address[2:].swapcase()
    for bad in ["did:pkh:eip155:1", f"did:pkh:eip155:0:{address}", f"did:pkh:solana:1:{address}",
                f"did:pkh:eip155:1:{bad_checksum}", None]:
        with pytest.raises(ValueError):
            signing.address_of(bad)
    with pytest.raises(ValueError):
        did_for("0x1234", 1)
    with pytest.raises(ValueError):
        did_for(address, 0)


def test_the_typed_data_is_what_a_wallet_signs(worker):
    headers = signed(worker, nonce=3, expiry=NOW + 60)
    message = signing.request_typed_data(action="result", did=headers["X-Proofline-Did"],
                                         body=BODY, chain_id=CHAIN, nonce=3, expiry=NOW + 60)
    assert message["domain"] == {"name": "Proofline", "version": "1", "chainId": CHAIN}
    assert message["message"]["bodyHash"] == signing.body_hash(BODY)
    assert worker.sign_typed_data(full_message=message).signature.hex() == \
        headers["X-Proofline-Signature"].removeprefix("0x")
    with pytest.raises(ValueError):
        signing.request_typed_data(action="withdraw", did=headers["X-Proofline-Did"], body={},
                                   chain_id=CHAIN, nonce=1, expiry=NOW)


def test_the_memory_store_forgets_only_what_has_expired():
    store = MemoryNonceStore()
    assert store.use("a", 1, NOW) and store.use("a", 2, NOW + 100)
    assert not store.use("a", 1, NOW)
    assert store.used("a", 1) and not store.used("a", 3) and not store.used("b", 1)
    store.prune(NOW + 1)
    assert not store.used("a", 1) and store.used("a", 2)
    assert store.use("a", 1, NOW) and not store.use("a", 2, NOW + 100)
