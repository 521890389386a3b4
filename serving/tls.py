"""TLS and mutual TLS credentials for the server (`serving serve --tls-cert/--tls-key/--tls-client-ca`) and the
clients (`tls_ca`, `tls_cert`, `tls_key`).

Certificates and keys are PEM. Each argument is a file path, or the PEM bytes themselves. A server given a client
CA requires every client to present a certificate signed by it (mutual TLS).

The server's material is checked before gRPC sees it: gRPC accepts any bytes here and fails only when the port is
bound, with "Failed to bind to address" and nothing about the file. The checks use the standard library's ssl
(OpenSSL, as gRPC's own TLS is), not `cryptography`, which only the tests install.
"""
import contextlib
import dataclasses
import os
import re
import ssl
import tempfile

import grpc

from serving.errors import BAD_REQUEST, ServingError

_CERTIFICATE_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\s*", re.DOTALL)


def read_pem(source, what):
    """The PEM bytes of `source` (bytes as they are, else a path read); None stays None."""
    if source is None or isinstance(source, bytes):
        return source
    try:
        with open(os.fspath(source), "rb") as file:
            return file.read()
    except OSError as exc:
        raise ServingError(BAD_REQUEST, f"cannot read {what} {source}: {exc}") from None


@dataclasses.dataclass(frozen=True)
class ServerTls:
    """A server's checked TLS material (PEM bytes): its certificate chain and key, and the CA whose certificates
    clients must present (mutual TLS), or None."""

    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes = None

    def credentials(self):
        """The grpc.ServerCredentials of this material, for a grpc.aio server."""
        return grpc.ssl_server_credentials([(self.key_pem, self.cert_pem)], root_certificates=self.client_ca_pem,
                                           require_client_auth=self.client_ca_pem is not None)


def server_tls(cert, key, client_ca=None):
    """The `ServerTls` serving `cert` with `key`; with `client_ca`, clients must present a certificate it signed.
    ServingError naming the file and what is wrong with it: unreadable, empty, no PEM certificate or key, a block
    that does not parse, an encrypted key, or a key that is not the certificate's."""
    if cert is None or key is None:
        raise ServingError(BAD_REQUEST, "TLS needs both a certificate and its key (--tls-cert and --tls-key)")
    cert_pem, key_pem = read_pem(cert, "TLS certificate"), read_pem(key, "TLS key")
    root = read_pem(client_ca, "TLS client CA")
    _check_certificates(cert_pem, f"TLS certificate {_name(cert)}")
    _check_key(cert_pem, key_pem, _name(cert), _name(key))
    if root is not None:
        _check_certificates(root, f"TLS client CA {_name(client_ca)}")
    return ServerTls(cert_pem, key_pem, root)


def _name(source):
    return "(PEM bytes)" if isinstance(source, bytes) else str(source)


def _check_certificates(pem, what):
    """ServingError unless `pem` holds PEM certificates that OpenSSL parses."""
    if not pem.strip():
        raise ServingError(BAD_REQUEST, f"{what} is empty")
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise ServingError(BAD_REQUEST, f"{what} holds no PEM certificate (no -----BEGIN CERTIFICATE----- line)")
    # Only the blocks: text around them (openssl's "Bag Attributes", a subject in UTF-8) is allowed, and ssl
    # takes PEM only as an ASCII str.
    blocks = b"".join(_CERTIFICATE_BLOCK.findall(pem))
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=blocks.decode("ascii"))
    except (ssl.SSLError, ValueError):  # ValueError: a block that is not ASCII, or no complete block
        # OpenSSL's own reason ("no start line") misleads when a BEGIN line is there but the body is corrupt.
        raise ServingError(BAD_REQUEST, f"{what} is not a valid PEM certificate (a certificate block that does not "
                                        "parse)") from None


def _check_key(cert_pem, key_pem, cert_name, key_name):
    """ServingError unless `key_pem` is an unencrypted PEM private key of the (already checked) certificate."""
    what = f"TLS key {key_name}"
    if not key_pem.strip():
        raise ServingError(BAD_REQUEST, f"{what} is empty")
    if b"PRIVATE KEY-----" not in key_pem:
        raise ServingError(BAD_REQUEST, f"{what} holds no PEM private key (no -----BEGIN ... PRIVATE KEY----- line)")
    if b"ENCRYPTED" in key_pem:
        raise ServingError(BAD_REQUEST, f"{what} is encrypted: the server needs it unencrypted")
    try:
        with _as_file(cert_pem) as cert_file, _as_file(key_pem) as key_file:
            # The password callback keeps OpenSSL from prompting on the terminal for a key it takes as encrypted.
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_file, key_file, password=lambda: b"")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ServingError(BAD_REQUEST, f"{what} is not the key of TLS certificate {cert_name}") from None
        raise ServingError(BAD_REQUEST, f"{what} is not a valid PEM private key ({_reason(exc)})") from None


def _reason(exc):
    # "[SSL] PEM lib (_ssl.c:3926)" -> "OpenSSL: PEM lib"
    return "OpenSSL: " + (exc.reason or re.sub(r"^\[\w+\] | \(_ssl\.c:\d+\)$", "", str(exc)))


@contextlib.contextmanager
def _as_file(data):
    """A path holding `data`, for ssl's load_cert_chain, which reads only files: an anonymous in-memory file where
    the system has them (the key never touches a disk), else a file in a private temporary folder."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("serving-tls-check")
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="serving-tls-") as folder:  # created 0700
        path = os.path.join(folder, "pem")
        with open(path, "wb") as file:
            file.write(data)
        yield path


def client_credentials(ca=None, cert=None, key=None):
    """The credentials of a client given these PEM sources: channel_credentials when any is given (the channel is
    then TLS, trusting the system's roots without `ca`), None when none is (plaintext)."""
    if ca is None and cert is None and key is None:
        return None
    return channel_credentials(ca, cert, key)


def open_channel(grpc_module, target, credentials, options=None):
    """A channel of `grpc_module` (grpc or grpc.aio) to `target`: TLS with `credentials`, plaintext when None."""
    if credentials is not None:
        return grpc_module.secure_channel(target, credentials, options=options)
    return grpc_module.insecure_channel(target, options=options)


def channel_credentials(ca=None, cert=None, key=None):
    """`grpc.ChannelCredentials` trusting `ca` (None: the system's roots) and presenting `cert`/`key` when
    given (mutual TLS)."""
    if (cert is None) != (key is None):
        raise ServingError(BAD_REQUEST, "a TLS client certificate needs its key, and the key its certificate")
    return grpc.ssl_channel_credentials(root_certificates=read_pem(ca, "TLS CA"),
                                        private_key=read_pem(key, "TLS key"),
                                        certificate_chain=read_pem(cert, "TLS certificate"))
