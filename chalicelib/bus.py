"""The message bus: what happens after a job's transition is committed.

The lifecycle commits a transition and its events in one transaction, then hands the commit
to the handlers the capabilities registered (`ports.default()` wires them): dispatching an
assigned attempt, asking the chain to settle, closing a challenge, counting outcomes. The
lifecycle never imports them, so the capabilities depend on it and not the other way round.

Every handler sees every commit and ignores what is not its business. A handler's error is
never swallowed: the other handlers still run, then the error is raised to the caller (an
SQS record is retried, an HTTP request answers 5xx). Work a crash leaves undone after a
commit is finished by the sweeper, which finds the job past its state's deadline.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from chalicelib.models import Attempt, Event, Job


@dataclass(frozen=True)
class Committed:
    """One committed change of a job: as it was (None when just created), as it is now,
    the events written with it and the attempts it wrote."""
    before: Job | None
    after: Job
    events: tuple[Event, ...]
    attempts: tuple[Attempt, ...] = ()

    def moved(self) -> bool:
        return self.before is None or self.before.state != self.after.state

    def wrote(self, event_type: str) -> bool:
        return any(e.type == event_type for e in self.events)


# A handler gets the Ports the commit was made with, and the commit.
Handler = Callable[[Any, Committed], None]


class MessageBus:
    def __init__(self, handlers: Sequence[Handler] = ()):
        self.handlers = tuple(handlers)

    def publish(self, ports: Any, committed: Committed) -> None:
        errors = []
        for handler in self.handlers:
            try:
                handler(ports, committed)
            except Exception as error:  # noqa: BLE001 - collected, then raised below
                errors.append(error)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ExceptionGroup(f"{len(errors)} after-commit handlers failed for job "
                                 f"{committed.after.job_id}", errors)
