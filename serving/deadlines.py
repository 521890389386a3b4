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

    def add(self, deadline, what):
        """Register `what` for `deadline`; returns a handle for `cancel`."""
        cell = [what]
        heapq.heappush(self._heap, (deadline, next(self._sequence), cell))
        if self._timer_at is None or deadline < self._timer_at:
            self._arm(deadline)
        return cell

    def cancel(self, cell):
        """Forget a registration (its call was answered, or expired already); drops the reference to `what`."""
        if cell[0] is None:
            return
        cell[0] = None
        self._emptied += 1
        if self._emptied >= _PURGE_AT and self._emptied * 2 > len(self._heap):
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
        heap = self._heap
        now = self._loop.time()
        while heap and (heap[0][2][0] is None or heap[0][0] <= now):
            _deadline, _sequence, cell = heapq.heappop(heap)
            what = cell[0]
            if what is None:
                self._emptied -= 1
                continue
            cell[0] = None
            self._expire(what)
        if heap:
            self._arm(heap[0][0])  # also when the loop woke a hair before the deadline: it fires again
