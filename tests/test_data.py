"""Data preparation on real files: Fashion-MNIST IDX, synthetic IDX, image folders."""

from __future__ import annotations

import datetime
import gzip
import json
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ganforge
from ganforge import data
from ganforge.config import DEFAULT_IDX_DIR, DataConfig
from ganforge.data import DataError

FASHION = Path(DEFAULT_IDX_DIR)
needs_fashion = pytest.mark.skipif(
    not (FASHION / "t10k-images-idx3-ubyte.gz").exists(), reason="apt-get install dataset-fashion-mnist"
)


def idx_bytes(a: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    return header + a.astype(np.uint8).tobytes()


def write_idx_dir(
    directory: Path, n: int = 20, n_labels: int | None = None, compress: bool = True, split_prefix: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """A small IDX split written the way the Fashion-MNIST files are; returns its images and labels."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n if n_labels is None else n_labels, dtype=np.uint8)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    opener = gzip.open if compress else open
    for name, arr, magic in (
        (f"{split_prefix}-images-idx3-ubyte", images, 0x803),
        (f"{split_prefix}-labels-idx1-ubyte", labels, 0x801),
    ):
        with opener(directory / f"{name}{suffix}", "wb") as f:
            f.write(idx_bytes(arr, magic))
    return images, labels


def save_png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


@needs_fashion
def test_fashion_mnist_prep_with_limit_is_reproducible(tmp_path):
    cfg = DataConfig(limit=64)
    first = data.prepare(cfg, tmp_path / "a")
    second = data.prepare(cfg, tmp_path / "b")
    assert first["sha256"] == second["sha256"]
    assert first["shape"] == [64, 1, 28, 28] and first["count"] == 64 and first["dtype"] == "uint8"
    assert first["kind"] == "image" and first["split"] == "train" and first["source"] == DEFAULT_IDX_DIR
    assert first["ganforge_version"] == ganforge.__version__
    assert datetime.datetime.fromisoformat(first["created"]).tzinfo is not None
    assert sum(first["class_histogram"].values()) == 64
    assert json.loads((tmp_path / "a" / "manifest.json").read_text()) == first

    ds = data.load_dataset(tmp_path / "a")
    assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int64 and len(ds.labels) == 64
    assert data.verify_sha256(ds) == first["sha256"] == data.sha256_of_array(np.asarray(ds.images))
    # Independent read of the first image straight from the gzip (16-byte IDX header).
    with gzip.open(FASHION / "train-images-idx3-ubyte.gz") as f:
        raw_first = np.frombuffer(f.read(16 + 784)[16:], np.uint8).reshape(28, 28)
    np.testing.assert_array_equal(ds.images[0, 0], raw_first)
    histogram = dict(zip(*np.unique(ds.labels, return_counts=True)))
    assert first["class_histogram"] == {str(k): int(v) for k, v in histogram.items()}


@needs_fashion
def test_test_split_resized_to_rgb_32(tmp_path):
    manifest = data.prepare(DataConfig(resolution=32, channels=3, limit=10), tmp_path / "t", split="test")
    assert manifest["split"] == "test" and manifest["shape"] == [10, 3, 32, 32]
    ds = data.load_dataset(tmp_path / "t")
    # The first Fashion-MNIST test labels: ankle boot, pullover, trouser, trouser, shirt.
    assert ds.labels[:5].tolist() == [9, 2, 1, 1, 6]
    assert np.array_equal(ds.images[:, 0], ds.images[:, 1]) and np.array_equal(ds.images[:, 0], ds.images[:, 2])
    data.prepare(DataConfig(limit=10), tmp_path / "n", split="test")
    native = data.load_dataset(tmp_path / "n")
    # Bilinear upsampling keeps the mean brightness of each image within a few levels.
    mean_diff = np.abs(ds.images[:, 0].mean(axis=(1, 2)) - native.images[:, 0].mean(axis=(1, 2)))
    assert mean_diff.max() < 3.0 and native.images.shape == (10, 1, 28, 28)


def test_limit_keeps_the_first_examples_and_resize_to_64(tmp_path):
    images, labels = write_idx_dir(tmp_path / "idx", n=12, compress=False)
    data.prepare(DataConfig(source=str(tmp_path / "idx")), tmp_path / "full")
    full = data.load_dataset(tmp_path / "full")
    data.prepare(DataConfig(source=str(tmp_path / "idx"), limit=5), tmp_path / "five")
    five = data.load_dataset(tmp_path / "five")
    np.testing.assert_array_equal(full.images[:, 0], images)
    np.testing.assert_array_equal(five.images, full.images[:5])
    np.testing.assert_array_equal(five.labels, labels[:5].astype(np.int64))
    big = data.prepare(DataConfig(source=str(tmp_path / "idx"), resolution=64, limit=100), tmp_path / "big")
    assert big["shape"] == [12, 1, 64, 64]


def corrupt_wrong_magic(d: Path) -> str:
    raw = gzip.decompress((d / "train-images-idx3-ubyte.gz").read_bytes())
    (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x02" + raw[4:]))
    return "train-images-idx3-ubyte.gz"


def corrupt_truncated(d: Path) -> str:
    raw = gzip.decompress((d / "train-images-idx3-ubyte.gz").read_bytes())
    (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-100]))
    return "train-images-idx3-ubyte.gz"


def corrupt_count_mismatch(d: Path) -> str:
    labels = np.zeros(19, np.uint8)
    (d / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels, 0x801)))
    return "train-labels-idx1-ubyte.gz"


def corrupt_bad_gzip(d: Path) -> str:
    good = (d / "train-labels-idx1-ubyte.gz").read_bytes()
    (d / "train-labels-idx1-ubyte.gz").write_bytes(good[: len(good) // 2])
    return "train-labels-idx1-ubyte.gz"


def corrupt_not_gzip(d: Path) -> str:
    (d / "train-images-idx3-ubyte.gz").write_bytes(b"this is not gzip data at all")
    return "train-images-idx3-ubyte.gz"


def corrupt_missing_labels(d: Path) -> str:
    (d / "train-labels-idx1-ubyte.gz").unlink()
    return "train-labels-idx1-ubyte"


@pytest.mark.parametrize(
    "corrupt, words",
    [
        (corrupt_wrong_magic, "magic"),
        (corrupt_truncated, "truncated"),
        (corrupt_count_mismatch, "20 images but"),
        (corrupt_bad_gzip, "corrupt gzip"),
        (corrupt_not_gzip, "corrupt gzip"),
        (corrupt_missing_labels, "dataset-fashion-mnist"),
    ],
)
def test_corrupt_idx_raises_naming_the_file(tmp_path, corrupt, words):
    write_idx_dir(tmp_path / "idx")
    filename = corrupt(tmp_path / "idx")
    with pytest.raises(DataError) as err:
        data.prepare(DataConfig(source=str(tmp_path / "idx")), tmp_path / "out")
    assert filename in str(err.value) and words in str(err.value)
    assert not (tmp_path / "out").exists()


def test_missing_test_split_names_what_was_looked_for(tmp_path):
    write_idx_dir(tmp_path / "idx")
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte and t10k-images-idx3-ubyte\.gz"):
        data.prepare(DataConfig(source=str(tmp_path / "idx")), tmp_path / "out", split="test")


def test_image_folder_with_class_subfolders(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(3):
        save_png(tmp_path / "src" / "cat" / f"{i}.png", rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(
            tmp_path / "src" / "cat" / f"j{i}.JPG", quality=90
        )
        save_png(tmp_path / "src" / "dog" / "deep" / f"{i}.png", rng.integers(0, 256, (64, 64, 4), dtype=np.uint8))
    manifest = data.prepare(DataConfig(source=str(tmp_path / "src"), resolution=32, channels=3), tmp_path / "out")
    assert manifest["shape"] == [7, 3, 32, 32] and manifest["split"] == "all"
    assert manifest["class_names"] == ["cat", "dog"] and manifest["class_histogram"] == {"0": 5, "1": 2}
    ds = data.load_dataset(tmp_path / "out")
    assert ds.labels.tolist() == [0, 0, 0, 0, 0, 1, 1]


def test_image_folder_with_split_subfolders_reads_the_split(tmp_path):
    for split, value in (("train", 10), ("test", 20)):
        for cls in ("a", "b"):
            save_png(tmp_path / "src" / split / cls / "x.png", np.full((28, 28), value, np.uint8))
    manifest = data.prepare(DataConfig(source=str(tmp_path / "src")), tmp_path / "out", split="test")
    assert manifest["split"] == "test" and manifest["class_names"] == ["a", "b"]
    assert (data.load_dataset(tmp_path / "out").images == 20).all()


def test_audio_kind_is_prepared_by_the_audio_module(tmp_path):
    cfg = DataConfig(kind="audio", source=str(tmp_path / "no-wavs-here"))
    with pytest.raises(DataError, match=r"audio source .*no-wavs-here.* does not exist"):
        data.prepare(cfg, tmp_path / "out")


def test_image_folder_resizes_shorter_side_then_center_crops(tmp_path):
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, :20] = (255, 0, 0)
    wide[:, 20:40] = (0, 255, 0)
    wide[:, 40:] = (0, 0, 255)
    save_png(tmp_path / "src" / "wide.png", wide)
    manifest = data.prepare(DataConfig(source=str(tmp_path / "src"), resolution=28, channels=3), tmp_path / "out")
    assert manifest["class_histogram"] is None and not (tmp_path / "out" / "labels.npy").exists()
    img = data.load_dataset(tmp_path / "out").images[0]
    # 20×60 → 28×84, cropped to the middle 28 columns: the green third (bilinear blur at the edges).
    assert img.shape == (3, 28, 28)
    assert (img[1, :, 2:-2] == 255).all() and (img[0, :, 2:-2] == 0).all() and (img[2, :, 2:-2] == 0).all()


def test_gray_folder_replicates_into_three_channels_and_scales_16_bit(tmp_path):
    save_png(tmp_path / "src" / "a.png", np.full((28, 28), 100, np.uint8))
    save_png(tmp_path / "src" / "b.png", np.full((28, 28), 40000, np.uint16))
    save_png(tmp_path / "src" / "c.png", np.full((28, 28, 2), 200, np.uint8), "LA")
    data.prepare(DataConfig(source=str(tmp_path / "src"), channels=3), tmp_path / "out")
    images = data.load_dataset(tmp_path / "out").images
    assert images.shape == (3, 3, 28, 28)
    assert [int(images[i, c, 0, 0]) for i in range(3) for c in range(3)] == [100] * 3 + [156] * 3 + [200] * 3


def test_palette_images_convert(tmp_path):
    rgb = np.zeros((28, 28, 3), np.uint8)
    rgb[..., 0] = 200
    (tmp_path / "src").mkdir()
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "src" / "p.png")
    data.prepare(DataConfig(source=str(tmp_path / "src"), channels=3), tmp_path / "out")
    assert tuple(data.load_dataset(tmp_path / "out").images[0, :, 5, 5]) == (200, 0, 0)


def test_empty_folder_lists_extensions(tmp_path):
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"no images found in .*src.*\*\.png, \*\.jpg, \*\.jpeg"):
        data.prepare(DataConfig(source=str(tmp_path / "src")), tmp_path / "out")


def test_unreadable_image_is_named(tmp_path):
    save_png(tmp_path / "src" / "good.png", np.zeros((28, 28), np.uint8))
    (tmp_path / "src" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png"):
        data.prepare(DataConfig(source=str(tmp_path / "src")), tmp_path / "out")


def test_truncated_jpeg_is_named(tmp_path):
    path = tmp_path / "src" / "cut.jpg"
    path.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(DataError, match=r"cut\.jpg"):
        data.prepare(DataConfig(source=str(tmp_path / "src"), channels=3), tmp_path / "out")


def test_mixed_channels_names_one_file_of_each_kind(tmp_path):
    save_png(tmp_path / "src" / "gray.png", np.zeros((28, 28), np.uint8))
    save_png(tmp_path / "src" / "rgb.png", np.zeros((28, 28, 3), np.uint8))
    with pytest.raises(DataError, match=r"mixes channel counts") as err:
        data.prepare(DataConfig(source=str(tmp_path / "src"), channels=3), tmp_path / "out")
    assert "gray.png" in str(err.value) and "rgb.png" in str(err.value)


def test_color_images_into_one_channel_is_an_error(tmp_path):
    save_png(tmp_path / "src" / "a.png", np.zeros((28, 28), np.uint8))
    save_png(tmp_path / "src" / "b.png", np.zeros((28, 28, 3), np.uint8))
    with pytest.raises(DataError, match=r"RGB images \(e\.g\. .*b\.png\) but data\.channels=1; set data\.channels=3"):
        data.prepare(DataConfig(source=str(tmp_path / "src"), channels=1), tmp_path / "out")


def test_loose_images_beside_class_folders_are_an_error(tmp_path):
    for name in ("a/1.png", "b/1.png", "loose.png"):
        save_png(tmp_path / "src" / name, np.zeros((28, 28), np.uint8))
    with pytest.raises(DataError, match=r"loose\.png"):
        data.prepare(DataConfig(source=str(tmp_path / "src")), tmp_path / "out")


@pytest.mark.parametrize(
    "source, words",
    [
        ("/nonexistent/ganforge-data", "does not exist"),
        ("torchvision:ImageNet", "torchvision:FashionMNIST"),
        ("ftp://example/data", "does not exist"),
    ],
)
def test_bad_source_lists_accepted_forms(tmp_path, source, words):
    with pytest.raises(DataError) as err:
        data.prepare(DataConfig(source=source), tmp_path / "out")
    assert words in str(err.value) and source in str(err.value)
    if "does not exist" in words:
        assert "s3://bucket/prefix" in str(err.value)


def test_file_as_source_is_an_error(tmp_path):
    (tmp_path / "f.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"is a file, not a directory"):
        data.prepare(DataConfig(source=str(tmp_path / "f.png")), tmp_path / "out")


def test_failed_write_leaves_no_output_and_keeps_previous(tmp_path, monkeypatch):
    write_idx_dir(tmp_path / "idx")
    cfg = DataConfig(source=str(tmp_path / "idx"))
    previous = data.prepare(cfg, tmp_path / "kept")
    before = {p.name: p.read_bytes() for p in (tmp_path / "kept").iterdir()}

    def crash_after_data_npy(directory, manifest):
        assert (directory / "data.npy").exists()  # the writer really is midway
        raise OSError("disk full (injected)")

    monkeypatch.setattr(data, "write_manifest", crash_after_data_npy)
    for out in ("fresh", "kept"):
        with pytest.raises(OSError, match="injected"):
            data.prepare(DataConfig(source=str(tmp_path / "idx"), limit=3), tmp_path / out)
    assert not (tmp_path / "fresh").exists()
    assert {p.name: p.read_bytes() for p in (tmp_path / "kept").iterdir()} == before
    assert data.load_dataset(tmp_path / "kept").manifest == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "kept"]


def test_load_dataset_errors(tmp_path):
    with pytest.raises(DataError, match=r"manifest\.json missing in .*empty; create it with `ganforge prep`"):
        (tmp_path / "empty").mkdir()
        data.load_dataset(tmp_path / "empty")
    write_idx_dir(tmp_path / "idx")
    data.prepare(DataConfig(source=str(tmp_path / "idx")), tmp_path / "ds")
    data_npy = tmp_path / "ds" / "data.npy"

    tampered = np.load(data_npy)
    tampered[0, 0, 0, 0] ^= 0xFF
    np.save(data_npy, tampered)
    ds = data.load_dataset(tmp_path / "ds")  # shape and dtype still match: only the full check sees it
    with pytest.raises(DataError, match=r"sha256"):
        data.verify_sha256(ds)

    np.save(data_npy, tampered[:5])
    with pytest.raises(DataError, match=r"data\.npy is uint8 \[5, 1, 28, 28\] but .*manifest\.json says"):
        data.load_dataset(tmp_path / "ds")
    data_npy.unlink()
    with pytest.raises(DataError, match=r"data\.npy is missing"):
        data.load_dataset(tmp_path / "ds")
    (tmp_path / "ds" / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match=r"not valid JSON"):
        data.load_dataset(tmp_path / "ds")


def test_sha256_of_array_is_of_c_contiguous_bytes():
    import hashlib

    a = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    assert data.sha256_of_array(a.T.copy().T) == hashlib.sha256(a.tobytes()).hexdigest()
    assert data.sha256_of_array(a[:, ::2]) == hashlib.sha256(np.ascontiguousarray(a[:, ::2]).tobytes()).hexdigest()
    assert data.sha256_of_array(np.zeros((0, 1, 28, 28), np.uint8)) == hashlib.sha256(b"").hexdigest()


def host_reachable(host: str, port: int = 80) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def test_torchvision_offline_says_so(tmp_path, monkeypatch):
    if host_reachable("fashion-mnist.s3-website.eu-central-1.amazonaws.com"):
        pytest.skip("online: the download would succeed, so the offline error cannot be checked here")
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"could not download torchvision:FashionMNIST.*offline.*fashion-mnist"):
        data.prepare(DataConfig(source="torchvision:FashionMNIST", limit=8), tmp_path / "out")


def test_torchvision_cached_files_agree_with_the_idx_reader(tmp_path, monkeypatch):
    """torchvision's own IDX parser (reading the cache) and ours give the same array."""
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path / "cache"))
    raw = tmp_path / "cache" / "torchvision" / "FashionMNIST" / "raw"
    write_idx_dir(raw, n=16, compress=False)
    write_idx_dir(raw, n=8, compress=False, split_prefix="t10k")
    via_torchvision = data.prepare(DataConfig(source="torchvision:FashionMNIST", resolution=32), tmp_path / "tv")
    via_idx = data.prepare(DataConfig(source=str(raw), resolution=32), tmp_path / "idx")
    assert via_torchvision["sha256"] == via_idx["sha256"] and via_torchvision["count"] == 16
    assert via_torchvision["class_histogram"] == via_idx["class_histogram"]
    assert via_torchvision["class_names"][0] == "T-shirt/top"


@pytest.fixture
def s3_endpoint(monkeypatch):
    """A real S3 HTTP endpoint (moto server in a thread) with one bucket, "data"."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3").create_bucket(Bucket="data")
    yield
    server.stop()


def test_s3_prefix_is_downloaded_and_detected(tmp_path, s3_endpoint):
    from ganforge.platform import s3 as storage

    images, _ = write_idx_dir(tmp_path / "idx", n=10)
    save_png(tmp_path / "folder" / "a.png", np.full((28, 28), 7, np.uint8))
    storage.upload_dir(tmp_path / "idx", "s3://data/fmnist")
    storage.upload_dir(tmp_path / "folder", "s3://data/pngs")
    manifest = data.prepare(DataConfig(source="s3://data/fmnist"), tmp_path / "out")
    assert manifest["source"] == "s3://data/fmnist" and manifest["count"] == 10
    np.testing.assert_array_equal(data.load_dataset(tmp_path / "out").images[:, 0], images)
    folder = data.prepare(DataConfig(source="s3://data/pngs"), tmp_path / "out2")
    assert folder["split"] == "all" and int(data.load_dataset(tmp_path / "out2").images.max()) == 7
    (tmp_path / "folder" / "broken.png").write_bytes(b"not a png")
    storage.upload_dir(tmp_path / "folder", "s3://data/pngs")
    with pytest.raises(DataError, match=r"cannot read image s3://data/pngs/broken\.png"):
        data.prepare(DataConfig(source="s3://data/pngs"), tmp_path / "out3")


def test_s3_prefix_uploaded_by_hand_without_marker_is_accepted(tmp_path, s3_endpoint):
    """Users upload source data with their own tools (`aws s3 sync`): no _COMPLETE marker needed."""
    import boto3

    write_idx_dir(tmp_path / "idx", n=4)
    for f in (tmp_path / "idx").iterdir():
        boto3.client("s3").upload_file(str(f), "data", f"handmade/{f.name}")
    manifest = data.prepare(DataConfig(source="s3://data/handmade"), tmp_path / "out")
    local = data.prepare(DataConfig(source=str(tmp_path / "idx")), tmp_path / "out-local")
    assert manifest["count"] == 4 and manifest["sha256"] == local["sha256"]
    with pytest.raises(DataError, match=r"s3://data/nothing-here"):
        data.prepare(DataConfig(source="s3://data/nothing-here"), tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


# --- --out never deletes what ganforge did not write ---


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _prep_cli(capsys, source: Path, out: Path) -> tuple[int, str]:
    from ganforge import cli

    status = cli.main(["prep", "--profile", "tiny", "--source", str(source), "--out", str(out)])
    return status, capsys.readouterr().err


def test_prep_out_that_is_a_file_is_refused_and_kept(tmp_path, capsys):
    write_idx_dir(tmp_path / "idx")
    (tmp_path / "out").write_text("a user's file")
    status, err = _prep_cli(capsys, tmp_path / "idx", tmp_path / "out")
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"--out {tmp_path / 'out'} is a file" in err and "Fix: choose another --out" in err
    assert (tmp_path / "out").read_text() == "a user's file"


@pytest.mark.parametrize("out_of", ["the source", "a parent of the source"])
def test_prep_out_that_is_or_holds_the_source_is_refused(tmp_path, capsys, out_of):
    source = tmp_path / "photos" / "cats"
    save_png(source / "a.png", np.full((28, 28), 9, np.uint8))
    before = _tree(tmp_path)
    out = source if out_of == "the source" else tmp_path / "photos"
    status, err = _prep_cli(capsys, source, out)
    assert status == 2 and err.count("\n") == 1, err
    assert (
        f"--out {out} is" in err and f"the input {source}" in err and "Fix: choose a separate output directory" in err
    )
    assert _tree(tmp_path) == before


def test_prep_out_with_a_users_files_is_refused(tmp_path, capsys):
    write_idx_dir(tmp_path / "idx")
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "thesis.tex").write_text("two years of work")
    status, err = _prep_cli(capsys, tmp_path / "idx", out)
    assert status == 2 and err.count("\n") == 1, err
    assert (
        f"--out {out} is a non-empty folder that is not an earlier ganforge prep output (no valid manifest.json)" in err
    )
    assert (out / "sub" / "thesis.tex").read_text() == "two years of work"


def test_prep_replaces_an_earlier_prep_output_but_not_a_users_file_in_it(tmp_path, capsys):
    write_idx_dir(tmp_path / "idx", n=20)
    out = tmp_path / "out"
    assert data.prepare(DataConfig(source=str(tmp_path / "idx"), limit=5), out)["count"] == 5
    assert data.prepare(DataConfig(source=str(tmp_path / "idx"), limit=7), out)["count"] == 7  # replaced whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "out"]  # nothing left beside it
    (out / "README.txt").write_text("my notes about this dataset")
    before = _tree(out)
    status, err = _prep_cli(capsys, tmp_path / "idx", out)
    assert (
        status == 2 and f"holds {out / 'README.txt'}, which the earlier ganforge prep output there did not write" in err
    )
    assert _tree(out) == before
    (out / "README.txt").unlink()
    (out / "data.npy").write_bytes(b"x")
    (out / "manifest.json").write_text('{"hand": "written"}')  # a manifest, but not one prep wrote
    status, err = _prep_cli(capsys, tmp_path / "idx", out)
    assert status == 2 and "not an earlier ganforge prep output" in err


def test_prep_out_under_a_file_or_read_only_place_is_one_line(tmp_path, capsys):
    write_idx_dir(tmp_path / "idx")
    (tmp_path / "afile").write_text("x")
    status, err = _prep_cli(capsys, tmp_path / "idx", tmp_path / "afile" / "out")
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{tmp_path / 'afile'} is a file, not a directory" in err and "Fix:" in err


# --- hostile files: bounded decompression, bombs, overflowing headers ---


def test_gzip_idx_that_unpacks_far_past_its_header_is_refused_without_unpacking_it(tmp_path):
    """Header: 10 images of 28×28; then 256 MiB of zeros (a ~250 KB .gz). Read in a fresh process: its peak
    memory shows whether the file was unpacked whole."""
    import subprocess
    import sys

    write_idx_dir(tmp_path / "idx", n=10)
    bomb = tmp_path / "idx" / "train-images-idx3-ubyte.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as f:
        f.write(idx_bytes(np.zeros((10, 28, 28), np.uint8), 0x803))
        for _ in range(16):
            f.write(bytes(16 << 20))
    assert bomb.stat().st_size < 2 << 20
    child = (
        "from pathlib import Path; from ganforge import data\n"
        "try:\n"
        f"    data.read_idx(Path({str(bomb)!r}), data.IDX_IMAGES_MAGIC)\n"
        "except data.DataError as e:\n"
        "    print(e)\n"
        # VmHWM: this process's own peak (ru_maxrss would carry the forking pytest process's over exec)
        "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) // 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    message, peak_mib = done.stdout.strip().splitlines()
    assert f"{bomb} has more bytes after the 7840 its header (10×28×28) promises" in message, done.stderr
    assert int(peak_mib) < 200, f"peak {peak_mib} MiB: the 256 MiB body was unpacked"


def test_idx_header_whose_sizes_overflow_is_named(tmp_path, capsys):
    from ganforge import cli

    write_idx_dir(tmp_path / "idx", n=10)
    header = (0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (2**31, 2**31, 4))  # 2^64: wraps to 0
    (tmp_path / "idx" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header))
    status = cli.main(["prep", "--profile", "tiny", "--source", str(tmp_path / "idx"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    assert "train-images-idx3-ubyte.gz: its IDX header promises 2147483648×2147483648×4" in err[0]
    assert "header is corrupt" in err[0]


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width×height gray pixels (PIL checks the size on open, before any pixel)."""
    import struct
    import zlib as _zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", _zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", _zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [14000, 10000])  # past PIL's bomb error (2× its limit), and past its limit
def test_decompression_bomb_png_is_one_line_naming_the_file(tmp_path, capsys, side):
    from ganforge import cli

    save_png(tmp_path / "imgs" / "a.png", np.full((28, 28), 7, np.uint8))
    _png_header_only(tmp_path / "imgs" / "bomb.png", side, side)
    status = cli.main(["prep", "--profile", "tiny", "--source", str(tmp_path / "imgs"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert f"cannot read image {tmp_path / 'imgs' / 'bomb.png'}" in err[0] and "shrink it or remove it" in err[0]


# --- decompression bounded by data.limit and by a memory budget ---


def _crc32_after_zeros(crc: int, n: int) -> int:
    """``zlib.crc32(bytes(n), crc)`` without touching n bytes: powers of the one-zero-byte GF(2) operator,
    as zlib's crc32_combine builds them."""

    def times(matrix: list[int], vector: int) -> int:
        out = i = 0
        while vector:
            if vector & 1:
                out ^= matrix[i]
            vector, i = vector >> 1, i + 1
        return out

    def square(matrix: list[int]) -> list[int]:
        return [times(matrix, row) for row in matrix]

    operator = [0xEDB88320] + [1 << i for i in range(31)]  # one zero bit
    for _ in range(3):
        operator = square(operator)  # one zero byte
    register = crc ^ 0xFFFFFFFF
    while n:
        if n & 1:
            register = times(operator, register)
        n, operator = n >> 1, square(operator)
    return register ^ 0xFFFFFFFF


def gzip_of_header_and_zeros(header: bytes, zeros: int, block: int = 16 << 20) -> bytes:
    """A valid single-member gzip file of ``header`` + ``zeros`` zero bytes, built without compressing them all:
    after a full flush deflate starts afresh, so every full block of zeros compresses to the same bytes."""
    import struct
    import zlib

    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = deflate.compress(header) + deflate.flush(zlib.Z_FULL_FLUSH)
    full, rest = divmod(zeros, block)
    one = deflate.compress(bytes(block)) + deflate.flush(zlib.Z_FULL_FLUSH) if full else b""
    if full > 1:
        assert deflate.compress(bytes(block)) + deflate.flush(zlib.Z_FULL_FLUSH) == one  # the premise
    tail = deflate.compress(bytes(rest)) + deflate.flush()
    crc = _crc32_after_zeros(zlib.crc32(header), zeros)
    trailer = struct.pack("<II", crc, (len(header) + zeros) & 0xFFFFFFFF)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + head + one * full + tail + trailer


@pytest.fixture(scope="module")
def honest_five_million(tmp_path_factory) -> Path:
    """An IDX directory whose 3.8 MB .gz honestly holds 5,000,000 images of 28×28 (3.9 GB unpacked)."""
    check = gzip_of_header_and_zeros(b"hdr", 100_003, block=4096)
    assert gzip.decompress(check) == b"hdr" + bytes(100_003)  # a valid gzip file: CRC and size check out
    directory = tmp_path_factory.mktemp("five-million")
    n = 5_000_000
    header = (0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (n, 28, 28))
    (directory / "train-images-idx3-ubyte.gz").write_bytes(gzip_of_header_and_zeros(header, n * 28 * 28))
    labels_header = (0x801).to_bytes(4, "big") + n.to_bytes(4, "big")
    (directory / "train-labels-idx1-ubyte.gz").write_bytes(gzip_of_header_and_zeros(labels_header, n))
    assert (directory / "train-images-idx3-ubyte.gz").stat().st_size < 4 << 20
    return directory


# Run in a fresh process: its address space is capped at what it uses after imports plus 1 GiB, far below the
# 3.9 GB an unbounded read allocates, and the bytes it reads (/proc/self/io rchar) while preparing are counted.
_PREP_CHILD = """
import json, resource, sys
import numpy, PIL.Image
from ganforge import cli, data, labels
size = next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmSize')) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), resource.RLIM_INFINITY))
def rchar():
    return next(int(line.split()[1]) for line in open('/proc/self/io') if line.startswith('rchar'))
before = rchar()
status = cli.main(sys.argv[2:])
json.dump({"status": status, "read": rchar() - before}, open(sys.argv[1], "w"))
"""


def _prep_in_child(tmp_path: Path, args: list[str], **env: str) -> tuple[dict, list[str]]:
    import os
    import subprocess
    import sys

    result = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, "-c", _PREP_CHILD, str(result), "prep", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    assert result.exists(), done.stderr[-3000:]
    return json.loads(result.read_text()), done.stderr.strip().splitlines()


def test_tiny_prep_of_a_five_million_image_gzip_reads_only_its_512(honest_five_million, tmp_path):
    out = tmp_path / "out"
    result, err = _prep_in_child(
        tmp_path, ["--profile", "tiny", "--source", str(honest_five_million), "--out", str(out)]
    )
    assert result["status"] == 0, err
    assert result["read"] < 1 << 20, f"{result['read']} bytes read: the 3.8 MB file was decompressed past 512 images"
    manifest = data.load_dataset(out).manifest
    assert manifest["count"] == 512 and manifest["shape"] == [512, 1, 28, 28]


def test_prep_past_the_memory_budget_is_refused_in_one_line_naming_sizes_and_fix(honest_five_million, tmp_path):
    source = str(honest_five_million)
    args = ["--profile", "tiny", "--set", "data.limit=none", "--source", source, "--out", str(tmp_path / "o")]
    result, err = _prep_in_child(tmp_path, args, GANFORGE_DATA_MEMORY_MIB="64")
    assert result["status"] == 2 and len(err) == 1, err
    assert (
        f"reading 5000000 of the 5000000 images of {honest_five_million / 'train-images-idx3-ubyte.gz'} needs "
        "7,519.7 MiB of memory, more than the 64.0 MiB budget (GANFORGE_DATA_MEMORY_MIB=64). "
        "Fix: keep fewer examples, e.g. --set data.limit=42554, or raise GANFORGE_DATA_MEMORY_MIB" in err[0]
    )
    assert not (tmp_path / "o").exists()
    args[3] = "data.limit=42554"  # the suggested limit fits the budget
    result, err = _prep_in_child(tmp_path, args, GANFORGE_DATA_MEMORY_MIB="64")
    assert result["status"] == 0 and data.load_dataset(tmp_path / "o").manifest["count"] == 42554, err


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("follow, words", [(550, "is truncated: header promises 600×28×28"), (650, "more bytes after")])
def test_a_header_that_disagrees_with_the_file_is_caught_even_past_data_limit(tmp_path, compress, follow, words):
    """data.limit=512 keeps fewer than the 600 images the header promises; the rest still has to agree."""
    write_idx_dir(tmp_path / "idx", n=600, compress=compress)
    name = "train-images-idx3-ubyte" + (".gz" if compress else "")
    body = idx_bytes(np.zeros((600, 28, 28), np.uint8), 0x803)[: 16 + follow * 784] + bytes(max(0, follow - 600) * 784)
    (tmp_path / "idx" / name).write_bytes(gzip.compress(body) if compress else body)
    with pytest.raises(DataError, match=words) as err:
        data.prepare(DataConfig(source=str(tmp_path / "idx"), limit=512), tmp_path / "out")
    assert name in str(err.value) and not (tmp_path / "out").exists()


def test_disk_full_during_prep_is_one_line_and_keeps_the_previous_dataset(tmp_path, small_tmpfs, capsys):
    from conftest import fill
    from ganforge import cli

    write_idx_dir(tmp_path / "few", n=20)
    write_idx_dir(tmp_path / "big", n=6000, compress=False)  # 4.7 MB of images: more than the 4 MiB file system
    out = small_tmpfs / "ds"
    assert _prep_cli(capsys, tmp_path / "few", out)[0] == 0
    before = _tree(out)
    for target in (out, small_tmpfs / "fresh"):
        big = ["prep", "--profile", "tiny", "--set", "data.limit=none", "--source", str(tmp_path / "big")]
        status, err = cli.main([*big, "--out", str(target)]), capsys.readouterr().err
        assert status == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert f"cannot write {target}: No space left on device (ENOSPC)" in err and "Fix: free space" in err, err
    assert _tree(out) == before and not (small_tmpfs / "fresh").exists()
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["ds"]  # no half-written temporary directory
    fill(small_tmpfs)  # full before prep starts: the temporary directory cannot even be made
    status, err = _prep_cli(capsys, tmp_path / "few", small_tmpfs / "later")
    assert status == 2 and err.count("\n") == 1 and "No space left on device (ENOSPC)" in err, err
    assert _tree(out) == before


def test_image_folder_past_the_memory_budget_is_refused_before_decoding(tmp_path, monkeypatch):
    for i in range(50):  # 50 images at 64×64 RGB: 2 × 12 KiB each (as fitted, then stacked) = 1.2 MiB
        save_png(tmp_path / "imgs" / f"{i:02d}.png", np.full((8, 8), i, np.uint8))
    cfg = DataConfig(source=str(tmp_path / "imgs"), resolution=64, channels=3)
    monkeypatch.setenv("GANFORGE_DATA_MEMORY_MIB", "1")
    with pytest.raises(
        DataError,
        match=r"reading 50 images of .*imgs needs 1.2 MiB .* than the 1.0 MiB budget .*"
        r"data\.limit=42, or raise GANFORGE_DATA_MEMORY_MIB",
    ):
        data.prepare(cfg, tmp_path / "out")
    assert data.prepare(DataConfig(**{**cfg.__dict__, "limit": 42}), tmp_path / "out")["count"] == 42
    monkeypatch.setenv("GANFORGE_DATA_MEMORY_MIB", "lots")
    with pytest.raises(DataError, match=r"GANFORGE_DATA_MEMORY_MIB='lots' must be a positive whole number of MiB"):
        data.prepare(cfg, tmp_path / "out2")
