"""The message bus: every handler sees a commit, and a handler's error is never swallowed."""
from datetime import datetime, timezone

import pytest

from chalicelib.bus import Committed, MessageBus
from chalicelib.models import Event, Job, Manifest, State

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def committed() -> Committed:
    job = Job(job_id="job-bus-1", kind="media_probe", state=State.ASSIGNED, version=2,
              manifest=Manifest(kind="media_probe", input_uri="s3://bucket-a/key.mp4"),
              payment_policy="none", max_attempts=3, correlation_id="c", source="http",
              created_at=NOW, updated_at=NOW)
    event = Event(job_id=job.job_id, seq=2, type="job.assigned", at=NOW, state=State.ASSIGNED,
                  correlation_id="c")
    return Committed(job.model_copy(update={"state": State.REQUESTED}), job, (event,))


def test_every_handler_sees_the_commit_in_order():
    seen = []
    bus = MessageBus([lambda p, c: seen.append(("a", c.after.job_id)),
                      lambda p, c: seen.append(("b", c.wrote("job.assigned"), c.moved()))])
    bus.publish(None, committed())
    assert seen == [("a", "job-bus-1"), ("b", True, True)]


def test_a_failing_handler_is_raised_after_the_others_ran():
    seen = []

    def broken(ports, commit):
        raise RuntimeError("queue unreachable")
    bus = MessageBus([broken, lambda p, c: seen.append("settlement asked")])
    with pytest.raises(RuntimeError, match="queue unreachable"):
        bus.publish(None, committed())
    assert seen == ["settlement asked"]


def test_several_failures_are_raised_together():
    def broken(ports, commit):
        raise ValueError("one")

    def also_broken(ports, commit):
        raise KeyError("two")
    with pytest.raises(ExceptionGroup) as raised:
        MessageBus([broken, also_broken]).publish(None, committed())
    assert [type(e) for e in raised.value.exceptions] == [ValueError, KeyError]
