"""A local did:pkh identity: one Ethereum key in an encrypted keystore file.

The file is eth-account's Web3 Secret Storage JSON with one field added, `"proofline":
{"chain_id": N}`, so the DID (`did:pkh:eip155:<N>:<address>`) can be shown without the
passphrase. Other tools ignore the extra field, and `<NAME>_KEYSTORE` (see
`chalicelib.config.secret`) opens the same file, so an identity can fund and sign as the client.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from chalicelib.identity.signing import did_for

DEFAULT_CHAIN_ID = 31337
PASSPHRASE_ENV = "PROOFLINE_PASSPHRASE"


class IdentityError(Exception):
    pass


class KeystoreExists(IdentityError):
    pass


class WrongPassphrase(IdentityError):
    pass


@dataclass(frozen=True)
class Identity:
    account: LocalAccount
    chain_id: int

    @property
    def address(self) -> str:
        return self.account.address

    @property
    def did(self) -> str:
        return did_for(self.account.address, self.chain_id)


@dataclass(frozen=True)
class PublicIdentity:
    """What the keystore says without its passphrase: it names the key, it does not prove it."""
    address: str
    chain_id: int
    path: Path

    @property
    def did(self) -> str:
        return did_for(self.address, self.chain_id)


def default_keystore() -> Path:
    return Path.home() / ".proofline" / "identity.json"


def keystore_path(path: str | os.PathLike | None = None) -> Path:
    return Path(path).expanduser() if path else default_keystore()


def create_identity(path: str | os.PathLike | None, passphrase: str, *,
                    chain_id: int = DEFAULT_CHAIN_ID, force: bool = False) -> Identity:
    """A new key, encrypted under `passphrase` into `path` (mode 0600). KeystoreExists when
    the file is there and not `force`."""
    if not passphrase:
        raise IdentityError("an empty passphrase would leave the key unprotected")
    _check_chain_id(chain_id, "chain id")
    path = keystore_path(path)
    if path.exists() and not force:
        raise KeystoreExists(f"{path} already exists; pass --force to replace it")
    account = Account.create()
    keystore = Account.encrypt(account.key, passphrase)
    keystore["proofline"] = {"chain_id": chain_id}
    _write_private(path, json.dumps(keystore, indent=2) + "\n", replace=force)
    return Identity(account, chain_id)


def read_public(path: str | os.PathLike | None = None) -> PublicIdentity:
    path = keystore_path(path)
    keystore = _read(path)
    try:
        address = to_checksum_address("0x" + keystore["address"].removeprefix("0x"))
    except (KeyError, AttributeError, ValueError):
        raise IdentityError(f"{path} names no address (not a Web3 Secret Storage keystore "
                            "with one?)") from None
    return PublicIdentity(address, _chain_id(keystore, path), path)


def load_identity(path: str | os.PathLike | None = None,
                  passphrase: str | None = None) -> Identity:
    """The identity in `path` (default ~/.proofline/identity.json), opened with `passphrase`
    or else PROOFLINE_PASSPHRASE."""
    path = keystore_path(path)
    if passphrase is None:
        passphrase = os.environ.get(PASSPHRASE_ENV)
    if passphrase is None:
        raise IdentityError(f"opening {path} needs its passphrase ({PASSPHRASE_ENV})")
    keystore = _read(path)
    try:
        key = Account.decrypt(keystore, passphrase)
    except ValueError as exc:
        if "MAC mismatch" in str(exc):
            raise WrongPassphrase(f"wrong passphrase for {path}") from None
        raise IdentityError(f"{path} cannot be decrypted: {exc}") from None
    account = Account.from_key(key)
    stated = keystore.get("address")
    if stated and to_checksum_address("0x" + stated.removeprefix("0x")) != account.address:
        # `show` trusts the stated address; a file edited to name another one must not pass.
        raise IdentityError(f"{path} states address 0x{stated} but holds the key of "
                            f"{account.address}")
    return Identity(account, _chain_id(keystore, path))


def _read(path: Path) -> dict:
    try:
        keystore = json.loads(path.read_text())
    except FileNotFoundError:
        raise IdentityError(f"no keystore at {path}; make one with `proofline identity "
                            "create`") from None
    except (OSError, ValueError) as exc:
        raise IdentityError(f"{path} is not a readable keystore: {exc}") from None
    if not isinstance(keystore, dict) or not ({"crypto", "Crypto"} & keystore.keys()):
        raise IdentityError(f"{path} is not a Web3 Secret Storage keystore")
    return keystore


def _chain_id(keystore: dict, path: Path) -> int:
    # A keystore made by another tool has no chain id of ours: read as the local chain's.
    chain_id = (keystore.get("proofline") or {}).get("chain_id", DEFAULT_CHAIN_ID)
    _check_chain_id(chain_id, f"{path}: proofline.chain_id")
    return chain_id


def _check_chain_id(chain_id, what: str) -> None:
    if isinstance(chain_id, bool) or not isinstance(chain_id, int) or chain_id <= 0:
        raise IdentityError(f"{what} must be a positive integer, not {chain_id!r}")


def _write_private(path: Path, text: str, *, replace: bool) -> None:
    """Write a file only its owner can read, whole or not at all. Without `replace`, a file
    that appears meanwhile is kept and KeystoreExists raised (the link, unlike a check,
    cannot race)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:     # mkstemp makes the file 0600 before a byte of the key is in it
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise KeystoreExists(f"{path} already exists; pass --force to replace it") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
