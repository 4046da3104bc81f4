"""`proofline identity` as a user runs it, unattended: PROOFLINE_PASSPHRASE and a keystore of
the test's own (never ~/.proofline)."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from eth_account import Account

from chalicelib.identity.signing import address_of, did_for
from proofline.identity import IdentityError, WrongPassphrase, load_identity, read_public

PASSPHRASE = "correct horse battery staple"
REPO = Path(__file__).resolve().parents[2]


def run(*args, passphrase=PASSPHRASE, home=None, check=True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROOFLINE_")}
    if passphrase is not None:
        env["PROOFLINE_PASSPHRASE"] = passphrase
    if home is not None:
        env["HOME"] = str(home)
    result = subprocess.run([sys.executable, "-m", "proofline.cli", "identity", *args],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}\n"
                             f"{result.stderr}")
    return result


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    keystore = tmp_path_factory.mktemp("identity") / "nested" / "identity.json"
    created = json.loads(run("create", "--keystore", str(keystore), "--chain-id", "8453",
                             "--json").stdout)
    return keystore, created


def test_create_show_export_round_trip(made):
    keystore, created = made
    assert set(created) == {"did", "address"}
    assert created["did"] == did_for(created["address"], 8453)
    shown = json.loads(run("show", "--keystore", str(keystore), "--json", passphrase=None).stdout)
    assert shown == created
    exported = run("export", "--keystore", str(keystore), "--json")
    assert "private key" in exported.stderr
    secret = json.loads(exported.stdout)
    assert {k: secret[k] for k in ("did", "address")} == created
    assert Account.from_key(secret["private_key"]).address == address_of(created["did"])
    plain = run("export", "--keystore", str(keystore)).stdout.strip()
    assert plain == secret["private_key"]


def test_the_keystore_is_private_and_standard(made):
    keystore, created = made
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600
    content = json.loads(keystore.read_text())
    assert content["proofline"] == {"chain_id": 8453}
    assert PASSPHRASE not in keystore.read_text()
    assert bytes(Account.decrypt(content, PASSPHRASE)) == \
        bytes.fromhex(json.loads(run("export", "--keystore", str(keystore), "--json")
                                 .stdout)["private_key"][2:])
    assert [p.name for p in keystore.parent.iterdir()] == ["identity.json"]


def test_an_existing_keystore_is_not_overwritten(made, tmp_path):
    keystore, created = made
    before = keystore.read_bytes()
    refused = run("create", "--keystore", str(keystore), check=False)
    assert refused.returncode != 0 and "--force" in refused.stderr
    assert keystore.read_bytes() == before
    copy = tmp_path / "identity.json"
    copy.write_bytes(before)
    replaced = json.loads(run("create", "--keystore", str(copy), "--force", "--json").stdout)
    assert replaced["address"] != created["address"]
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert json.loads(copy.read_text())["proofline"] == {"chain_id": 31337}


def test_a_wrong_passphrase_exports_nothing(made):
    keystore, _ = made
    result = run("export", "--keystore", str(keystore), passphrase="guess", check=False)
    assert result.returncode != 0
    assert "wrong passphrase" in result.stderr and result.stdout == ""


def test_without_a_passphrase_or_terminal_it_says_what_is_missing(tmp_path):
    result = run("create", "--keystore", str(tmp_path / "k.json"), passphrase=None, check=False)
    assert result.returncode != 0 and "PROOFLINE_PASSPHRASE" in result.stderr
    assert not (tmp_path / "k.json").exists()


def test_the_default_keystore_lives_in_the_home_directory(tmp_path):
    created = json.loads(run("create", "--json", home=tmp_path).stdout)
    keystore = tmp_path / ".proofline" / "identity.json"
    assert read_public(keystore).did == created["did"] == did_for(created["address"], 31337)
    missing = run("show", home=tmp_path / "elsewhere", check=False)
    assert missing.returncode != 0 and "proofline identity create" in missing.stderr


def test_load_identity_opens_the_same_key(made, monkeypatch):
    keystore, created = made
    opened = load_identity(keystore, PASSPHRASE)
    assert (opened.address, opened.did, opened.chain_id) == \
        (created["address"], created["did"], 8453)
    with pytest.raises(WrongPassphrase):
        load_identity(keystore, "guess")
    monkeypatch.setenv("PROOFLINE_PASSPHRASE", PASSPHRASE)
    assert load_identity(keystore).address == created["address"]
    monkeypatch.delenv("PROOFLINE_PASSPHRASE")
    with pytest.raises(IdentityError, match="PROOFLINE_PASSPHRASE"):
        load_identity(keystore)


def test_the_keystore_serves_as_a_signer_keystore(made, monkeypatch):
    keystore, created = made
    from chalicelib.config import secret
    monkeypatch.delenv("PROOFLINE_CLIENT_KEY", raising=False)
    monkeypatch.setenv("PROOFLINE_CLIENT_KEY_KEYSTORE", str(keystore))
    monkeypatch.setenv("PROOFLINE_PASSPHRASE", PASSPHRASE)
    assert Account.from_key(secret("PROOFLINE_CLIENT_KEY")).address == created["address"]


def test_a_keystore_whose_address_was_edited_does_not_open(made, tmp_path):
    keystore, _ = made
    content = json.loads(keystore.read_text())
    content["address"] = "00" * 20
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(content))
    with pytest.raises(IdentityError, match="states address"):
        load_identity(edited, PASSPHRASE)
