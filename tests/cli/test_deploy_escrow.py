"""`proofline ops deploy-escrow` makes a stage's escrow on a fresh chain as the doctor expects
it: each role on its own key, the tokens allowed, the windows set, the start block printed —
and refuses a key doing two jobs."""
import json
import os
import subprocess
import sys

import pytest

from chalicelib.settlement.chain import Escrow, deploy
from proofline.anvil import Anvil
from proofline.devstack import free_port


@pytest.fixture(scope="module")
def chain():
    node = Anvil(free_port(), chain_id=84532, block_time=None).start()
    yield node
    node.stop()


def deploy_escrow_cli(chain, *args, admin=0):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PROOFLINE_")},
           "PROOFLINE_ADMIN_KEY": chain.accounts[admin].key.to_0x_hex(),
           "CHAIN_RPC_URL": chain.url}
    return subprocess.run([sys.executable, "-m", "proofline.cli", "ops", "deploy-escrow",
                           *args], env=env, capture_output=True, text=True, timeout=120)


def roles(chain):
    a = [x.address for x in chain.accounts]
    return ["--treasury", a[9], "--router", a[1], "--verifier", a[4], "--refunder", a[5],
            "--arbiter", a[6]]


def test_the_escrow_is_deployed_with_each_role_on_its_own_key(chain):
    token = deploy(chain.web3(), chain.accounts[0], "TestToken")
    done = deploy_escrow_cli(chain, *roles(chain), "--token", token, "--dispute-window", "3600",
                             "--arbitration-window", "86400", "--json")
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    assert made["CHAIN_ID"] == "84532"
    escrow = Escrow(chain.web3(), made["ESCROW_ADDRESS"])
    a = chain.accounts
    for role, holder in (("ROUTER_ROLE", a[1]), ("VERIFIER_ROLE", a[4]),
                         ("OPERATOR_ROLE", a[5]), ("ARBITER_ROLE", a[6])):
        assert escrow.has_role(role, holder.address)
        others = [x for x in (a[1], a[4], a[5], a[6]) if x is not holder]
        assert not any(escrow.has_role(role, x.address) for x in others), role
    assert escrow.contract.functions.allowedToken(token).call()
    assert escrow.windows() == (3600, 86400)
    # The follower starts at the deployment block: the code is there and not before it.
    w3 = chain.web3()
    block = int(made["CHAIN_START_BLOCK"])
    assert w3.eth.get_code(made["ESCROW_ADDRESS"], block) == \
        w3.eth.get_code(made["ESCROW_ADDRESS"]) != b""
    assert w3.eth.get_code(made["ESCROW_ADDRESS"], block - 1) == b""
    admin_role = escrow.contract.functions.DEFAULT_ADMIN_ROLE().call()
    assert made["admin"] == a[0].address
    assert escrow.contract.functions.hasRole(admin_role, a[0].address).call()


def test_a_key_holding_two_roles_is_refused(chain):
    args = roles(chain)
    args[args.index("--verifier") + 1] = args[args.index("--router") + 1]
    done = deploy_escrow_cli(chain, *args)
    assert done.returncode == 2 and "its own key" in done.stderr


def test_the_admin_holding_a_role_is_refused(chain):
    done = deploy_escrow_cli(chain, *roles(chain), admin=1)      # account 1 is the router
    assert done.returncode == 2 and "admin key" in done.stderr


def test_a_malformed_address_is_refused_before_any_transaction(chain):
    before = chain.web3().eth.block_number
    args = roles(chain)
    args[args.index("--treasury") + 1] = "0x1234"
    done = deploy_escrow_cli(chain, *args)
    assert done.returncode == 2 and "--treasury" in done.stderr
    assert chain.web3().eth.block_number == before
