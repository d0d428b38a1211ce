"""Per-job mailboxes (``dispatching.mailbox``): one drain per job at a time, in order; a
handler that raises has its mail delivered again later, then dropped."""

from __future__ import annotations

from collections.abc import Callable

from dispatcher.core.lifecycle import Event
from dispatcher.dispatching.mailbox import MAX_RETRIES, Mail, Mailboxes


class Runner:
    """Functions wait until the test runs them."""

    def __init__(self) -> None:
        self.queue: list[Callable[[], None]] = []

    def submit(self, fn: Callable[[], None]) -> None:
        self.queue.append(fn)

    def run_all(self) -> None:
        while self.queue:
            self.queue.pop(0)()


def boxes(handle: Callable[[str, Mail], None], clock: list[float]) -> tuple[Mailboxes, Runner]:
    runner = Runner()
    return Mailboxes(runner, handle, clock=lambda: clock[0], draw=lambda: 0.5), runner


def test_one_job_is_drained_by_one_task_in_the_order_posted() -> None:
    seen: list[tuple[str, Event | str]] = []
    mail, runner = boxes(lambda job, m: seen.append((job, m.kind)), [0.0])
    mail.post("a", Mail(Event.PLACED))
    mail.post("a", Mail(Event.CREATED))
    mail.post("b", Mail(Event.CANCEL))
    assert len(runner.queue) == 2  # one drain per job, however many mails
    assert mail.busy("a")
    assert mail.busy("b")
    runner.run_all()
    assert seen == [("a", Event.PLACED), ("a", Event.CREATED), ("b", Event.CANCEL)]
    assert not mail.busy("a")


def test_a_mail_posted_while_draining_is_handled_by_the_same_drain() -> None:
    seen: list[Event | str] = []
    runner_holder: list[Mailboxes] = []

    def handle(job: str, m: Mail) -> None:
        seen.append(m.kind)
        if m.kind is Event.PLACED:
            runner_holder[0].post(job, Mail(Event.CREATED))

    mail, runner = boxes(handle, [0.0])
    runner_holder.append(mail)
    mail.post("a", Mail(Event.PLACED))
    runner.run_all()
    assert seen == [Event.PLACED, Event.CREATED]


def test_a_failing_handler_gets_its_mail_again_later_and_the_waiter_is_released() -> None:
    clock = [0.0]
    calls: list[int] = []

    def handle(job: str, m: Mail) -> None:
        calls.append(int(m.payload.get("_failures", 0)))
        raise RuntimeError("boom")

    mail, runner = boxes(handle, clock)
    first = mail.post("a", Mail(Event.CANCEL))
    runner.run_all()
    assert first.done.is_set()  # a caller waiting on it is not left hanging
    assert calls == [0]
    mail.deliver_due(clock[0])
    runner.run_all()
    assert calls == [0]  # not before its backoff
    for _ in range(MAX_RETRIES + 5):
        clock[0] += 3600.0
        mail.deliver_due(clock[0])
        runner.run_all()
    assert calls == list(range(MAX_RETRIES + 1))  # then dropped, never forever
