"""`proofline identity`: the did:pkh key that signs your requests, pays for jobs and is paid
for work, kept in an encrypted keystore."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from . import identity as ids

keystore_option = click.option(
    "--keystore", type=click.Path(dir_okay=False, path_type=Path),
    help="Keystore file (default: ~/.proofline/identity.json).")
json_option = click.option("--json", "as_json", is_flag=True)


@click.group()
def identity():
    """Create, show and export your did:pkh identity."""


@identity.command("create")
@keystore_option
@click.option("--chain-id", default=ids.DEFAULT_CHAIN_ID, show_default=True,
              type=click.IntRange(min=1), help="The chain the DID names.")
@click.option("--force", is_flag=True, help="Replace an existing keystore (its key is lost).")
@json_option
def identity_create(keystore, chain_id, force, as_json):
    """Make a new key, encrypted under a passphrase (PROOFLINE_PASSPHRASE, or asked twice)."""
    path = ids.keystore_path(keystore)
    if path.exists() and not force:      # before the prompt: no passphrase typed for nothing
        raise click.ClickException(f"{path} already exists; pass --force to replace it")
    passphrase = _passphrase(confirm=True)
    made = _run(lambda: ids.create_identity(path, passphrase, chain_id=chain_id, force=force))
    if as_json:
        click.echo(json.dumps({"did": made.did, "address": made.address}, indent=2))
        return
    click.echo(f"created a new key in {path} (mode 0600); keep its passphrase: without it "
               "the key cannot be used", err=True)
    _show(made.did, made.address, path)


@identity.command("show")
@keystore_option
@json_option
def identity_show(keystore, as_json):
    """The DID and address (no passphrase needed)."""
    public = _run(lambda: ids.read_public(keystore))
    if as_json:
        click.echo(json.dumps({"did": public.did, "address": public.address}, indent=2))
        return
    _show(public.did, public.address, public.path)


@identity.command("export")
@keystore_option
@json_option
def identity_export(keystore, as_json):
    """Print the private key (after the passphrase)."""
    passphrase = _passphrase(confirm=False)
    opened = _run(lambda: ids.load_identity(keystore, passphrase))
    click.echo(f"warning: this is the private key of {opened.did}; whoever sees it can sign "
               "and spend as you", err=True)
    key = "0x" + bytes(opened.account.key).hex()
    if as_json:
        click.echo(json.dumps({"did": opened.did, "address": opened.address,
                               "private_key": key}, indent=2))
    else:
        click.echo(key)


def _passphrase(*, confirm: bool) -> str:
    passphrase = os.environ.get(ids.PASSPHRASE_ENV)
    if passphrase is not None:
        return passphrase
    if not sys.stdin.isatty():
        raise click.ClickException(f"no passphrase: set {ids.PASSPHRASE_ENV} or run this on "
                                   "a terminal")
    return click.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm)


def _run(call):
    try:
        return call()
    except ids.IdentityError as exc:
        raise click.ClickException(str(exc)) from None


def _show(did: str, address: str, path: Path) -> None:
    click.echo(f"did       {did}\naddress   {address}\nkeystore  {path}")
