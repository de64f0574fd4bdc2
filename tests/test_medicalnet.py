"""MedicalNet: architecture faithful to the released weights, loader, hash checks, normalisation.

No official weights are available offline, so checkpoints are written here in the official format
(``{"state_dict": {"module.<key>": tensor}}`` plus a segmentation head) from seeded random models.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from metrics.features.base import sha256_file
from metrics.features.medicalnet_weights import official_filename
from metrics.features.medicalnet import (
    KNOWN_SHA256, MedicalNet18, MedicalNetExtractor, MedicalNetResNet, WeightsMismatchError, load_medicalnet_weights,
    medicalnet_normalize, sha256_matches,
)

SHAPE = (24, 32, 28)  # small 3 mm-like volume: keeps the ResNet-50 forward cheap


@pytest.fixture(scope="module", autouse=True)
def _two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("BRAINGENBENCH_WEIGHTS", raising=False)


def _volumes(n=2, shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, *shape), dtype=np.float32)
    x[:, :, :3] = 0.0  # some exact-zero background, as after skull stripping
    return x


def save_official(model: MedicalNetResNet, path, with_head=True):
    """Write ``model`` the way Tencent's files are laid out (DataParallel prefix, optional conv_seg head)."""
    sd = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    if with_head:
        sd["module.conv_seg.0.weight"] = torch.zeros(model.out_channels, 32, 2, 2, 2)
        sd["module.conv_seg.6.weight"] = torch.zeros(2, 32, 1, 1, 1)
    torch.save({"epoch": 1, "state_dict": sd}, path)
    return path


def _monai_resnet(depth):
    from monai.networks.nets import resnet10, resnet18, resnet34, resnet50

    fn = {10: resnet10, 18: resnet18, 34: resnet34, 50: resnet50}[depth]
    a_type = depth in (18, 34)  # MONAI's get_medicalnet_pretrained_resnet_args
    return fn(spatial_dims=3, n_input_channels=1, feed_forward=False, shortcut_type="A" if a_type else "B",
              bias_downsample=a_type)


@pytest.mark.parametrize("depth", [10, 18, 34, 50])
def test_official_roundtrip_monai_layout_and_output_stride(depth, tmp_path):
    ref = MedicalNetExtractor.random(depth, seed=depth)
    assert ref.model.shortcut_type == ("A" if depth in (18, 34) else "B")
    assert ref.dim == (2048 if depth == 50 else 512)
    path = save_official(ref.model, tmp_path / f"resnet_{depth}_23dataset.pth")
    try:
        digest = sha256_file(path)
        ext = MedicalNetExtractor(depth=depth, weights=str(path), expected_sha256=digest, batch_size=1)
        x = _volumes()
        np.testing.assert_allclose(ext(x, 3.0), ref(x, 3.0), rtol=1e-5, atol=1e-6)
        fp = ext.fingerprint()
        assert fp["weights_sha256"] == digest and fp["weights_status"] == "verified"
        assert fp["name"] == f"medicalnet-r{depth}" and fp["normalization"] == "medicalnet"
        json.dumps(fp)
    finally:
        path.unlink()

    # MONAI's MedicalNet-compatible ResNet takes exactly the same tensors (strict), proving the layout
    # matches the released weights; its strides/dilations differ, so its activations do not.
    state = ext.model.state_dict()
    monai_net = _monai_resnet(depth)
    monai_shapes = {k: tuple(v.shape) for k, v in monai_net.state_dict().items()}
    assert monai_shapes == {k: tuple(v.shape) for k, v in state.items()}
    monai_net.load_state_dict(state, strict=True)

    # output stride 8: conv1 /2, maxpool /2, layer2 /2, layer3/4 dilated
    with torch.no_grad():
        fmap = ref.model(torch.zeros(1, 1, 16, 24, 32))
    assert tuple(fmap.shape) == (1, ref.dim, 2, 3, 4)


def test_monai_activations_differ_and_shortcut_matters():
    ours = MedicalNetExtractor.random(10, seed=0).model
    monai_net = _monai_resnet(10).eval()
    monai_net.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert tuple(ours(x).shape[2:]) == (4, 4, 4)
        assert not torch.allclose(ours.features(x), monai_net(x), atol=1e-3)
    # shortcut type is visible in the layout: an A-type resnet_18 does not fit MONAI's B-type resnet18
    from monai.networks.nets import resnet18

    with pytest.raises(RuntimeError):
        resnet18(spatial_dims=3, n_input_channels=1, feed_forward=False, shortcut_type="B").load_state_dict(
            MedicalNetResNet(18).state_dict(), strict=True)


def test_wrong_depth_file_is_named(tmp_path):
    path = save_official(MedicalNetResNet(18), tmp_path / "resnet_18.pth")
    with pytest.raises(WeightsMismatchError, match=r"looks like resnet_18 .*not resnet_10") as err:
        load_medicalnet_weights(MedicalNetResNet(10), path)
    msg = str(err.value)
    assert "missing" in msg and "downsample" in msg and "unexpected" in msg and "medicalnet-r" in msg
    path10 = save_official(MedicalNetResNet(10), tmp_path / "r10_weights.pth", with_head=False)  # no pin
    with pytest.raises(WeightsMismatchError, match=r"looks like resnet_10 \(basic blocks, shortcut B\), not resnet_18"):
        MedicalNet18(weights=str(path10))


def test_hash_checks(tmp_path, caplog):
    # a file named like the official one but with other content fails the (prefix...suffix) pin
    path = save_official(MedicalNetResNet(10), tmp_path / "resnet_10_23dataset.pth", with_head=False)
    with pytest.raises(WeightsMismatchError, match=r"expected afa8055f3e47f4a1\w+b72605.*verify=False"):
        MedicalNetExtractor(depth=10, weights=str(tmp_path))  # a directory holding the official name
    with pytest.raises(WeightsMismatchError, match="sha256"):
        load_medicalnet_weights(MedicalNetResNet(10), path, expected_sha256="0" * 64)
    with caplog.at_level(logging.WARNING, logger="braingenbench.metrics.features"):
        ext = MedicalNetExtractor(depth=10, weights=str(path), verify=False)
    assert ext.fingerprint()["weights_status"] == "unverified"
    assert ext.fingerprint()["weights_sha256"] == sha256_file(path)
    assert "verify=False" in caplog.text
    # partial pins: prefix + suffix
    digest = sha256_file(path)
    assert sha256_matches(digest, f"{digest[:8]}...{digest[-6:]}")
    assert sha256_matches(digest, f"{digest[:8]}\u2026{digest[-5:]}")
    assert not sha256_matches(digest, f"{digest[:8]}...ffffff" if not digest.endswith("ffffff") else "0...0")
    # every official file has its full pin (medmetric 0.1.1's manifest)
    assert set(KNOWN_SHA256) == {official_filename(d, v) for d in (10, 18, 34, 50) for v in ("23dataset", "original")} | {
        f"resnet_{d}.pth" for d in (101, 152, 200)}
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in KNOWN_SHA256.values())


def test_env_dir_and_unpinned_file(tmp_path, monkeypatch, caplog):
    save_official(MedicalNetResNet(18), tmp_path / "resnet_18_finetuned.pth")  # a name with no pin
    with caplog.at_level(logging.WARNING, logger="braingenbench.metrics.features"):
        ext = MedicalNet18(weights=str(tmp_path / "resnet_18_finetuned.pth"))
    assert ext.fingerprint()["weights_status"] == "unpinned" and "no known sha256" in caplog.text
    assert ext.fingerprint()["weights"] == "resnet_18_finetuned.pth"
    # the official name under $BRAINGENBENCH_WEIGHTS is found, and its pin refuses other bytes
    save_official(MedicalNetResNet(18), tmp_path / "resnet_18_23dataset.pth")
    monkeypatch.setenv("BRAINGENBENCH_WEIGHTS", str(tmp_path))
    with pytest.raises(WeightsMismatchError, match="expected 61224f93"):
        MedicalNet18()


def test_missing_weights_message(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        MedicalNetExtractor(depth=50)
    msg = str(err.value)
    assert "resnet_50_23dataset.pth" in msg and "TencentMedicalNet/MedicalNet-Resnet50" in msg
    assert "BRAINGENBENCH_WEIGHTS" in msg
    monkeypatch.setenv("BRAINGENBENCH_WEIGHTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "resnet_10.pth")):
        MedicalNetExtractor(depth=10, variant="original")


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "resnet_10.pth"
    torch.save({"state_dict": [1, 2, 3]}, bad)
    with pytest.raises(WeightsMismatchError, match="no state dict"):
        load_medicalnet_weights(MedicalNetResNet(10), bad)


def test_normalization_deterministic_and_order_independent():
    x = _volumes(3)
    v = x[0, 0]
    a = medicalnet_normalize(v, seed=1)
    fg = v > 0
    assert abs(a[fg].mean()) < 1e-5 and abs(a[fg].std() - 1) < 1e-4
    np.testing.assert_array_equal(a, medicalnet_normalize(v, seed=1))
    assert not np.array_equal(a[~fg], medicalnet_normalize(v, seed=2)[~fg])
    z = medicalnet_normalize(v, "zscore")
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-4
    torch.manual_seed(5)
    expected_draw = torch.rand(1)
    torch.manual_seed(5)
    ext = MedicalNetExtractor.random(10, seed=0, batch_size=2)
    assert torch.equal(torch.rand(1), expected_draw)  # building an extractor leaves the global RNG alone
    f = ext(x, 3.0)
    np.testing.assert_allclose(ext(x[[2, 0, 1]], 3.0), f[[2, 0, 1]], rtol=1e-5, atol=1e-6)  # noise seeded per volume
    np.testing.assert_allclose(ext(x[1:2], 3.0), f[1:2], rtol=1e-5, atol=1e-6)  # batch-size invariant
    zs = MedicalNetExtractor.random(10, seed=0, normalization="zscore", spacing_mm=2.0)
    assert zs.fingerprint()["normalization"] == "zscore" and zs.fingerprint()["spacing_mm"] == 2.0
    assert not np.allclose(zs(x[:1], 3.0), f[:1])
    with pytest.raises(ValueError, match="normalization"):
        MedicalNetExtractor.random(10, normalization="minmax")
