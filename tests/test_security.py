"""Security against real servers: bearer tokens on every RPC but health, TLS and mutual TLS, and the confinement of
a request's `uri` to the server's data roots. Certificates are made per test session with `cryptography`."""
import asyncio
import datetime
import ipaddress
import json
import os
import subprocess
import sys

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import REPO, TESTS, RunningServer
from serving.auth import TokenAuthInterceptor, bare_token_user_name, current_user, parse_tokens
from serving.client import AsyncClient, Client
from serving.errors import CODE_METADATA_KEY
from serving.proto import inference_pb2 as pb
from serving.proto import inference_pb2_grpc as pb_grpc
from serving.proto import mvp_pb2, mvp_pb2_grpc

x509 = pytest.importorskip("cryptography.x509")
tc = pytest.importorskip("tritonclient.grpc")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402

ADMIN_TOKEN = "adm-6f1c2b9e4d7a48e3b5c0a9f8"
USER_TOKEN = "usr-0b3e5d7f9a1c42e6b8d0f2a4"
BARE_TOKEN = "bare-9c8b7a6f5e4d43c2b1a0f9e8"
WRONG_TOKEN = "usr-0b3e5d7f9a1c42e6b8d0f2a5"  # one character off USER_TOKEN
TOKEN_FILE = f"""# test tokens
{ADMIN_TOKEN}  alice  admin
{USER_TOKEN}   bob

{BARE_TOKEN}
"""
SECRET = b"TOP-SECRET-CONTENTS-7d1f"


def bearer(token):
    return (("authorization", f"Bearer {token}"),)


def png(path, side=48, value=90):
    import cv2

    cv2.imwrite(str(path), np.full((side, side, 3), value, np.uint8))
    return path


# ---- certificates ----------------------------------------------------------------------------------------------------

def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject, key, issuer, issuer_key, *, ca=False, server=False):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder, name, key, cert):
    key_path, cert_path = folder / f"{name}.key", folder / f"{name}.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """{name: (cert path, key path)}: a CA, a server certificate for localhost/127.0.0.1 and a client certificate
    it signed, and a client certificate of another CA."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key, rogue_key = _key(), _key()
    ca = _cert("test CA", ca_key, "test CA", ca_key, ca=True)
    out = {"ca": _write(folder, "ca", ca_key, ca)}
    for name, server in (("server", True), ("client", False)):
        key = _key()
        out[name] = _write(folder, name, key, _cert(name, key, "test CA", ca_key, server=server))
    rogue_client = _key()
    out["rogue_client"] = _write(folder, "rogue_client", rogue_client,
                                 _cert("rogue", rogue_client, "rogue CA", rogue_key))
    return out


# ---- servers ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A data root holding an image and a symlink pointing out of it, beside a secret file outside it."""
    base = tmp_path_factory.mktemp("data")
    root = base / "root"
    root.mkdir()
    png(root / "inside.png")
    secret = base / "secret.png"
    secret.write_bytes(SECRET)
    (root / "escape.png").symlink_to(secret)
    (root / "passwd").symlink_to("/etc/passwd")
    return {"root": root, "secret": secret}


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory, data, frontend):
    tokens = tmp_path_factory.mktemp("auth") / "tokens"
    tokens.write_text(TOKEN_FILE)
    tokens.chmod(0o600)
    server = RunningServer(["--evals", str(TESTS / "apps"), "--auth-tokens", str(tokens),
                            "--data-root", str(data["root"]), "--frontend", frontend])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_server(pki, frontend):
    (cert, key) = pki["server"]
    server = RunningServer(["--evals", str(TESTS / "apps"), "--tls-cert", str(cert), "--tls-key", str(key),
                            "--frontend", frontend])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_server(pki, frontend):
    (cert, key), (ca, _) = pki["server"], pki["ca"]
    server = RunningServer(["--evals", str(TESTS / "apps"), "--tls-cert", str(cert), "--tls-key", str(key),
                            "--tls-client-ca", str(ca), "--frontend", frontend])
    yield server
    server.stop()


def client_for(server, app="probe", **kwargs):
    host, port = server.target.split(":")
    return Client(host, int(port), app, timeout=10, **kwargs)


def status_of(call, *args, **kwargs):
    """(status code, serving code from trailing metadata or None) of a call made with a generated stub."""
    try:
        call(*args, **kwargs)
        return grpc.StatusCode.OK, None
    except grpc.RpcError as exc:
        trailing = dict(exc.trailing_metadata() or ())
        return exc.code(), trailing.get(CODE_METADATA_KEY)


def stream_status(channel, metadata):
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = service_pb2.ModelInferRequest(model_name="probe", id="s1")
    request.inputs.add(name="attribute", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(len(b"{}").to_bytes(4, "little") + b"{}")
    try:
        responses = list(stub.ModelStreamInfer(iter([request]), metadata=metadata, timeout=10))
    except grpc.RpcError as exc:
        return exc.code(), dict(exc.trailing_metadata() or ()).get(CODE_METADATA_KEY), []
    return grpc.StatusCode.OK, None, responses


def every_protected_call(channel, metadata):
    """{call name: (status code, serving code)} of native Infer and ListApps, KServe ModelInfer and ServerLive,
    and reflection, made with `metadata`."""
    native = pb_grpc.InferenceStub(channel)
    kserve = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    infer = pb.InferRequest(app="probe", method="inference")
    infer.instances.add()
    model_infer = service_pb2.ModelInferRequest(model_name="probe")
    model_infer.inputs.add(name="attribute", datatype="BYTES", shape=[1])
    model_infer.raw_input_contents.append(len(b"{}").to_bytes(4, "little") + b"{}")
    out = {
        "Infer": status_of(native.Infer, infer, metadata=metadata, timeout=10),
        "ListApps": status_of(native.ListApps, pb.ListAppsRequest(), metadata=metadata, timeout=10),
        "ModelInfer": status_of(kserve.ModelInfer, model_infer, metadata=metadata, timeout=10),
        "ServerLive": status_of(kserve.ServerLive, service_pb2.ServerLiveRequest(), metadata=metadata, timeout=10),
        "ModelStreamInfer": stream_status(channel, metadata)[:2],
    }
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    try:
        list(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                             metadata=metadata, timeout=10))
        out["reflection"] = (grpc.StatusCode.OK, None)
    except grpc.RpcError as exc:
        out["reflection"] = (exc.code(), dict(exc.trailing_metadata() or ()).get(CODE_METADATA_KEY))
    return out


# ---- tokens ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("metadata", [
    None, bearer(WRONG_TOKEN), bearer(""), (("authorization", USER_TOKEN),), (("authorization", f"Basic {USER_TOKEN}"),),
], ids=["none", "wrong", "empty", "no-scheme", "basic"])
def test_calls_without_a_valid_token_are_unauthenticated(auth_server, metadata):
    with auth_server.channel() as channel:
        statuses = every_protected_call(channel, metadata)
    assert statuses == {name: (grpc.StatusCode.UNAUTHENTICATED, "401") for name in statuses}


@pytest.mark.parametrize("token", [ADMIN_TOKEN, USER_TOKEN, BARE_TOKEN])
def test_calls_with_a_valid_token_succeed(auth_server, token):
    with auth_server.channel() as channel:
        statuses = every_protected_call(channel, bearer(token))
        _, _, responses = stream_status(channel, bearer(token))
    assert statuses == {name: (grpc.StatusCode.OK, None) for name in statuses}
    assert [r.infer_response.id for r in responses] == ["s1"] and not responses[0].error_message


def test_refusal_says_nothing_about_which_tokens_exist(auth_server):
    details = set()
    with auth_server.channel() as channel:
        stub = pb_grpc.InferenceStub(channel)
        for metadata in (None, bearer(WRONG_TOKEN), bearer("x")):
            with pytest.raises(grpc.RpcError) as info:
                stub.ListApps(pb.ListAppsRequest(), metadata=metadata, timeout=10)
            details.add(info.value.details())
    assert len(details) == 1 and WRONG_TOKEN not in details.pop()


def test_unknown_methods_are_refused_before_they_are_looked_up(auth_server):
    with auth_server.channel() as channel:
        call = channel.unary_unary("/no.Such/Method")
        assert status_of(call, b"", timeout=10) == (grpc.StatusCode.UNAUTHENTICATED, "401")
        assert status_of(call, b"", metadata=bearer(USER_TOKEN), timeout=10)[0] == grpc.StatusCode.UNIMPLEMENTED


def test_health_needs_no_token(auth_server):
    with auth_server.channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING


def test_clients_send_the_token(auth_server):
    with client_for(auth_server, token=USER_TOKEN) as client:
        assert {app["name"] for app in client.apps()} == {"probe", "legacy_style"}
        [result] = client.infer({"attribute": {}})
        assert result["app"] == "probe"
    with client_for(auth_server) as client:
        with pytest.raises(grpc.RpcError) as refused:
            client.apps()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert dict(refused.value.trailing_metadata())[CODE_METADATA_KEY] == "401"
        assert client.infer({"attribute": {}})["code"] == 401

    async def async_calls():
        host, port = auth_server.target.split(":")
        async with AsyncClient(host, int(port), "probe", token=ADMIN_TOKEN, timeout=10) as client:
            return await client.apps(), await client.infer({})

    apps, [result] = asyncio.run(async_calls())
    assert len(apps) == 2 and result["app"] == "probe"


def test_cli_token_flag_and_environment(auth_server):
    def apps(*flags, env=None):
        full_env = {key: value for key, value in os.environ.items() if key != "SERVING_TOKEN"}
        full_env.update(env or {})
        return subprocess.run([sys.executable, "-m", "serving.cli", "apps", "--target", auth_server.target, *flags],
                              cwd=REPO, capture_output=True, text=True, timeout=30, env=full_env)

    by_env = apps(env={"SERVING_TOKEN": USER_TOKEN})
    assert by_env.returncode == 0, by_env.stderr
    assert {json.loads(line)["name"] for line in by_env.stdout.splitlines()} == {"probe", "legacy_style"}
    refused = apps("--token", WRONG_TOKEN)
    assert refused.returncode == 1 and refused.stdout == "", refused.stdout
    assert refused.stderr.startswith("serving apps: ") and refused.stderr.rstrip().endswith("(UNAUTHENTICATED)"), \
        refused.stderr
    # The flag wins over the environment, in both directions.
    by_flag = apps("--token", USER_TOKEN, env={"SERVING_TOKEN": WRONG_TOKEN})
    assert by_flag.returncode == 0, by_flag.stderr
    assert apps("--token", WRONG_TOKEN, env={"SERVING_TOKEN": USER_TOKEN}).returncode == 1


def test_tokens_never_reach_the_log(auth_server):
    # Runs after the calls above (pytest keeps file order): every token has been sent, right and wrong.
    with auth_server.channel() as channel:
        every_protected_call(channel, bearer(WRONG_TOKEN))
        every_protected_call(channel, bearer(ADMIN_TOKEN))
    output = auth_server.output
    assert "refused an unauthenticated call" in output  # refusals are logged, without the token
    for token in (ADMIN_TOKEN, USER_TOKEN, BARE_TOKEN, WRONG_TOKEN):
        assert token not in output


def test_token_file_format():
    table = parse_tokens(TOKEN_FILE)
    assert table.authenticate(ADMIN_TOKEN).name == "alice" and table.authenticate(ADMIN_TOKEN).admin
    assert table.authenticate(USER_TOKEN).name == "bob" and not table.authenticate(USER_TOKEN).admin
    bare = table.authenticate(BARE_TOKEN)
    assert bare.name == bare_token_user_name(BARE_TOKEN) and not bare.admin
    assert bare.name.startswith("user-") and len(bare.name) == 13 and BARE_TOKEN not in bare.name
    assert table.authenticate(WRONG_TOKEN) is None and table.authenticate("") is None
    assert table.authenticate(None) is None and table.authenticate(USER_TOKEN.encode()).name == "bob"
    assert len(table) == 3


@pytest.mark.parametrize("text, message", [
    ("", "no tokens"),
    ("# only a comment\n\n", "no tokens"),
    ("short-token", "at least 16"),
    ("aaaaaaaaaaaaaaaaaaaa bob root", "third field"),
    ("aaaaaaaaaaaaaaaaaaaa bob admin extra", "4 fields"),
    ("aaaaaaaaaaaaaaaaaaaa bob\naaaaaaaaaaaaaaaaaaaa carol", "duplicate token"),
    ("aaaaaaaaaaaaaaaaaaaa bob\nbbbbbbbbbbbbbbbbbbbb bob", "duplicate user"),
    ("aaaaaaaaaaaaaaaaaaaa b/ob", "user name"),
])
def test_bad_token_files_are_refused_without_echoing_tokens(text, message):
    with pytest.raises(ValueError) as info:
        parse_tokens(text)
    assert message in str(info.value)
    assert "aaaaaaaaaaaaaaaaaaaa" not in str(info.value) and "short-token" not in str(info.value)


def test_a_bad_token_file_stops_the_server(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("too-short\n")
    result = subprocess.run([sys.executable, "-m", "serving.cli", "serve", "--evals", str(TESTS / "apps"),
                             "--port", "0", "--auth-tokens", str(tokens)], cwd=REPO, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 1 and "line 1" in result.stderr and "too-short" not in result.stderr
    assert result.stderr.rstrip().endswith(f"{tokens}, line 1: a token is at least 16 printable ASCII characters")
    assert "serving on" not in result.stdout


def test_the_handler_sees_the_authenticated_user():
    """current_user() inside handlers, unary and streaming, through a real grpc.aio server with the interceptor."""

    async def who_unary(request, context):
        user = current_user()
        return f"{user.name}:{user.admin}".encode()

    async def who_stream(request_iterator, context):
        async for _ in request_iterator:
            await asyncio.sleep(0)  # the user must survive awaits and interleaving with other calls
            user = current_user()
            yield f"{user.name}:{user.admin}".encode()

    async def main():
        handlers = grpc.method_handlers_generic_handler("test.Who", {
            "Unary": grpc.unary_unary_rpc_method_handler(who_unary),
            "Stream": grpc.stream_stream_rpc_method_handler(who_stream),
        })
        server = grpc.aio.server(interceptors=[TokenAuthInterceptor(parse_tokens(TOKEN_FILE))])
        server.add_generic_rpc_handlers((handlers,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                unary, stream = channel.unary_unary("/test.Who/Unary"), channel.stream_stream("/test.Who/Stream")
                answers = await asyncio.gather(
                    unary(b"", metadata=bearer(ADMIN_TOKEN)), unary(b"", metadata=bearer(USER_TOKEN)),
                    *(_collect(stream(iter([b"", b""]), metadata=bearer(t))) for t in (ADMIN_TOKEN, USER_TOKEN)))
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await _collect(stream(iter([b""]), metadata=bearer(WRONG_TOKEN)))
        finally:
            await server.stop(0)
        return answers, refused.value.code()

    answers, refused = asyncio.run(main())
    assert answers == [b"alice:True", b"bob:False", [b"alice:True"] * 2, [b"bob:False"] * 2]
    assert refused == grpc.StatusCode.UNAUTHENTICATED and current_user() is None


async def _collect(call):
    return [response async for response in call]


# ---- TLS -------------------------------------------------------------------------------------------------------------

def test_tls_server_refuses_plaintext_and_serves_tls(tls_server, pki):
    with client_for(tls_server) as plain:
        assert plain.infer({})["code"] == 503  # UNAVAILABLE: the handshake never happens
    ca, _ = pki["ca"]
    with client_for(tls_server, tls_ca=ca) as client:
        [result] = client.infer({"attribute": {}})
        assert result["app"] == "probe"
    with client_for(tls_server, tls_ca=pki["rogue_client"][0]) as untrusting:  # a CA that did not sign it
        assert untrusting.infer({})["code"] == 503


def test_mutual_tls_requires_a_client_certificate_of_the_ca(mtls_server, pki):
    ca, _ = pki["ca"]
    cert, key = pki["client"]
    with client_for(mtls_server, tls_ca=ca) as anonymous:
        assert anonymous.infer({})["code"] == 503
    rogue_cert, rogue_key = pki["rogue_client"]
    with client_for(mtls_server, tls_ca=ca, tls_cert=rogue_cert, tls_key=rogue_key) as rogue:
        assert rogue.infer({})["code"] == 503
    with client_for(mtls_server, tls_ca=ca.read_bytes(), tls_cert=cert, tls_key=key) as client:
        [result] = client.infer({"attribute": {}})
        assert result["app"] == "probe"


def health(server, *flags, env=None):
    """`serving health` against `server`, with the TLS settings of the environment only as `env` gives them."""
    full_env = {key: value for key, value in os.environ.items() if not key.startswith("SERVING_TLS_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "serving.cli", "health", "--target", server.target, *flags],
                          cwd=REPO, capture_output=True, text=True, timeout=30, env=full_env)


def test_health_checks_a_tls_server(tls_server, pki):
    ca, _ = pki["ca"]
    plain = health(tls_server, "--timeout", "3")
    assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr
    by_flag = health(tls_server, "--tls-ca", str(ca))
    assert by_flag.returncode == 0, by_flag.stderr
    assert by_flag.stdout.strip() == f"{tls_server.target} (server): SERVING"
    # A container's HEALTHCHECK is a bare `serving health`: the CA comes from its environment.
    by_env = health(tls_server, env={"SERVING_TLS_CA": str(ca)})
    assert by_env.returncode == 0 and "SERVING" in by_env.stdout, by_env.stderr
    untrusted = health(tls_server, "--tls-ca", str(pki["rogue_client"][0]), "--timeout", "3")
    assert untrusted.returncode == 1 and "UNAVAILABLE" in untrusted.stderr
    missing = health(tls_server, "--tls-ca", str(ca.parent / "no-such-ca.pem"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "cannot read TLS CA" in missing.stderr


def test_health_checks_a_mutual_tls_server(mtls_server, pki):
    ca, _ = pki["ca"]
    cert, key = pki["client"]
    anonymous = health(mtls_server, "--tls-ca", str(ca), "--timeout", "3")
    assert anonymous.returncode == 1
    by_flag = health(mtls_server, "--tls-ca", str(ca), "--tls-cert", str(cert), "--tls-key", str(key))
    assert by_flag.returncode == 0 and "SERVING" in by_flag.stdout, by_flag.stderr
    by_env = health(mtls_server, env={"SERVING_TLS_CA": str(ca), "SERVING_TLS_CLIENT_CERT": str(cert),
                                      "SERVING_TLS_CLIENT_KEY": str(key)})
    assert by_env.returncode == 0 and "SERVING" in by_env.stdout, by_env.stderr


# ---- uri confinement -------------------------------------------------------------------------------------------------

def test_without_data_roots_every_uri_is_refused(tls_server, pki, data):
    with client_for(tls_server, "legacy_style", tls_ca=pki["ca"][0]) as client:
        results = client.infer([{"uri": str(data["root"] / "inside.png")}, {"uri": "/etc/passwd"},
                                {"uri": "/no/such/file.png"}])
    assert [r["code"] for r in results] == [403, 403, 403]
    assert results[0]["error"] == f"uri not allowed: {data['root'] / 'inside.png'}"


def test_data_root_confines_uris(auth_server, data):
    root = data["root"]
    refused = [str(root / "escape.png"), str(root / "passwd"), str(root / ".." / "secret.png"), str(data["secret"]),
               "/etc/passwd", f"file://{root}/../secret.png"]
    with client_for(auth_server, "legacy_style", token=USER_TOKEN) as client:
        results = client.infer([{"uri": str(root / "inside.png")}, {"uri": f"file://{root}/inside.png"},
                                *({"uri": uri} for uri in refused)])
        assert client.infer({"uri": str(root / "missing.png")})[0]["code"] == 400  # inside, absent: not exist
        # A NUL names no file: 400, not the 599 of an exception escaping os.path.
        assert client.infer({"uri": str(root / "inside.png") + "\0x"})[0]["code"] == 400
    assert [r["height"] for r in results[:2]] == [48, 48]
    assert results[0]["mean_bgr"] == [90.0, 90.0, 90.0]
    assert [(r["code"], r["error"]) for r in results[2:]] == [(403, f"uri not allowed: {uri}") for uri in refused]
    text = repr(results)
    assert SECRET.decode() not in text and "root:" not in text


def test_a_refused_uri_fails_a_kserve_call_with_permission_denied(auth_server):
    with tc.InferenceServerClient(auth_server.target) as triton:
        uri = tc.InferInput("uri", [1], "BYTES")
        uri.set_data_from_numpy(np.array([b"/etc/passwd"], dtype=object))
        with pytest.raises(tc.InferenceServerException) as info:
            triton.infer("legacy_style", [uri], headers={"authorization": f"Bearer {USER_TOKEN}"})
    assert info.value.status() == "StatusCode.PERMISSION_DENIED"
    assert "uri not allowed: /etc/passwd" in info.value.message()


def test_with_tokens_only_an_admin_loads_and_unloads_apps(auth_server):
    user, admin = ({"authorization": f"Bearer {token}"} for token in (USER_TOKEN, ADMIN_TOKEN))
    with tc.InferenceServerClient(auth_server.target) as triton:
        for call in (triton.load_model, triton.unload_model):
            with pytest.raises(tc.InferenceServerException) as info:
                call("legacy_style", headers=user)
            assert info.value.status() == "StatusCode.PERMISSION_DENIED"
            assert "needs an admin token" in info.value.message()
        assert triton.is_model_ready("legacy_style", headers=user)  # refused: nothing changed
        triton.load_model("legacy_style", headers=admin)  # reloads it
        assert triton.is_model_ready("legacy_style", headers=user)


def test_with_tokens_mvi_calls_load_an_unloaded_app_for_an_admin_only(auth_server):
    """initial_defect_task loads what is not loaded: with tokens that is an admin's call, as RepositoryModelLoad
    is, so a plain user cannot bring back an app an admin unloaded."""
    user, admin = ({"authorization": f"Bearer {token}"} for token in (USER_TOKEN, ADMIN_TOKEN))
    with tc.InferenceServerClient(auth_server.target) as triton, auth_server.channel() as channel:
        mvi = mvp_pb2_grpc.FormatDataStub(channel)

        def initialize(headers):
            return mvi.initial_defect_task(mvp_pb2.InitialParam(device_num=1, model_path_lst=["legacy_style"]),
                                           metadata=tuple(headers.items()), timeout=30)

        assert initialize(user).res_code == 0  # loaded already: a check, allowed to anyone
        triton.unload_model("legacy_style", headers=admin)
        try:
            res = initialize(user)
            assert res.res_code == 403 and "needs an admin token" in res.res_msg, res
            assert not triton.is_model_ready("legacy_style", headers=admin)
        finally:
            res = initialize(admin)
        assert (res.res_code, res.res_msg) == (0, "OK: legacy_style ready")
        assert triton.is_model_ready("legacy_style", headers=user)
