"""Deadlines of the calls waiting in a batcher, on one event-loop timer.

Every call gets a deadline and almost every call is answered long before it. One `loop.call_at` per call costs a
TimerHandle, heap comparisons run in Python (TimerHandle.__lt__) and a cancelled handle that stays in the loop's
heap until the loop purges it: about 5% of the event loop's work per request at high rates. Here a deadline is
a (time, sequence, cell) tuple in a heap of our own, compared in C, and one loop timer is armed for the earliest;
a call answered in time only empties its cell, and emptied cells are skipped at the top or purged in bulk.
"""
import heapq
import itertools

# Purge emptied cells when there are at least this many and they are more than half of the heap.
_PURGE_AT = 256


class Deadlines:
    """Calls `expire(what)` for each registration still pending when its deadline (loop time) passes, in deadline
    order, from the event loop."""

    def __init__(self, loop, expire):
        self._loop = loop
        self._expire = expire
        self._heap = []
        self._sequence = itertools.count()
        self._emptied = 0      # cancelled cells still in the heap
        self._timer = None     # the armed loop timer, for the earliest deadline
        self._timer_at = None
        self._closing = False  # see close()

    def add(self, deadline, what):
        """Register `what` for `deadline`; returns a handle for `cancel`."""
        cell = [what]
        heapq.heappush(self._heap, (deadline, next(self._sequence), cell))
        if self._timer_at is None or deadline < self._timer_at:
            self._arm(deadline)
        return cell

    def close(self):
        """No more registrations will come (the batcher stopped): once none is pending, the loop timer goes. An
        armed timer holds this object and, through `expire`, its batcher, app and model, until the latest
        deadline of calls answered long ago (a retired version's model kept alive for up to request_timeout_s
        after a reload under load). While one is pending the timer stays: its call still gets its 504."""
        self._closing = True
        self._release_if_idle()

    def _release_if_idle(self):
        if self._emptied == len(self._heap):
            self._heap = []
            self._emptied = 0
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._timer_at = None

    def cancel(self, cell):
        """Forget a registration (its call was answered, or expired already); drops the reference to `what`."""
        if cell[0] is None:
            return
        cell[0] = None
        self._emptied += 1
        if self._closing:
            self._release_if_idle()
        elif self._emptied >= _PURGE_AT and self._emptied * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if entry[2][0] is not None]
            heapq.heapify(self._heap)
            self._emptied = 0

    def _arm(self, deadline):
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._fire)

    def _fire(self):
        self._timer = self._timer_at = None
        now = self._loop.time()
        # self._heap, not a local: were an expiry to cancel registrations synchronously, a closing Deadlines
        # could swap the heap for an empty one under this loop.
        while self._heap and (self._heap[0][2][0] is None or self._heap[0][0] <= now):
            _deadline, _sequence, cell = heapq.heappop(self._heap)
            what = cell[0]
            if what is None:
                self._emptied -= 1
                continue
            cell[0] = None
            self._expire(what)
        if self._closing:
            self._release_if_idle()
        if self._heap:
            self._arm(self._heap[0][0])  # also when the loop woke a hair before the deadline: it fires again
