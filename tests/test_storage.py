"""Storage against the real file system and a real S3 endpoint (moto's server process)."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig

from ganforge import fileio
from ganforge.fileio import StorageError
from ganforge.platform import s3 as storage
from servers import S3Server, flaky_http_proxy, s3_environment, s3_fixtures

moto_server, s3 = s3_fixtures(scope="module")
auth_server, s3_auth = s3_fixtures("auth_server", "s3_auth", scope="module", validate_credentials=True)


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """One request per botocore call, three tries per operation, millisecond backoff."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("GANFORGE_S3_ATTEMPTS", "3")
    monkeypatch.setenv("GANFORGE_S3_BACKOFF_S", "0.005")


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_split_s3_returns_bucket_and_key() -> None:
    assert storage.split_s3("s3://my-bucket/a/b.txt") == ("my-bucket", "a/b.txt")
    assert storage.split_s3("s3://my.bucket") == ("my.bucket", "")


@pytest.mark.parametrize(
    "uri, message",
    [
        ("/tmp/x", "not an S3 URI"),
        ("s3:///key", "has no bucket"),
        ("s3://My_Bucket/key", "not a valid S3 bucket name"),
        ("s3://ab/key", "not a valid S3 bucket name"),
    ],
)
def test_split_s3_rejects_malformed_uris(uri: str, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        storage.split_s3(uri)


def test_join_keeps_the_scheme() -> None:
    assert fileio.join("s3://b1b/run/", "/model", "ckpt.pt") == "s3://b1b/run/model/ckpt.pt"
    assert fileio.join("file:///tmp/a", "b") == "file:///tmp/a/b"
    assert fileio.join("/tmp/a", "b", "c") == os.path.join("/tmp/a", "b", "c")
    assert fileio.is_s3("s3://b1b/x") and not fileio.is_s3("file:///x")


def test_endpoint_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    assert storage.endpoint_url_from_env() is None
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://mlflow-minio:9000")
    assert storage.s3_client().meta.endpoint_url == "http://mlflow-minio:9000"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:9000")
    assert storage.endpoint_url_from_env() == "http://generic:9000"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-only:9000")
    assert storage.s3_client().meta.endpoint_url == "http://s3-only:9000"


def test_client_uses_standard_bounded_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    retries = storage.s3_client().meta.config.retries
    assert retries["mode"] == "standard" and retries["total_max_attempts"] == 3


def test_local_round_trips(tmp_path: Path) -> None:
    storage.write_text(tmp_path / "a" / "t.txt", "hello")
    assert storage.read_text(f"file://{tmp_path}/a/t.txt") == "hello"
    storage.upload_file(tmp_path / "a" / "t.txt", tmp_path / "b" / "copy.txt")
    storage.download_file(tmp_path / "b" / "copy.txt", tmp_path / "c.txt")
    assert (tmp_path / "c.txt").read_text() == "hello"
    storage.upload_dir(tmp_path / "a", tmp_path / "d")
    storage.download_prefix(tmp_path / "d", tmp_path / "e")
    assert storage.list_prefix(tmp_path / "e") == [str(tmp_path / "e" / "t.txt")]
    assert storage.exists(tmp_path / "e" / "t.txt") and not storage.exists(tmp_path / "nope")
    with pytest.raises(StorageError, match="no file at"):
        storage.read_bytes(tmp_path / "nope")


def test_failed_local_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    """A real mid-write failure: the file-size limit makes write() fail with EFBIG after 1 KiB."""
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    child = (
        "import resource, signal, sys\n"
        "from ganforge.fileio import atomic_write_bytes\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))\n"
        "try:\n"
        f"    atomic_write_bytes({str(target)!r}, b'x' * 100_000)\n"
        "except StorageError as e:\n"
        "    print('failed', e.__cause__.errno, e)\n"
    )
    child = child.replace("import atomic_write_bytes", "import StorageError, atomic_write_bytes")
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith(f"failed 27 cannot write {target}: File too large (EFBIG)"), result.stderr
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_failed_atomic_file_block_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "grid.png"
    target.write_bytes(b"old")
    with pytest.raises(ValueError), fileio.atomic_file(target) as tmp:
        tmp.write_bytes(b"half")
        raise ValueError("writer crashed")
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_s3_bytes_and_text_round_trip(s3) -> None:
    data = bytes(range(256)) * 10
    storage.write_bytes(s3.uri("rt/blob.bin"), data)
    storage.write_text(s3.uri("rt/note.txt"), "naïve")
    assert storage.read_bytes(s3.uri("rt/blob.bin")) == data
    assert storage.read_text(s3.uri("rt/note.txt")) == "naïve"
    assert storage.exists(s3.uri("rt/blob.bin")) and not storage.exists(s3.uri("rt/none"))
    assert storage.list_prefix(s3.uri("rt")) == [s3.uri("rt/blob.bin"), s3.uri("rt/note.txt")]
    assert storage.list_prefix(s3.uri("r")) == []  # a prefix is a directory, not a string prefix


def test_s3_file_round_trip(s3, tmp_path: Path) -> None:
    src = tmp_path / "ckpt.pt"
    src.write_bytes(os.urandom(70_000))
    storage.upload_file(src, s3.uri("files/ckpt.pt"))
    dest = storage.download_file(s3.uri("files/ckpt.pt"), tmp_path / "out" / "ckpt.pt")
    assert dest.read_bytes() == src.read_bytes()
    assert leftovers(tmp_path / "out") == []


def test_s3_multipart_upload_round_trip(s3, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(11 * 2**20))
    storage.upload_file(src, s3.uri("mp/big.bin"), transfer_config=multipart_config())
    head = s3.client().head_object(Bucket=s3.bucket, Key="mp/big.bin")
    assert head["ETag"].strip('"').endswith("-3")  # three parts
    assert storage.download_file(s3.uri("mp/big.bin"), tmp_path / "big.out").read_bytes() == src.read_bytes()


def multipart_config() -> TransferConfig:
    return TransferConfig(multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20, max_concurrency=1)


def test_failed_multipart_upload_is_aborted(s3, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(11 * 2**20))

    def fail_while_sending(sent: int) -> None:
        raise RuntimeError("reading the checkpoint failed")

    with pytest.raises(RuntimeError, match="reading the checkpoint failed"):
        storage.upload_file(
            src, s3.uri("mp/aborted.bin"), progress=fail_while_sending, transfer_config=multipart_config()
        )
    assert s3.client().list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []
    assert not storage.exists(s3.uri("mp/aborted.bin"))


def test_ctrl_c_during_multipart_upload_aborts_it(s3, tmp_path: Path) -> None:
    """SIGINT reaches the main thread of a real process while parts are in flight."""
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(11 * 2**20))
    child = (
        "import os, signal, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # a background launcher may have set SIG_IGN\n"
        "from boto3.s3.transfer import TransferConfig\n"
        "from ganforge.platform import s3 as storage\n"
        "config = TransferConfig(multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20, max_concurrency=1)\n"
        "sent = []\n"
        "def ctrl_c(n):\n"
        "    sent.append(n)\n"
        "    if len(sent) == 1:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        time.sleep(5)  # hold this part so the upload cannot finish before the main thread sees SIGINT\n"
        "try:\n"
        f"    storage.upload_file({str(src)!r}, {s3.uri('mp/ctrl-c.bin')!r}, progress=ctrl_c, transfer_config=config)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
    )
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "interrupted", result.stderr
    client = s3.client()
    assert client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []
    assert not storage.exists(s3.uri("mp/ctrl-c.bin"))


def test_s3_directory_round_trip_with_marker(s3, tmp_path: Path) -> None:
    src = tmp_path / "dataset"
    (src / "shards").mkdir(parents=True)
    (src / "manifest.json").write_text('{"count": 2}')
    (src / "shards" / "0.npy").write_bytes(b"\x00" * 1000)
    (src / "shards" / "empty").write_bytes(b"")
    storage.upload_dir(src, s3.uri("dirs/ds"))
    marker = json.loads(storage.read_text(s3.uri("dirs/ds/_COMPLETE")))
    assert marker["files"] == [
        {"key": "manifest.json", "size": 12},
        {"key": "shards/0.npy", "size": 1000},
        {"key": "shards/empty", "size": 0},
    ]
    out = storage.download_prefix(s3.uri("dirs/ds/"), tmp_path / "copy")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "manifest.json",
        "shards/0.npy",
        "shards/empty",
    ]
    assert (out / "shards" / "0.npy").read_bytes() == b"\x00" * 1000
    assert leftovers(tmp_path) == []


def test_interrupted_upload_leaves_no_marker_old_or_new(s3, monkeypatch, tmp_path: Path) -> None:
    """Re-uploading over a finished upload, interrupted at its second object (the S3 endpoint, through a
    proxy, refuses that object's PUT): the old marker is already gone and the new one not yet there,
    so no reader takes the half-written prefix for either upload; the rerun completes it."""
    client = s3.client()
    old, new = tmp_path / "old", tmp_path / "new"
    for directory, contents in (
        (old, {"a.txt": "old a", "b.bin": "old b"}),
        (new, {"a.txt": "new a", "b.bin": "new b", "c.txt": "new c"}),
    ):
        directory.mkdir()
        for name, text in contents.items():
            (directory / name).write_text(text)
    storage.upload_dir(old, s3.uri("redo"))
    assert storage.exists(s3.uri("redo", storage.COMPLETE_MARKER))

    with flaky_http_proxy(
        s3.endpoint_url, fail_first=0, status=403, error_code="AccessDenied", fail_path="/redo/b.bin"
    ) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        with pytest.raises(StorageError, match="AccessDenied"):
            storage.upload_dir(new, s3.uri("redo"))
        assert proxy.failures_served == 1  # refused once, not retried (not transient)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint_url)

    def body(key: str) -> bytes:
        return client.get_object(Bucket=s3.bucket, Key=f"redo/{key}")["Body"].read()

    assert body("a.txt") == b"new a" and body("b.bin") == b"old b"  # interrupted part-way
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=s3.bucket, Prefix="redo/")["Contents"]}
    assert keys == {"redo/a.txt", "redo/b.bin"}  # no marker: the old one was removed first, the new one comes last
    with pytest.raises(StorageError, match="incomplete upload"):
        storage.download_prefix(s3.uri("redo"), tmp_path / "reader")

    storage.upload_dir(new, s3.uri("redo"))  # the rerun
    marker = json.loads(body(storage.COMPLETE_MARKER))
    assert [f["key"] for f in marker["files"]] == ["a.txt", "b.bin", "c.txt"]
    out = storage.download_prefix(s3.uri("redo"), tmp_path / "reader")
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a.txt": "new a", "b.bin": "new b", "c.txt": "new c"}


def test_download_prefix_refuses_upload_without_marker(s3, tmp_path: Path) -> None:
    client = s3.client()
    client.put_object(Bucket=s3.bucket, Key="partial/a.bin", Body=b"a")  # writer died before the marker
    previous = tmp_path / "data"
    previous.mkdir()
    (previous / "old.txt").write_text("previous download")
    with pytest.raises(StorageError) as info:
        storage.download_prefix(s3.uri("partial"), previous)
    assert str(info.value) == (
        f"incomplete upload at s3://{s3.bucket}/partial: _COMPLETE marker missing; "
        "the writer was interrupted (or never ran) — rerun the step"
    )
    assert (previous / "old.txt").read_text() == "previous download" and leftovers(tmp_path) == []


def test_download_prefix_refuses_objects_changed_after_the_marker(s3, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.bin").write_bytes(b"12345")
    storage.upload_dir(tmp_path / "d", s3.uri("changed"))
    storage.write_bytes(s3.uri("changed/x.bin"), b"123")
    with pytest.raises(StorageError, match="is 3 bytes but _COMPLETE records 5"):
        storage.download_prefix(s3.uri("changed"), tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_mlflow_endpoint_variable_is_enough(s3, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3.endpoint_url)
    storage.write_text(s3.uri("mlflow-env.txt"), "ok")
    assert storage.read_text(s3.uri("mlflow-env.txt")) == "ok"


def test_missing_bucket_error_names_bucket_endpoint_and_fix(s3, tmp_path: Path) -> None:
    with pytest.raises(StorageError) as info:
        storage.write_text("s3://no-such-bucket/run/x.txt", "x")
    message = str(info.value)
    assert "s3://no-such-bucket/run/x.txt" in message and "NoSuchBucket" in message
    assert f"endpoint {s3.endpoint_url}" in message and "credentials from 'env'" in message
    assert "bucket 'no-such-bucket' does not exist" in message and "aws s3 mb" in message
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        storage.exists("s3://no-such-bucket/x")  # not silently False
    (tmp_path / "local.bin").write_bytes(b"old")
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        storage.download_file("s3://no-such-bucket/x", tmp_path / "local.bin")
    assert (tmp_path / "local.bin").read_bytes() == b"old" and leftovers(tmp_path) == []


def test_missing_key_error_is_not_retried(s3, monkeypatch: pytest.MonkeyPatch) -> None:
    with flaky_http_proxy(s3.endpoint_url, fail_first=0) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        with pytest.raises(StorageError) as info:
            storage.read_bytes(s3.uri("missing/key.bin"))
        # one GET, plus one HEAD bucket to tell a missing key from a missing bucket
        assert proxy.requests == 2
    message = str(info.value)
    assert f"s3://{s3.bucket}/missing/key.bin" in message and "NoSuchKey" in message
    assert "no object at" in message and "run the step that writes it" in message


def test_unknown_access_key_is_named(s3_auth, monkeypatch: pytest.MonkeyPatch) -> None:
    storage.write_text(s3_auth.uri("auth.txt"), "valid keys work")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
    with pytest.raises(StorageError) as info:
        storage.read_text(s3_auth.uri("auth.txt"))
    message = str(info.value)
    assert "InvalidAccessKeyId" in message and "check AWS_ACCESS_KEY_ID" in message
    assert "credentials from 'env'" in message and s3_auth.endpoint_url in message


def test_wrong_secret_key_is_named(s3_auth, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StorageError, match="SignatureDoesNotMatch.*check AWS_SECRET_ACCESS_KEY"):
        storage.write_text(s3_auth.uri("auth2.txt"), "x")


def test_no_credentials_error_says_what_to_set(s3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(StorageError, match="no usable AWS credentials.*set AWS_ACCESS_KEY_ID"):
        storage.read_bytes(s3.uri("anything"))


def test_transient_503_is_retried_until_success(s3, fast_retries, monkeypatch, caplog) -> None:
    storage.write_text(s3.uri("flaky/x.txt"), "survived")
    with flaky_http_proxy(s3.endpoint_url, fail_first=2) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        with caplog.at_level(logging.WARNING, logger="ganforge.platform.s3"):
            assert storage.read_text(s3.uri("flaky/x.txt")) == "survived"
    assert (proxy.requests, proxy.failures_served) == (3, 2)
    assert [re.search(r"retry \d/\d", r.message).group() for r in caplog.records] == ["retry 1/2", "retry 2/2"]


def test_transient_errors_give_up_after_the_bound(s3, fast_retries, monkeypatch) -> None:
    with flaky_http_proxy(s3.endpoint_url, fail_first=1000, status=503, error_code="SlowDown") as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        with pytest.raises(StorageError, match=r"failed after 3 attempts .*SlowDown.*GANFORGE_S3_ATTEMPTS"):
            storage.write_text(s3.uri("flaky/y.txt"), "never")
    assert proxy.requests == 3


def test_botocore_and_operation_retries_multiply_and_stay_bounded(s3, monkeypatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("GANFORGE_S3_ATTEMPTS", "2")
    monkeypatch.setenv("GANFORGE_S3_BACKOFF_S", "0.005")
    with flaky_http_proxy(s3.endpoint_url, fail_first=1000, status=500, error_code="InternalError") as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        with pytest.raises(StorageError, match="failed after 2 attempts"):
            storage.read_bytes(s3.uri("flaky/z"))
    assert proxy.requests == 4


class _SignalOnWarning(logging.Handler):
    def __init__(self, event: threading.Event) -> None:
        super().__init__(logging.WARNING)
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        self.event.set()


def test_endpoint_that_comes_up_after_a_refused_connection_is_reached(s3, monkeypatch) -> None:
    s3.client().put_object(Bucket=s3.bucket, Key="late.txt", Body=b"late")
    from pipelines.stack import free_port

    port = free_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("GANFORGE_S3_ATTEMPTS", "6")
    monkeypatch.setenv("GANFORGE_S3_BACKOFF_S", "0.2")
    refused, finished = threading.Event(), threading.Event()

    def serve_after_first_refusal() -> None:
        if refused.wait(30):
            with flaky_http_proxy(s3.endpoint_url, fail_first=0, port=port):
                finished.wait(30)

    handler = _SignalOnWarning(refused)
    logger = logging.getLogger("ganforge.platform.s3")
    logger.addHandler(handler)
    server_thread = threading.Thread(target=serve_after_first_refusal)
    server_thread.start()
    try:
        assert storage.read_text(s3.uri("late.txt")) == "late"
    finally:
        logger.removeHandler(handler)
        refused.set()
        finished.set()
        server_thread.join()


def test_s3_environment_restores_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "mine")
    monkeypatch.setenv("AWS_PROFILE", "work")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    server = S3Server(endpoint_url="http://127.0.0.1:9", bucket="restore-test")
    with s3_environment(server):
        assert os.environ["AWS_ENDPOINT_URL"] == server.endpoint_url
        assert os.environ["AWS_ACCESS_KEY_ID"] == "testing" and "AWS_PROFILE" not in os.environ
    assert os.environ["AWS_ACCESS_KEY_ID"] == "mine" and os.environ["AWS_PROFILE"] == "work"
    assert "AWS_ENDPOINT_URL" not in os.environ


# --- object names from the bucket never choose where a local file lands ---


def _hostile_keys(s3: S3Server, prefix: str, base: Path, tag: str) -> list[Path]:
    """Put objects whose names would escape a download directory two levels below ``base``: one
    with ``..`` segments, one with an absolute path after ``//``. Returns where they would land."""
    client = s3.client()
    dots, absolute = base / f"escaped-dots-{tag}.txt", base / f"escaped-abs-{tag}.txt"
    client.put_object(Bucket=s3.bucket, Key=f"{prefix}/../../{dots.name}", Body=b"pwned")
    client.put_object(Bucket=s3.bucket, Key=f"{prefix}/{absolute}", Body=b"pwned")  # prefix + "//abs/path"
    return [dots, absolute]


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (28, 28), 7).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "key, problem",
    [
        ("../x", "'..'"),
        ("a/../../x", "'..'"),
        ("/abs/x", "absolute"),
        ("a//x", "empty"),
        ("./x", "'.'"),
        ("", "empty"),
    ],
)
def test_unsafe_key_is_refused_before_it_becomes_a_path(tmp_path: Path, key: str, problem: str) -> None:
    with pytest.raises(StorageError, match=rf"refusing to download s3://b/p/.*{re.escape(problem)}"):
        storage.local_path_for_key(tmp_path, key, f"s3://b/p/{key}")
    assert storage.local_path_for_key(tmp_path, "a/b.txt", "s3://b/p/a/b.txt") == tmp_path / "a" / "b.txt"


def test_listing_download_refuses_keys_that_leave_the_directory(s3, tmp_path: Path) -> None:
    """A prefix without _COMPLETE (user-uploaded data) is fetched by listing: hostile names are refused."""
    s3.client().put_object(Bucket=s3.bucket, Key="hostile/ok.png", Body=_png_bytes())
    (tmp_path / "a").mkdir()
    escapes = _hostile_keys(s3, "hostile", tmp_path, "listing")  # download dir: tmp_path/a/.dl.XXX.tmp
    with pytest.raises(StorageError, match=r"refusing to download s3://ganforge-test/hostile/"):
        storage.download_prefix(s3.uri("hostile"), tmp_path / "a" / "dl", require_marker=False)
    assert [p for p in escapes if p.exists()] == []
    assert not (tmp_path / "a" / "dl").exists() and leftovers(tmp_path / "a") == []


def test_prep_from_s3_with_hostile_keys_is_one_line_and_writes_nothing_outside(
    s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import tempfile

    from ganforge import cli

    s3.client().put_object(Bucket=s3.bucket, Key="prep-src/a.png", Body=_png_bytes())
    (tmp_path / "tmp").mkdir()
    # prep downloads into TMPDIR/ganforge-s3-XXX via a sibling TMPDIR/.ganforge-s3-XXX.YYY.tmp
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    escapes = _hostile_keys(s3, "prep-src", tmp_path, "prep")
    status = cli.main(["prep", "--profile", "tiny", "--source", s3.uri("prep-src"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "refusing to download s3://ganforge-test/prep-src/" in err and "aws s3 rm" in err
    assert [p for p in escapes if p.exists()] == [] and not (tmp_path / "out").exists()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_resume_pull_refuses_keys_that_leave_the_staging_directory(
    s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, fashion_train: Path
) -> None:
    from ganforge import cli
    from ganforge.platform.cluster_train import pull_run

    s3.client().put_object(Bucket=s3.bucket, Key="run-h/config.json", Body=b"{}")
    stage = tmp_path / "stage" / "run"
    stage.mkdir(parents=True)
    escapes = _hostile_keys(s3, "run-h", tmp_path, "pull")  # stage/../../ = tmp_path
    with pytest.raises(StorageError, match=r"refusing to download s3://ganforge-test/run-h/"):
        pull_run(s3.uri("run-h"), stage)
    assert [p for p in escapes if p.exists()] == []
    # The same through `ganforge train --resume --out s3://…` (staging under GANFORGE_CACHE/staging/run-…).
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path / "cache"))
    escapes = _hostile_keys(s3, "run-h", tmp_path / "cache", "train")  # cache/staging/run-…/../../
    status = cli.main(
        ["train", "--profile", "tiny", "--data", str(fashion_train), "--out", s3.uri("run-h"), "--resume"]
    )
    err = capsys.readouterr().err
    assert status == 2 and "refusing to download s3://ganforge-test/run-h/" in err and "Traceback" not in err, err
    assert [p for p in escapes if p.exists()] == []


@pytest.mark.parametrize(
    "keys, words",
    [
        (["ok.png", "x" * 300 + ".png"], "is 304 bytes, longer than the 239 a local file name can have"),
        (["coll", "coll/inner.png"], "/coll is an object and also the folder of s3://ganforge-test/"),
    ],
    ids=["300-byte name", "file and folder"],
)
def test_prep_and_train_from_s3_keys_that_cannot_be_local_paths_are_one_line(
    s3,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    fashion_train: Path,
    keys: list[str],
    words: str,
) -> None:
    """S3 takes keys no local file system does; prep --source, train --data and train --resume --out name the
    object and the fix."""
    import tempfile

    from ganforge import cli

    prefix = f"unlocal-{len(keys[1])}"
    for key in keys:
        s3.client().put_object(Bucket=s3.bucket, Key=f"{prefix}/{key}", Body=_png_bytes())
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where prep downloads the source
    status = cli.main(["prep", "--profile", "tiny", "--source", s3.uri(prefix), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert words in err and "Fix: rename" in err and "aws s3 rm" in err, err
    assert not (tmp_path / "out").exists() and list((tmp_path / "tmp").iterdir()) == []
    # The same objects as a completed prepared-dataset prefix (with _COMPLETE), through train --data.
    marker = {"files": [{"key": key, "size": len(_png_bytes())} for key in keys]}
    s3.client().put_object(Bucket=s3.bucket, Key=f"{prefix}/{storage.COMPLETE_MARKER}", Body=json.dumps(marker))
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path / "cache"))  # staging under cache/staging/
    status = cli.main(["train", "--profile", "tiny", "--data", s3.uri(prefix), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert words in err and "Fix: rename" in err, err
    assert list((tmp_path / "cache" / "staging").iterdir()) == []
    # The same objects as a run to resume (train --resume --out s3://… pulls every object under it).
    status = cli.main(["train", "--profile", "tiny", "--data", str(fashion_train), "--out", s3.uri(prefix), "--resume"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and words in err and "Fix: rename" in err, err


# --- an endpoint that accepts connections and never answers ---


class _SilentServer:
    """Accepts TCP connections, reads what comes, never answers; closes everything on exit."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(conn)  # kept open, never answered

    def __enter__(self) -> _SilentServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.mark.parametrize("operation", ["read", "upload", "download_prefix"])
def test_silent_endpoint_fails_within_the_time_budget_naming_it(s3, monkeypatch, tmp_path, operation) -> None:
    budget = 2.0
    (tmp_path / "f.bin").write_bytes(b"x" * 100)
    calls = {
        "read": lambda: storage.read_bytes(s3.uri("x")),
        "upload": lambda: storage.upload_file(tmp_path / "f.bin", s3.uri("f.bin")),
        "download_prefix": lambda: storage.download_prefix(s3.uri("p"), tmp_path / "d", require_marker=False),
    }
    outcome: dict = {}

    def call() -> None:
        storage.s3_client()  # built (a few hundred ms, more on a loaded machine) before the clock starts
        started = time.monotonic()
        try:
            calls[operation]()
        except StorageError as e:
            outcome["error"] = str(e)
        outcome["seconds"] = time.monotonic() - started

    with _SilentServer() as silent:
        monkeypatch.setenv("AWS_ENDPOINT_URL", silent.url)
        monkeypatch.setenv(storage.TIMEOUT_ENV, str(budget))  # defaults kept: 3 botocore x 4 ganforge attempts
        worker = threading.Thread(target=call, daemon=True)  # daemon: a hang fails the test, not the session
        worker.start()
        worker.join(timeout=budget + 20)
        assert not worker.is_alive(), "still waiting on the silent endpoint long after the budget"
    assert outcome["seconds"] < budget + 1.5, outcome
    assert f"endpoint {silent.url} did not answer within the 2 s budget (GANFORGE_S3_TIMEOUT_S" in outcome["error"]
    assert "\n" not in outcome["error"] and "Fix: check that the endpoint is up" in outcome["error"]


def test_time_budget_must_be_a_positive_number(monkeypatch) -> None:
    monkeypatch.setenv(storage.TIMEOUT_ENV, "soon")
    with pytest.raises(StorageError, match="GANFORGE_S3_TIMEOUT_S='soon' must be a positive number of seconds"):
        storage.time_budget_from_env()


def test_atomic_outputs_get_the_umask_mode_not_a_private_one(tmp_path):
    """mkstemp/mkdtemp make 0600/0700 temporaries; what lands must have the mode open()/mkdir() give."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        f = fileio.atomic_write_text(tmp_path / "manifest.json", "{}")
        with fileio.atomic_file(tmp_path / "x.bin") as tmp:
            tmp.write_bytes(b"x")
        with fileio.atomic_dir(tmp_path / "out") as d:
            (d / "a.txt").write_text("a")
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "x.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
