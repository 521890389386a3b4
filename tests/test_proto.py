"""The committed protobuf modules match protos/*.proto."""
from serving.proto import generate


def test_generated_code_matches_the_protos(tmp_path):
    written = generate.generate(tmp_path)
    assert written, "no .proto files found"
    for path in written:
        committed = generate.PACKAGE_DIR / path.name
        assert committed.exists(), f"{path.name} is not committed: run make proto"
        assert committed.read_text() == path.read_text(), f"{path.name} is stale: run make proto"
