"""TLS and mutual TLS credentials for the server (`serving serve --tls-cert/--tls-key/--tls-client-ca`) and the
clients (`tls_ca`, `tls_cert`, `tls_key`).

Certificates and keys are PEM. Each argument is a file path, or the PEM bytes themselves. A server given a client
CA requires every client to present a certificate signed by it (mutual TLS).
"""
import os

import grpc

from serving.errors import BAD_REQUEST, ServingError


def read_pem(source, what):
    """The PEM bytes of `source` (bytes as they are, else a path read); None stays None."""
    if source is None or isinstance(source, bytes):
        return source
    try:
        with open(os.fspath(source), "rb") as file:
            return file.read()
    except OSError as exc:
        raise ServingError(BAD_REQUEST, f"cannot read {what} {source}: {exc}") from None


def server_credentials(cert, key, client_ca=None):
    """`grpc.ServerCredentials` serving `cert` with `key`; with `client_ca`, clients must present a certificate
    it signed."""
    if cert is None or key is None:
        raise ServingError(BAD_REQUEST, "TLS needs both a certificate and its key (--tls-cert and --tls-key)")
    root = read_pem(client_ca, "TLS client CA")
    return grpc.ssl_server_credentials([(read_pem(key, "TLS key"), read_pem(cert, "TLS certificate"))],
                                       root_certificates=root, require_client_auth=root is not None)


def channel_credentials(ca=None, cert=None, key=None):
    """`grpc.ChannelCredentials` trusting `ca` (None: the system's roots) and presenting `cert`/`key` when
    given (mutual TLS)."""
    if (cert is None) != (key is None):
        raise ServingError(BAD_REQUEST, "a TLS client certificate needs its key, and the key its certificate")
    return grpc.ssl_channel_credentials(root_certificates=read_pem(ca, "TLS CA"),
                                        private_key=read_pem(key, "TLS key"),
                                        certificate_chain=read_pem(cert, "TLS certificate"))
