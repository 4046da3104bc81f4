"""Keys from a secrets store, through Powertools Parameters against moto: Secrets Manager and
SSM SecureString, cached for a while and then read again (a rotated key takes over)."""
import time
import uuid

import boto3
import pytest
from eth_account import Account

from chalicelib import config

pytestmark = pytest.mark.stack


@pytest.fixture()
def aws_clients(stack, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", stack.info.aws_endpoint)
    session = boto3.session.Session()
    return {name: session.client(name, endpoint_url=stack.info.aws_endpoint,
                                 region_name=stack.info.region)
            for name in ("secretsmanager", "ssm")}


def test_a_key_from_secrets_manager_signs_as_that_account(aws_clients, monkeypatch):
    account = Account.create()
    name = f"proofline/test/router-{uuid.uuid4().hex[:8]}"
    aws_clients["secretsmanager"].create_secret(Name=name, SecretString=account.key.to_0x_hex())
    monkeypatch.delenv("PROOFLINE_ROUTER_KEY", raising=False)
    monkeypatch.setenv("PROOFLINE_ROUTER_KEY_SECRET", name)
    assert Account.from_key(config.secret("PROOFLINE_ROUTER_KEY")).address == account.address


def test_a_key_from_an_ssm_securestring_and_its_rotation(aws_clients, monkeypatch):
    first, second = Account.create(), Account.create()
    name = f"/proofline/test/verifier-{uuid.uuid4().hex[:8]}"
    ssm = aws_clients["ssm"]
    ssm.put_parameter(Name=name, Type="SecureString", Value=first.key.to_0x_hex())
    monkeypatch.delenv("PROOFLINE_VERIFIER_KEY", raising=False)
    monkeypatch.setenv("PROOFLINE_VERIFIER_KEY_PARAMETER", name)
    monkeypatch.setattr(config, "SECRET_MAX_AGE_S", 1)
    assert Account.from_key(config.secret("PROOFLINE_VERIFIER_KEY")).address == first.address
    ssm.put_parameter(Name=name, Type="SecureString", Value=second.key.to_0x_hex(), Overwrite=True)
    # Cached: the same key until the cache lapses, then the rotated one.
    assert Account.from_key(config.secret("PROOFLINE_VERIFIER_KEY")).address == first.address
    time.sleep(1.5)
    assert Account.from_key(config.secret("PROOFLINE_VERIFIER_KEY")).address == second.address


def test_a_missing_secret_names_every_place_it_looked(monkeypatch):
    for suffix in ("", "_SECRET", "_PARAMETER", "_KEYSTORE"):
        monkeypatch.delenv(f"PROOFLINE_REFUNDER_KEY{suffix}", raising=False)
    with pytest.raises(KeyError) as missing:
        config.secret("PROOFLINE_REFUNDER_KEY")
    assert "_SECRET" in str(missing.value) and "_PARAMETER" in str(missing.value)
