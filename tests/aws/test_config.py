"""Settings fail closed: no stage's values by default, no unsigned requests off the local stage."""
import pytest

from chalicelib import config
from chalicelib.config import REQUIRED, ConfigError, stage_environment


@pytest.fixture
def environment(monkeypatch):
    config.settings.cache_clear()
    for name in [*REQUIRED, "PROOFLINE_ALLOW_UNSIGNED"]:
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
