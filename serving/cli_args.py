"""Argument types and flags shared by the `serving` commands (serving.cli, serving.store.cli, serving.jobs.cli)."""
import argparse
import json
import os
from pathlib import Path


def json_object(text):
    """argparse type: a JSON object given on the command line."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def host_port(text):
    """argparse type: HOST:PORT as (host, port); an empty host is localhost."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host or "localhost", int(port)


def add_client_security(parser):
    """The security flags of a client command: bearer token and TLS, each defaulting to an environment variable
    (a container's HEALTHCHECK runs a bare `serving health`, so a TLS server's CA must come from there)."""
    parser.add_argument("--token", default=os.environ.get("SERVING_TOKEN") or None,
                        help="bearer token sent on every call [SERVING_TOKEN; prefer it: flags show in ps]")
    parser.add_argument("--tls-ca", type=Path, default=os.environ.get("SERVING_TLS_CA") or None,
                        help="PEM CA of the server's certificate (TLS) [SERVING_TLS_CA]")
    parser.add_argument("--tls-cert", type=Path, default=os.environ.get("SERVING_TLS_CLIENT_CERT") or None,
                        help="PEM client certificate (mutual TLS) [SERVING_TLS_CLIENT_CERT]")
    parser.add_argument("--tls-key", type=Path, default=os.environ.get("SERVING_TLS_CLIENT_KEY") or None,
                        help="PEM key of --tls-cert [SERVING_TLS_CLIENT_KEY]")


def client_security(args):
    """The Client keyword arguments of the client security flags."""
    return {"token": args.token, "tls_ca": args.tls_ca, "tls_cert": args.tls_cert, "tls_key": args.tls_key}
