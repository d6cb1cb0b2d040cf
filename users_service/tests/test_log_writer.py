"""Log lines are written by a thread of their own: a stdout that stops reading never blocks the code that logs."""

import logging
import os
import sys
import threading
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from shared import observability
from users_service.tests.support import stdout_log_lines

QUEUE_LINES = 50
LINE = "x" * 1000


def dropped_so_far() -> float:
    return REGISTRY.get_sample_value("log_lines_dropped_total") or 0.0


@pytest.fixture
def stalled_stdout(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """stdout is a pipe nobody reads until the test is over; yields the pipe's read end."""
    read_end, write_end = os.pipe()
    stalled = os.fdopen(write_end, "w")
    # configure_logging takes sys.stdout as it is now (pytest puts its own back between test phases).
    monkeypatch.setattr(sys, "stdout", stalled)
    monkeypatch.setattr(observability, "LOG_QUEUE_LINES", QUEUE_LINES)
    observability.configure_logging("INFO")
    monkeypatch.undo()
    yield read_end
    # Drain the pipe so the writer can finish, then log to the real stdout again.
    drained = threading.Thread(target=lambda: [None for _ in iter(lambda: os.read(read_end, 65536), b"")])
    drained.start()
    observability.configure_logging("INFO")
    stalled.close()
    drained.join(10)
    os.close(read_end)


def test_logging_does_not_wait_for_a_stdout_that_stopped_reading(stalled_stdout: int) -> None:
    dropped_before = dropped_so_far()
    logger = logging.getLogger("users.access")
    # 2,000 lines of 1 kB: far more than a pipe holds (64 kB) and than the queue holds.
    logging_thread = threading.Thread(target=lambda: [logger.info(LINE) for _ in range(2000)], daemon=True)
    logging_thread.start()
    logging_thread.join(5)
    assert not logging_thread.is_alive(), "logging waited for stdout"
    dropped = dropped_so_far() - dropped_before
    # Taken at most: what the pipe holds (64 kB, 64 lines), the batch the writer is stuck writing and the lines
    # waiting (QUEUE_LINES each); the rest were dropped and counted.
    assert 2000 - dropped <= 2 * QUEUE_LINES + 70


def test_queued_lines_are_written_when_logging_is_flushed(tmp_path) -> None:
    with stdout_log_lines(tmp_path / "stdout.txt", level="INFO") as written:
        for number in range(100):
            logging.getLogger("users.access").info("line %d", number)
        lines = written()
    assert [line.count('"message": "line ') for line in lines] == [1] * 100
    assert '"message": "line 99"' in lines[-1]
