"""The doorbell of this process's mail senders: a commit that queued a mail rings it, every sender wakes.

In-process only: a sender in another worker or replica learns of the mail when it next looks (see sender.py).
"""

import threading
import weakref
from typing import Protocol


class Wakeable(Protocol):
    def wake(self) -> None: ...


_senders: "weakref.WeakSet[Wakeable]" = weakref.WeakSet()
_lock = threading.Lock()


def register_sender(sender: Wakeable) -> None:
    with _lock:
        _senders.add(sender)


def unregister_sender(sender: Wakeable) -> None:
    with _lock:
        _senders.discard(sender)


def wake_local_senders() -> None:
    with _lock:
        senders = list(_senders)
    for sender in senders:
        sender.wake()
