"""Thin gRPC servicers: each converts messages and calls the transport-neutral core (serving.dataplane)."""
