"""Class-conditional generation, data and training: labels prepared and validated with
the images, the class-conditional DCGAN (conditional BatchNorm G, projection D) and its training loop.

Real parts only: Debian's Fashion-MNIST IDX files (labels included), real tiny trainings. Evaluation
and generation: tests/test_conditional_outputs.py; the DAG, registry and serving of ``cdcgan``:
tests/test_pipeline_local.py.
"""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import FASHION_DIR
from ganforge import data
from ganforge.config import ADDED_FIELDS, ConfigError, DataConfig, build_config
from ganforge.labels import FASHION_MNIST_CLASSES, LabelError, class_id
from ganforge.models import build_models
from ganforge.train import CLASSES_FILE, DistInfo, TrainingError, _Batches, global_labels, read_checkpoint, train


def _idx_copy(tmp_path, name="fashion-copy"):
    """The t10k split of Debian's Fashion-MNIST in a folder of our own (10,000 images + labels)."""
    d = tmp_path / name
    d.mkdir()
    for stem in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(FASHION_DIR / stem, d / stem)
    return d


def test_idx_labels_and_fashion_class_names_go_into_the_dataset(tmp_path):
    src = _idx_copy(tmp_path)
    manifest = data.prepare(DataConfig(source=str(src), limit=2000), tmp_path / "out", split="test")
    with gzip.open(src / "t10k-labels-idx1-ubyte.gz") as f:
        idx_labels = np.frombuffer(f.read()[8:], np.uint8)[:2000]
    ds = data.load_dataset(tmp_path / "out")
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == idx_labels.tolist()
    assert manifest["class_names"] == list(FASHION_MNIST_CLASSES) and manifest["num_classes"] == 10
    assert manifest["class_counts"] == {
        name: int((idx_labels == i).sum()) for i, name in enumerate(FASHION_MNIST_CLASSES)
    }
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["class_counts"]["Sneaker"] > 0
    assert manifest["labels_sha256"] == data.sha256_of_array(ds.labels)


def test_idx_label_count_mismatch_names_both_files_and_the_fix(tmp_path):
    src = _idx_copy(tmp_path)
    labels = src / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(labels) as f:
        raw = f.read()
    with gzip.open(labels, "wb") as f:  # a well-formed labels file of 9,999 labels: one short
        f.write(raw[:4] + (9999).to_bytes(4, "big") + raw[8 : 8 + 9999])
    with pytest.raises(data.DataError) as err:
        data.prepare(DataConfig(source=str(src)), tmp_path / "out", split="test")
    message = str(err.value)
    assert "10000 images" in message and "9999 labels" in message and str(labels) in message
    assert "Fix: replace t10k-labels-idx1-ubyte.gz" in message
    assert not (tmp_path / "out").exists()


def test_labels_beyond_the_named_classes_are_refused(tmp_path):
    src = _idx_copy(tmp_path, "mydata")
    (src / "classes.txt").write_text("a\nb\nc\n")  # 3 names for Fashion-MNIST's 10 labels
    with pytest.raises(LabelError, match=r"holds label 9 but only 3 classes are named"):
        data.prepare(DataConfig(source=str(src)), tmp_path / "out", split="test")


def test_image_folder_classes_keep_their_names_and_counts(tmp_path):
    from PIL import Image

    for cls, count in (("boots", 3), ("hats", 2)):
        (tmp_path / "src" / cls).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.full((28, 28), 40 * i, np.uint8)).save(tmp_path / "src" / cls / f"{i}.png")
    manifest = data.prepare(DataConfig(source=str(tmp_path / "src")), tmp_path / "out")
    assert manifest["class_names"] == ["boots", "hats"] and manifest["num_classes"] == 2
    assert manifest["class_counts"] == {"boots": 3, "hats": 2}


def test_class_names_and_ids_resolve_and_unknown_lists_the_choices():
    names = list(FASHION_MNIST_CLASSES)
    assert class_id("sneaker", names, 10) == 7 and class_id("Ankle boot", names, 10) == 9
    assert class_id("ankle-boot", names, 10) == 9 and class_id("t-shirt/top", names, 10) == 0
    assert class_id("7", names, 10) == 7
    with pytest.raises(LabelError) as err:
        class_id("boots", names, 10)
    assert (
        "unknown class 'boots'" in str(err.value) and "7 Sneaker" in str(err.value) and "9 Ankle boot" in str(err.value)
    )
    with pytest.raises(LabelError):
        class_id("10", names, 10)


def test_conditional_models_use_the_label():
    cfg = build_config("cdcgan", "tiny")
    torch.manual_seed(0)
    G, D = build_models(cfg.model, cfg.data)
    z = torch.randn(4, cfg.model.nz)
    a, b = torch.zeros(4, dtype=torch.long), torch.full((4,), 7)
    G.eval(), D.eval()
    with torch.no_grad():
        x = G(z, a)
        assert x.shape == (4, 1, 28, 28) and x.abs().max() <= 1
        assert not torch.equal(x, G(z, b)), "G ignores its label"
        assert D(x, a).shape == (4,)
        # projection: D(x, y) - D(x, y') = <embed(y) - embed(y'), sum-pooled features>
        h = D.body(x).sum(dim=(2, 3))
        expected = ((D.embed(a) - D.embed(b)) * h).sum(1)
        assert torch.allclose(D(x, a) - D(x, b), expected, atol=1e-6)


def test_conditional_config_checks():
    with pytest.raises(ConfigError, match="wgan-gp"):
        build_config("cdcgan", "tiny", {"train": {"loss": "wgan-gp"}, "model": {"d_norm": "layer"}})
    with pytest.raises(ConfigError, match="num_classes"):
        build_config("gan", "tiny", {"model": {"num_classes": 10}})
    # the new field (like every later one, ADDED_FIELDS) leaves the unconditional presets' config_hash as it
    # was (registered versions keep matching)
    assert "model.num_classes" in ADDED_FIELDS
    cfg = build_config("dcgan", "tiny")
    d = cfg.to_dict()
    for key in ADDED_FIELDS:
        group, name = key.split(".")
        del d[group][name]
    import hashlib

    assert cfg.legacy_config_hash() == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]
    assert build_config("cdcgan", "tiny").config_hash() != cfg.config_hash()


def test_real_labels_travel_with_their_images_and_fake_labels_depend_on_seed_and_step(fashion_train):
    cfg = build_config("cdcgan", "tiny")
    ds = data.load_dataset(fashion_train)
    images, labels = torch.from_numpy(np.array(ds.images)), torch.from_numpy(np.array(ds.labels))
    batches = _Batches(images, cfg, DistInfo(), labels)
    x, y = batches.get(1, 3), batches.get_labels(1, 3)
    rows = [
        int(np.flatnonzero((ds.images.reshape(len(ds.images), -1) == xi.reshape(1, -1).numpy()).all(1))[0])
        for xi in x[:5]
    ]
    assert y[:5].tolist() == ds.labels[rows].tolist()
    one = global_labels(cfg, 5, 0, DistInfo())
    two = torch.cat([global_labels(cfg, 5, 0, DistInfo(rank=r, world_size=2)) for r in range(2)])
    assert torch.equal(one, two), "ranks must slice the same global labels"
    assert torch.equal(one, global_labels(cfg, 5, 0, DistInfo())) and not torch.equal(
        one, global_labels(cfg, 6, 0, DistInfo())
    )
    assert set(torch.cat([global_labels(cfg, s, 0, DistInfo()) for s in range(20)]).tolist()) == set(range(10))


def test_conditional_training_resumes_bit_identically(fashion_train, cdcgan_run, tmp_path):
    cfg = build_config("cdcgan", "tiny")
    train(build_config("cdcgan", "tiny", {"train": {"max_steps": 4}}), fashion_train, tmp_path / "b")
    train(cfg, fashion_train, tmp_path / "b", resume=True)
    a, b = read_checkpoint(cdcgan_run / "checkpoint.pt"), read_checkpoint(tmp_path / "b" / "checkpoint.pt")
    for key in ("G", "G_ema", "D"):
        assert a[key].keys() == b[key].keys() and all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert json.loads((cdcgan_run / CLASSES_FILE).read_text())["class_names"] == list(FASHION_MNIST_CLASSES)


def test_class_count_mismatch_names_the_setting(fashion_train, tmp_path):
    with pytest.raises(TrainingError, match=r"has 10 classes but model.num_classes=3; set model.num_classes=10"):
        train(build_config("cdcgan", "tiny", {"model": {"num_classes": 3}}), fashion_train, tmp_path)


def test_two_gloo_ranks_train_the_conditional_models_identically(fashion_train, tmp_path):
    """cdcgan trains on 2 torchrun ranks (gloo) and both end with identical G, D and EMA weights (the
    class embeddings' gradients are averaged like the rest; the per-rank label slices are checked in
    test_real_labels_travel_with_their_images_and_fake_labels_depend_on_seed_and_step)."""
    import subprocess
    import sys

    from conftest import ROOT, cli_env

    cfg = build_config("cdcgan", "tiny", {"train": {"nproc": 2, "max_steps": 4}})
    (tmp_path / "cfg.json").write_text(cfg.to_json())
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path / "cfg.json"), str(fashion_train), str(tmp_path / "out"),
         str(tmp_path / "report.json")],
        env=cli_env(), check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["world_size"] == 2 and report["max_rank_param_diff"] == 0.0
    assert [s for s, *_ in report["curve"]] == [2, 4]
    assert read_checkpoint(tmp_path / "out" / "checkpoint.pt")["G"]["norms.0.gamma.weight"].shape == (10, 16)
