"""Sign-In with Ethereum and session tokens, as pure rules: what a replayed, foreign, stale,
forged or revoked sign-in or token gets."""
from __future__ import annotations

import time

import jwt
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from chalicelib.errors import Forbidden, InvalidRequest, Unauthorized
from chalicelib.identity import sessions
from chalicelib.identity.signing import MemoryNonceStore, did_for

DOMAIN, CHAIN = "proofline-test", 31337
NOW = time.time()


def signed_in(account, *, domain=DOMAIN, chain_id=CHAIN, now=NOW, message=None):
    message = message or sessions.sign_in_message(account.address, domain=domain,
                                                  uri="http://127.0.0.1:9/",
                                                  chain_id=chain_id, now=now)
    return message, account.sign_message(encode_defunct(text=message)).signature.to_0x_hex()


def verify(message, signature, *, nonces=None, now=NOW, domain=DOMAIN, chain_id=CHAIN):
    return sessions.verify_sign_in(message, signature, domain=domain, chain_id=chain_id,
                                   now=now, nonces=MemoryNonceStore() if nonces is None else nonces)


class Revoked:
    def __init__(self):
        self.before: dict[str, float] = {}

    def revoked_before(self, did):
        return self.before.get(did)

    def revoke(self, did, before, keep_until):
        self.before[did] = max(before, self.before.get(did, 0))


def test_a_sign_in_names_the_signers_did_once():
    account, nonces = Account.create(), MemoryNonceStore()
    message, signature = signed_in(account)
    assert verify(message, signature, nonces=nonces) == did_for(account.address, CHAIN)
    with pytest.raises(Unauthorized) as replayed:
        verify(message, signature, nonces=nonces)
    assert replayed.value.reason == "replayed_nonce"


@pytest.mark.parametrize("change, error, reason", [
    ({"domain": "proofline-prod"}, Forbidden, "wrong_domain"),      # made for another stage
    ({"chain_id": 1}, Forbidden, "wrong_chain"),
    ({"now": NOW - 3600}, Unauthorized, "expired"),                  # signed an hour ago
    ({"now": NOW + 600}, Unauthorized, "expired"),                   # dated in the future
])
def test_a_sign_in_for_another_stage_chain_or_time_is_refused(change, error, reason):
    message, signature = signed_in(Account.create(), **change)
    with pytest.raises(error) as refused:
        verify(message, signature)
    assert refused.value.reason == reason


def test_a_message_signed_by_another_key_or_edited_after_signing_is_refused():
    victim, attacker = Account.create(), Account.create()
    message, _ = signed_in(victim)
    _, forged = signed_in(attacker, message=message)
    with pytest.raises(Unauthorized) as other_key:
        verify(message, forged)
    assert other_key.value.reason == "bad_signature"
    message, signature = signed_in(victim)
    edited = message.replace("Chain ID: 31337", "Chain ID: 31337 ")
    with pytest.raises((Unauthorized, InvalidRequest)):
        verify(edited, signature)


@pytest.mark.parametrize("message", ["", "hello", "x" * 5000, None, 7])
def test_a_malformed_sign_in_is_a_400(message):
    with pytest.raises(InvalidRequest) as bad:
        verify(message, "0x" + "00" * 65)
    assert bad.value.reason == "malformed_sign_in"


def test_a_token_reads_back_its_did_until_it_expires():
    ring, did = sessions.KeyRing.generate(), did_for(Account.create().address, CHAIN)
    token, issued = sessions.issue(ring, did, audience=DOMAIN, now=NOW, lifetime_s=120)
    assert sessions.read(ring, token, audience=DOMAIN, now=NOW + 60).did == did
    with pytest.raises(Unauthorized) as late:
        sessions.read(ring, token, audience=DOMAIN, now=issued.expires_at + 1)
    assert late.value.reason == "session_expired"


def test_a_lifetime_is_bounded():
    ring, did = sessions.KeyRing.generate(), did_for(Account.create().address, CHAIN)
    _, session = sessions.issue(ring, did, audience=DOMAIN, now=NOW, lifetime_s=10**9)
    assert session.expires_at - int(NOW) == sessions.MAX_SESSION_SECONDS


def test_a_token_of_another_stage_or_key_or_edited_is_invalid():
    ring, did = sessions.KeyRing.generate(), did_for(Account.create().address, CHAIN)
    token, _ = sessions.issue(ring, did, audience=DOMAIN, now=NOW)
    with pytest.raises(Unauthorized) as stage:
        sessions.read(ring, token, audience="proofline-prod", now=NOW)
    with pytest.raises(Unauthorized) as key:
        sessions.read(sessions.KeyRing.generate(), token, audience=DOMAIN, now=NOW)
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = jwt.encode({**claims, "sub": did_for(Account.create().address, CHAIN)},
                        "guessed-secret-guessed-secret-guessed", algorithm="HS256",
                        headers={"kid": ring.keys[0][0]})
    with pytest.raises(Unauthorized) as edited:
        sessions.read(ring, forged, audience=DOMAIN, now=NOW)
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": ring.keys[0][0]})
    with pytest.raises(Unauthorized) as none_alg:
        sessions.read(ring, unsigned, audience=DOMAIN, now=NOW)
    assert {e.value.reason for e in (stage, key, edited, none_alg)} == {"session_invalid"}


def test_keys_rotate_without_signing_everyone_out():
    old = sessions.KeyRing.generate("k1")
    did = did_for(Account.create().address, CHAIN)
    token, _ = sessions.issue(old, did, audience=DOMAIN, now=NOW)
    rotated = sessions.KeyRing(sessions.KeyRing.generate("k2").keys + old.keys)
    assert sessions.read(rotated, token, audience=DOMAIN, now=NOW).did == did
    fresh, _ = sessions.issue(rotated, did, audience=DOMAIN, now=NOW)
    assert jwt.get_unverified_header(fresh)["kid"] == "k2"
    retired = sessions.KeyRing(rotated.keys[:1])
    with pytest.raises(Unauthorized):
        sessions.read(retired, token, audience=DOMAIN, now=NOW)
    assert sessions.KeyRing.parse(rotated.serialize()) == rotated


def test_revoking_voids_sessions_issued_before_it_only():
    ring, did = sessions.KeyRing.generate(), did_for(Account.create().address, CHAIN)
    revoked = Revoked()
    before, _ = sessions.issue(ring, did, audience=DOMAIN, now=NOW)
    revoked.revoke(did, NOW + 1, keep_until=int(NOW) + 3600)
    after, _ = sessions.issue(ring, did, audience=DOMAIN, now=NOW + 2)
    with pytest.raises(Unauthorized) as void:
        sessions.read(ring, before, audience=DOMAIN, now=NOW + 3, revocations=revoked)
    assert void.value.reason == "session_revoked"
    assert sessions.read(ring, after, audience=DOMAIN, now=NOW + 3, revocations=revoked).did == did


@pytest.mark.parametrize("raw", ["", "k1", "k1:abcd", ":" + "00" * 32, "k1:zz"])
def test_a_key_ring_needs_named_long_keys(raw):
    with pytest.raises(ValueError):
        sessions.KeyRing.parse(raw)


@pytest.mark.parametrize("headers, token", [
    ({"Authorization": "Bearer abc"}, "abc"), ({"authorization": "bearer  abc "}, "abc"),
    ({"Authorization": "Basic abc"}, None), ({"Authorization": "Bearer"}, None), ({}, None)])
def test_bearer_tokens_are_read_from_the_authorization_header(headers, token):
    assert sessions.bearer(headers) == token
