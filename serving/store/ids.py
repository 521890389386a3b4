"""Document ids: 24 lowercase hex digits in the layout of a MongoDB ObjectId (the seed's "MongoID").

    bytes 0-3   seconds since the Unix epoch, big-endian
    bytes 4-8   5 random bytes, drawn once per process (re-drawn after a fork)
    bytes 9-11  a counter, big-endian, starting at a random value and wrapping at 2**24

So ids sort by creation second; ids made by one process also sort in creation order (but at the rare
wrap-around of the counter, once every 16.7 million ids); and two processes (the server, a CLI call) cannot
collide unless they draw the same 40 random bits.
"""
import os
import re
import threading
import time

from serving.store.errors import StoreError
from serving.errors import BAD_REQUEST

ID_LENGTH = 24
_ID_PATTERN = re.compile(r"[0-9a-fA-F]{24}")
_COUNTER_MODULUS = 1 << 24


class IdGenerator:
    """Makes ObjectId-layout ids. Thread-safe; fork-safe (a child process draws its own random part)."""

    def __init__(self, clock=time.time, random_bytes=os.urandom):
        self._clock = clock
        self._random_bytes = random_bytes
        self._lock = threading.Lock()
        self._pid = None
        self._process_part = b""
        self._counter = 0

    def _reseed(self):
        """Draw the per-process random part and the counter's start (first use, and after a fork)."""
        self._pid = os.getpid()
        self._process_part = self._random_bytes(5)
        self._counter = int.from_bytes(self._random_bytes(3), "big")

    def new_id(self):
        """A new id, as 24 lowercase hex digits."""
        with self._lock:
            if self._pid != os.getpid():
                self._reseed()
            counter = self._counter
            self._counter = (counter + 1) % _COUNTER_MODULUS
            seconds = int(self._clock()) & 0xFFFFFFFF
            raw = seconds.to_bytes(4, "big") + self._process_part + counter.to_bytes(3, "big")
        return raw.hex()


_default_generator = None
_default_lock = threading.Lock()


def new_id():
    """A new id from the process-wide generator (created on first use, not at import)."""
    global _default_generator
    if _default_generator is None:
        with _default_lock:
            if _default_generator is None:
                _default_generator = IdGenerator()
    return _default_generator.new_id()


def is_valid_id(text):
    """True when `text` is a string of exactly 24 hex digits (either case)."""
    return isinstance(text, str) and _ID_PATTERN.fullmatch(text) is not None


def check_id(text):
    """`text` as a canonical (lowercase) id; StoreError 400 when it is not 24 hex digits."""
    if not is_valid_id(text):
        raise StoreError(BAD_REQUEST, f"malformed id {text!r}: expected {ID_LENGTH} hexadecimal digits")
    return text.lower()


def id_timestamp(doc_id):
    """The creation second encoded in an id (Unix time)."""
    return int(check_id(doc_id)[:8], 16)
