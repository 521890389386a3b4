"""The store's error: a ServingError, so the CLI and the gRPC layer report it like any other."""
from serving.errors import ServingError


class StoreError(ServingError):
    """A store operation failed: 400 malformed id or data, 404 unknown id, 500 the store itself is broken."""

    def __repr__(self):
        return f"StoreError({self.code}, {self.message!r})"
