"""Every function the control plane deploys is sized in `.chalice/config.json`: memory above
what importing the app takes, a timeout its queue's visibility outlasts (else a message is
handed out again while it is still being handled), and the chain's signers serialised."""
import json
from pathlib import Path

import pytest

from chalicelib.aws.resources import RESOURCES

ROOT = Path(__file__).resolve().parents[2]
CONFIG = json.loads((ROOT / ".chalice" / "config.json").read_text())
IMPORT_MB = 128          # `import app` alone takes ~100 MB: Chalice's default leaves no room


def chalice_functions() -> dict[str, str | None]:
    """Function name → the queue setting it consumes (None for the API, authorizer, schedules)."""
    from chalice.app import SQSEventConfig

    import app
    functions = {"api_handler": None, "session_authorizer": None}
    for source in app.app.event_sources:
        queue = None
        if isinstance(source, SQSEventConfig):
            queue = next(q.setting for q in RESOURCES.queues
                         if getattr(app.config.settings(), q.setting) == source.queue)
        functions[source.name] = queue
    return functions


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_every_deployed_function_is_sized(stage):
    sized = CONFIG["stages"][stage]["lambda_functions"]
    functions = chalice_functions()
    assert set(sized) == set(functions)
    for name, queue in functions.items():
        size = sized[name]
        assert size["lambda_memory_size"] > IMPORT_MB, name
        if queue:
            assert size["lambda_timeout"] < RESOURCES.queue(queue).visibility_timeout, name
    # One settlement handler and one follower at a time: one nonce sequence per signer, one
    # cursor.
    assert sized["on_settlement"]["reserved_concurrency"] == 1
    assert sized["follow_chain"]["reserved_concurrency"] == 1
