"""What one process last knew of the catalog: a small map with an age limit, so that a steady stream of
events of the same few messages costs the intake no catalog statement at all.

The catalog only ever moves forward (a detail is replaced by a newer one, `last_seen_at` grows), except
when `bridge prune` deletes an entry. So an entry as this process last read it, or as its own
committed write left it, is a lower bound of what the database holds: an incoming detail no newer than
the remembered one needs no write. What it costs is staleness: a detail another process learned since
is seen here up to `MEMO_SECONDS` later, and so is a message another process learned after this one
found it absent.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping

MEMO_SECONDS = 30.0  # how long a remembered entry (or absence) is trusted
MEMO_ENTRIES = 4096  # most entries remembered, least recently used dropped first: at most 4 x 1,024 characters each


class Memo:
    """A map of keys to values, each trusted for `seconds` after it was put, holding at most `entries`
    (least recently used dropped first); shared by a process's threads. A value may be None (remembered
    as absent): `get` tells it from a key not remembered by leaving the latter out."""

    def __init__(self, seconds: float = MEMO_SECONDS, entries: int = MEMO_ENTRIES):
        self.seconds = seconds
        self.entries = entries
        self._lock = threading.Lock()
        self._values: OrderedDict[Hashable, tuple[float, object]] = OrderedDict()

    def get(self, keys: Iterable[Hashable]) -> dict[Hashable, object]:
        """The values of `keys` still trusted (put less than `seconds` ago), by key."""
        now = time.monotonic()  # looked up per call, so that a test's frozen clock applies
        found: dict[Hashable, object] = {}
        with self._lock:
            for key in keys:
                held = self._values.get(key)
                if held is None:
                    continue
                if 0 <= now - held[0] < self.seconds:  # a clock that went back (frozen in tests) trusts nothing
                    found[key] = held[1]
                    self._values.move_to_end(key)
                else:
                    del self._values[key]
        return found

    def put(self, values: Mapping[Hashable, object]) -> None:
        """Remember `values` (by key) from now on."""
        now = time.monotonic()
        with self._lock:
            for key, value in values.items():
                self._values[key] = (now, value)
                self._values.move_to_end(key)
            while len(self._values) > self.entries:
                self._values.popitem(last=False)


FLUSH_SECONDS = 1.0  # longest a newer event time of a value the catalog holds waits to be written


class Owed:
    """Newer event times of values the catalog already holds, which this process owes it, per app and
    message: `{app_id: {message_id: {detail: (event time, value)}}}`, the newest per detail.

    A repeated value changes nothing the intake reads, but its newer time must reach the catalog, or a
    different value of an event between the two could later win. Written at once, it would cost a
    campaign's stream a write per new event time; owed, it rides along with this process's next catalog
    statement for the app, or gets one of its own once FLUSH_SECONDS old. What a process still owes when
    it stops is lost."""

    def __init__(self, seconds: float = FLUSH_SECONDS):
        self.seconds = seconds
        self._lock = threading.Lock()
        self._owed: dict[str, dict[str, dict[str, tuple[int, str]]]] = {}
        self._since: dict[str, float] = {}  # per app, when the oldest debt was added (time.monotonic)

    def add(self, app_id: str, debts: Mapping[str, Mapping[str, tuple[int, str]]], since: float | None = None) -> None:
        """Owe `debts` (message id → detail → (event time, value)) to `app_id`'s catalog, since `since`
        (time.monotonic(); now by default: debts given back by `take`'s caller keep their age)."""
        if not debts:
            return
        with self._lock:
            owed = self._owed.setdefault(app_id, {})
            since = time.monotonic() if since is None else since
            self._since[app_id] = min(self._since.get(app_id, since), since)
            for message_id, details in debts.items():
                held = owed.setdefault(message_id, {})
                for detail, seen in details.items():
                    if detail not in held or seen > held[detail]:
                        held[detail] = seen

    def forgive(self, app_id: str, message_ids: Iterable[str]) -> None:
        """Owe `app_id`'s catalog nothing more of `message_ids` (their entries are gone)."""
        with self._lock:
            owed = self._owed.get(app_id, {})
            for message_id in message_ids:
                owed.pop(message_id, None)

    def due(self, app_id: str) -> bool:
        """Whether `app_id`'s oldest debt is FLUSH_SECONDS old (or the clock went back, as in tests)."""
        with self._lock:
            since = self._since.get(app_id)
        return since is not None and not 0 <= time.monotonic() - since < self.seconds

    def take(self, app_id: str) -> tuple[dict[str, dict[str, tuple[int, str]]], float | None]:
        """Everything owed to `app_id`, no longer owed, and since when (`add` both back if it could not
        be written)."""
        with self._lock:
            return self._owed.pop(app_id, {}), self._since.pop(app_id, None)
