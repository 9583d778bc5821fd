"""The shards read back through DALI's webdataset reader (CPU) and the `webdataset` library identically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_prep.manifest import Manifest, load_manifest
from data_prep.synth import synth_cifar, synth_imagenet
from tests.support.prep import prep


def _dali_read(m: Manifest, split: str) -> list[tuple[str, int, np.ndarray]]:
    from nvidia.dali import fn, pipeline_def, types

    shards = m.split(split).shards

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        image, label = fn.readers.webdataset(
            paths=[str(s.tar) for s in shards], index_paths=[str(s.index) for s in shards],
            ext=[m.image_ext, m.label_ext], missing_component_behavior="error", random_shuffle=False, name="r")
        key = fn.get_property(image, key="source_info")
        return fn.decoders.image(image, device="cpu", output_type=types.RGB), label, key

    p = pipe()
    p.build()
    out = []
    for _ in range(p.epoch_size("r")):
        img, label, key = p.run()
        source = bytes(np.array(key[0])).decode()
        out.append((source, int(bytes(np.array(label[0])).decode()), np.array(img[0])))
    return out


def _wds_read(m: Manifest, split: str) -> list[tuple[str, int, np.ndarray]]:
    import webdataset as wds

    urls = [str(s.tar) for s in m.split(split).shards]
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8").to_tuple(
        "__key__", "cls", m.image_ext)
    return [(key, int(label), img) for key, label, img in ds]


def _compare(m: Manifest, split: str, lossless: bool) -> None:
    dali, web = _dali_read(m, split), _wds_read(m, split)
    assert len(dali) == len(web) == m.split(split).num_samples
    for (source, dlabel, dimg), (key, wlabel, wimg) in zip(dali, web):
        assert key in source  # DALI's source_info names the sample's member
        assert dlabel == wlabel and 0 <= wlabel < m.num_classes
        assert dimg.shape == wimg.shape and dimg.dtype == wimg.dtype == np.uint8
        diff = np.abs(dimg.astype(np.int16) - wimg.astype(np.int16))
        if lossless:
            assert diff.max() == 0
        else:  # two JPEG decoders (DALI's and PIL's libjpeg) may differ in rounding
            assert diff.mean() < 1.0, diff.mean()
    assert len({k for k, *_ in web}) == len(web)


def test_imagenet_shards_read_identically_by_dali_and_webdataset(tmp_path: Path) -> None:
    synth_imagenet(tmp_path / "src", classes=3, per_class=4, val_per_class=2)
    out = tmp_path / "out"
    assert prep("imagenet", "--src", tmp_path / "src", "--out", out, "--workers", "1",
                "--samples-per-shard", "5") == 0
    m = load_manifest(out)
    for split in ("train", "val"):
        _compare(m, split, lossless=False)


@pytest.mark.parametrize("labels, classes", [("fine", 100), ("coarse", 20)])
def test_cifar100_shards_read_identically_by_dali_and_webdataset(tmp_path: Path, labels: str, classes: int) -> None:
    raw = synth_cifar(tmp_path / "raw", "cifar100", per_class=3)
    out = tmp_path / "out"
    flags = [] if labels == "fine" else ["--labels", labels]  # fine is the default
    assert prep("cifar100", "--src", raw, "--out", out, "--workers", "1", "--num-shards", "2", *flags) == 0
    m = load_manifest(out)
    assert len(m.classes) == classes
    _compare(m, "train", lossless=True)
    # and the pixels are the batch's pixels, with the chosen label set's labels
    from data_prep.safe_pickle import load_pickle

    batch = load_pickle(raw / "train")
    pixels = {bytes(r.reshape(3, 32, 32).transpose(1, 2, 0).tobytes()): label
              for r, label in zip(batch[b"data"], batch[f"{labels}_labels".encode()])}
    for key, label, img in _wds_read(m, "train"):
        assert pixels[img.tobytes()] == label
