"""Settings fail closed: no stage's values by default, no unsigned requests off the local stage."""
import pytest

from chalicelib import config
from chalicelib.config import REQUIRED, SECRETS, ConfigError, stage_environment


@pytest.fixture
def environment(monkeypatch):
    config.settings.cache_clear()
    for name in [*REQUIRED, *SECRETS, "PROOFLINE_ALLOW_UNSIGNED", "CHAIN_RPC_URL",
                 "ESCROW_ADDRESS", "CHAIN_ID", "PROOFLINE_INTAKE_CLIENTS"]:
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch
    config.settings.cache_clear()


def test_a_process_without_its_stage_environment_refuses_to_start(environment):
    with pytest.raises(ConfigError) as error:
        config.settings()
    assert "JOBS_TABLE" in str(error.value)


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_a_deployed_stage_runs_signed_only(environment, stage):
    for name, value in stage_environment(stage).items():
        environment.setenv(name, value)
    assert config.settings().allow_unsigned is False
    config.settings.cache_clear()
    environment.setenv("PROOFLINE_ALLOW_UNSIGNED", "true")
    with pytest.raises(ConfigError) as error:
        config.settings()
    assert "local" in str(error.value)


def test_the_local_stage_may_allow_unsigned_requests(environment):
    for name, value in stage_environment("local").items():
        environment.setenv(name, value)
    settings = config.settings()
    assert settings.stage == "local" and settings.allow_unsigned is True


def test_a_stage_that_settles_on_chain_must_name_its_chain(environment):
    for name, value in stage_environment("dev").items():
        environment.setenv(name, value)
    environment.setenv("CHAIN_RPC_URL", "http://127.0.0.1:8545")
    environment.setenv("ESCROW_ADDRESS", "0x" + "11" * 20)
    environment.delenv("CHAIN_ID", raising=False)
    with pytest.raises(ConfigError) as error:
        config.settings()
    assert "CHAIN_ID" in str(error.value)


@pytest.mark.parametrize("raw", ['{"intake/": "not-a-did"}', '["intake/"]', "{nope"])
def test_intake_client_mappings_must_name_dids(environment, raw):
    for name, value in stage_environment("dev").items():
        environment.setenv(name, value)
    environment.setenv("PROOFLINE_INTAKE_CLIENTS", raw)
    with pytest.raises(ConfigError):
        config.settings()


@pytest.mark.parametrize("name", SECRETS)
def test_a_deployed_stage_refuses_keys_in_plain_environment_variables(environment, name):
    for key, value in stage_environment("prod").items():
        environment.setenv(key, value)
    environment.setenv(name, "0x" + "11" * 32)
    with pytest.raises(ConfigError) as error:
        config.settings()
    assert name in str(error.value) and "secrets store" in str(error.value)
    config.settings.cache_clear()
    environment.delenv(name)
    environment.setenv(f"{name}_SECRET", "proofline/prod/key")     # where it should come from
    assert config.settings().stage == "prod"


def test_settings_name_the_variable_that_is_wrong(environment):
    for name, value in stage_environment("dev").items():
        environment.setenv(name, value)
    environment.setenv("PROOFLINE_LEASE_SECONDS", "soon")
    environment.setenv("CHAIN_LOG_RANGE", "0")
    with pytest.raises(ConfigError) as error:
        config.settings()
    assert "PROOFLINE_LEASE_SECONDS" in str(error.value)
    assert "CHAIN_LOG_RANGE" in str(error.value)


def test_blank_variables_read_as_their_defaults(environment):
    for name, value in stage_environment("dev").items():     # CHAIN_RPC_URL="" there
        environment.setenv(name, value)
    environment.setenv("CHAIN_CONFIRMATIONS", "")
    settings = config.settings()
    assert settings.chain_rpc_url is None and not settings.settlement_enabled
    assert settings.chain_confirmations == 12
    assert settings.session_domain == "proofline-dev"
    assert set(REQUIRED) <= set(config.VARIABLES)


def test_a_stage_read_from_a_mapping_ignores_this_process(environment):
    """`proofline doctor --stage dev` and the deploy rehearsal read a deployed stage's
    variables; the local stack's, in this shell, must not fill its gaps."""
    environment.setenv("PROOFLINE_ALLOW_UNSIGNED", "true")
    environment.setenv("CHAIN_ID", "31337")
    stage = {k: v for k, v in stage_environment("dev").items()
             if k not in ("PROOFLINE_ALLOW_UNSIGNED", "CHAIN_ID")}
    settings = config.stage_settings(stage)
    assert settings.allow_unsigned is False and settings.chain_id is None
