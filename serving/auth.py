"""Bearer-token authentication of every RPC (`serving serve --auth-tokens FILE`).

Token file: one token per line, optionally followed by a user name and the word `admin`, separated by
whitespace; blank lines and lines starting with `#` are ignored::

    # token                            user     role
    3f9c2a7d0b4e41c8a8f6d2e1b7c05a99   alice    admin
    c41e8b2f6a9d47e0b3c5f8a1d2e7094b   bob
    0d7a5c3e9f1b48a6b2c4e8f0a1d3c5e7

A token is at least 16 printable ASCII characters without whitespace (what fits an HTTP/2 header value); a
bare token's user is `user-` and the first 8 hex digits of its SHA-256, an id that names it in logs without
revealing it. Tokens and user names are unique within the file.

When tokens are configured, every RPC but `grpc.health.v1.Health` (load balancers and orchestrators probe it
without credentials) must carry the metadata `authorization: Bearer <token>`. Server reflection and the KServe
ServerLive/ServerReady calls require it too: reflection describes the whole API, which is only the business of
authenticated callers. A missing, malformed or unknown token ends the call with UNAUTHENTICATED and serving code
401, with one message whatever was wrong, so a caller learns nothing about which tokens exist.

The authenticated user of the call in progress is `current_user()` (a `User`, or None when no tokens are
configured): the interceptor sets it for the handler, so servicers, and tasks they create, can read it.
Tokens are never logged.
"""
import contextvars
import hashlib
import hmac
import logging
import os
import re
import stat
from dataclasses import dataclass

import grpc

from serving.errors import BAD_REQUEST, UNAUTHENTICATED, ServingError, abort_with
from serving.rpc_handlers import behavior_of, method_handler, responses_of

log = logging.getLogger("serving.auth")

#: Methods under these prefixes are served without a token.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
AUTHORIZATION_METADATA_KEY = "authorization"


def bearer_metadata(token):
    """The call metadata a client sends for `token` (none without one)."""
    return ((AUTHORIZATION_METADATA_KEY, f"Bearer {token}"),) if token else ()
MIN_TOKEN_LENGTH = 16

_BEARER = "bearer "
_TOKEN = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no whitespace
_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_ADMIN = "admin"
_REFUSAL = "unauthenticated: send metadata 'authorization: Bearer <token>' with a valid token"


@dataclass(frozen=True)
class User:
    """Who made a call: the name from the token file (or derived from the token) and the admin flag."""

    name: str
    admin: bool = False


_CURRENT_USER = contextvars.ContextVar("serving_current_user", default=None)


def current_user():
    """The `User` of the RPC being handled, or None when the server runs without tokens."""
    return _CURRENT_USER.get()


def is_valid_user_name(name):
    """True for a user name the token file accepts: letters, digits and _ . @ - (64 at most)."""
    return isinstance(name, str) and _USER.fullmatch(name) is not None


def bare_token_user_name(token):
    """The user name of a token listed without one: a short id derived from it, not reversible."""
    return "user-" + hashlib.sha256(token.encode()).hexdigest()[:8]


def _digest(value):
    # Comparing fixed-size digests keeps the comparison constant-time whatever the presented length.
    return hashlib.sha256(value).digest()


class TokenTable:
    """The configured tokens and their users; `authenticate` matches a presented token in constant time."""

    def __init__(self, entries):
        """`entries`: [(token, User)]; tokens must be unique."""
        self._entries = [(_digest(token.encode()), user) for token, user in entries]
        if not self._entries:
            raise ValueError("a token table needs at least one token")

    def __len__(self):
        return len(self._entries)

    def authenticate(self, token):
        """The `User` of `token` (str or bytes), or None. Compares against every entry without stopping at a
        match, so the time taken does not tell which entry (if any) matched."""
        if token is None:
            return None
        presented = _digest(token if isinstance(token, bytes) else token.encode("utf-8", "surrogateescape"))
        found = None
        for digest, user in self._entries:
            if hmac.compare_digest(presented, digest):
                found = user
        return found

    def user_for_metadata(self, metadata):
        """The `User` authenticated by a call's invocation metadata, or None."""
        return self.authenticate(bearer_token(metadata))


def bearer_token(metadata):
    """The token of the first `authorization: Bearer <token>` entry of `metadata`, or None."""
    for key, value in metadata or ():
        if key != AUTHORIZATION_METADATA_KEY:
            continue
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if value[:len(_BEARER)].lower() == _BEARER:
            return value[len(_BEARER):].strip() or None
        return None
    return None


def parse_tokens(text, source="token file"):
    """A `TokenTable` from token-file text (format in the module docstring). Errors name the line, never
    the token."""
    entries, tokens, names = [], set(), set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        where = f"{source}, line {number}"
        if len(fields) > 3:
            raise ValueError(f"{where}: expected 'TOKEN [USER [admin]]', got {len(fields)} fields")
        token = fields[0]
        if not _TOKEN.fullmatch(token) or len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"{where}: a token is at least {MIN_TOKEN_LENGTH} printable ASCII characters")
        name = fields[1] if len(fields) > 1 else bare_token_user_name(token)
        if not is_valid_user_name(name):
            raise ValueError(f"{where}: user name {name!r} is not letters, digits and _ . @ - (64 at most)")
        if len(fields) == 3 and fields[2] != _ADMIN:
            raise ValueError(f"{where}: the third field can only be {_ADMIN!r}, got {fields[2]!r}")
        if token in tokens:
            raise ValueError(f"{where}: duplicate token")
        if name in names:
            raise ValueError(f"{where}: duplicate user {name!r}")
        tokens.add(token)
        names.add(name)
        entries.append((token, User(name, admin=len(fields) == 3)))
    if not entries:
        raise ValueError(f"{source}: no tokens (a server that accepts none would refuse every call)")
    return TokenTable(entries)


def load_tokens(path):
    """The `TokenTable` of a token file; ServingError (BAD_REQUEST) when it cannot be read or is malformed."""
    try:
        with open(path, encoding="utf-8") as file:
            mode = os.fstat(file.fileno()).st_mode
            text = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ServingError(BAD_REQUEST, f"cannot read token file {path}: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("token file %s is readable by other users; chmod 600 it", path)
    try:
        return parse_tokens(text, str(path))
    except ValueError as exc:
        raise ServingError(BAD_REQUEST, str(exc)) from None


async def _refuse(context):
    await abort_with(context, UNAUTHENTICATED, _REFUSAL)


def _refusal_handler(handler):
    """A handler of the same streaming shape as `handler` (unary-unary when None) that only refuses the call.
    The refusal runs before any request message is read."""

    async def refuse(request_or_iterator, context):
        await _refuse(context)

    if handler is None:
        return grpc.unary_unary_rpc_method_handler(refuse)
    return method_handler(handler.request_streaming, handler.response_streaming, refuse)


def _as_user(behavior, user, response_streaming):
    """Wrap a handler's behavior so that `current_user()` is `user` while it runs. grpc.aio runs each RPC in
    a task of its own, so the value set for a streaming response cannot leak into another call."""
    if response_streaming:
        async def stream_as_user(request_or_iterator, context):
            _CURRENT_USER.set(user)
            async for response in responses_of(behavior(request_or_iterator, context)):
                yield response
        return stream_as_user

    async def unary_as_user(request_or_iterator, context):
        reset = _CURRENT_USER.set(user)
        try:
            return await behavior(request_or_iterator, context)
        finally:
            _CURRENT_USER.reset(reset)
    return unary_as_user


def _handler_as_user(handler, user):
    return method_handler(handler.request_streaming, handler.response_streaming,
                          _as_user(behavior_of(handler), user, handler.response_streaming),
                          request_deserializer=handler.request_deserializer,
                          response_serializer=handler.response_serializer)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call without a valid bearer token (but those under `open_prefixes`), and runs the others
    with `current_user()` set to the token's user."""

    def __init__(self, tokens, open_prefixes=OPEN_METHOD_PREFIXES):
        self.tokens = tokens
        self.open_prefixes = tuple(open_prefixes)

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method or ""
        if method.startswith(self.open_prefixes):
            return await continuation(handler_call_details)
        # Authenticate before looking the method up: an unauthenticated caller cannot probe which methods exist.
        user = self.tokens.user_for_metadata(handler_call_details.invocation_metadata)
        handler = await continuation(handler_call_details)
        if user is None:
            log.info("refused an unauthenticated call to %s", method)
            return _refusal_handler(handler)
        if handler is None:
            return None
        return _handler_as_user(handler, user)
