"""Published evaluation protocols: cards, exact weights layouts and pinned-hash loaders, the VLM3D scorer's
weight-free parts against scikit-image, the slice rules, and a protocol run without its weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import registry
from bench.protocols import load_card
from bench.suite import load_suite, suite_path
from metrics.features.medicalnet_resnet import MedicalNetResNet
from metrics.features.nets2d import RadImageNetResNet50, SqueezeNet11
from metrics.features.pinned import WeightsMismatchError
from metrics.functional.protocols import (centre_slices, every_kth_slices, mean_rank, percentile_scale, slice_layout,
                                          vlm3d_paired)
from tests._helpers import registered_cohort

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "protocol_state_dicts.json").read_text())
PROTOCOLS = ("hagan-fid", "medmetric", "maisi-2.5d", "vlm3d-mri")
LAYOUT_FILE = {"hagan-fid": "resnet_50.pth", "medmetric": "resnet_50.pth",  # same architecture, other weights
               "maisi-2.5d": "RadImageNet-ResNet50_notop.pth", "vlm3d-mri": "squeezenet1_1-b8a52dc0.pth"}


def _layout(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


# ----------------------------------------------------------------------------------------------- cards
def test_ls_protocols_lists_the_four_with_extractor_file_hash_preprocessing_and_source(capsys):
    from bench.cli import main

    assert main(["ls", "protocols"]) == 0
    out = capsys.readouterr().out
    for name in PROTOCOLS:
        card = load_card(name)
        assert name in out and card.extractor in out and card.weights_file in out and card.source in out
        assert card.preprocessing and all(p in out for p in card.preprocessing)
        assert (card.weights_sha256 or "sha256 null") in out
        cls = registry.extractors.get(card.extractor)  # the card and the extractor pin the same file
        assert (cls.pin.filename, cls.pin.sha256) == (card.weights_file, card.weights_sha256)
        assert card.suite == f"protocol-{name}" and load_suite(card.suite).metrics


# ---------------------------------------------------------------------------- layouts and hash checks
def test_networks_have_the_published_state_dict_layouts():
    assert _layout(SqueezeNet11()) == FIXTURE["squeezenet1_1-b8a52dc0.pth"]
    assert _layout(RadImageNetResNet50()) == FIXTURE["RadImageNet-ResNet50_notop.pth"]
    assert _layout(MedicalNetResNet(50)) == FIXTURE["resnet_50.pth"]
    # independent totals: torchvision documents 1,235,496 parameters for squeezenet1_1; Keras reports
    # 23,587,712 (BatchNorm statistics included) for ResNet50(include_top=False)
    assert sum(v.numel() for v in SqueezeNet11().parameters()) == 1_235_496
    assert sum(int(np.prod(s)) for s in FIXTURE["RadImageNet-ResNet50_notop.pth"].values()) == 23_587_712


def _random_file(protocol: str, folder: Path) -> Path:
    """Random weights saved under the published file name, in the published container format."""
    fname = load_card(protocol).weights_file
    torch.manual_seed(0)
    if protocol in ("hagan-fid", "medmetric"):  # Tencent's files: {"state_dict": {"module.<key>": ...}}
        state = {"state_dict": {f"module.{k}": v for k, v in MedicalNetResNet(50).state_dict().items()}}
    else:
        state = (RadImageNetResNet50() if protocol == "maisi-2.5d" else SqueezeNet11()).state_dict()
    assert {k.removeprefix("module."): list(v.shape) for k, v in state.get("state_dict", state).items()
            if not k.endswith("num_batches_tracked")} == FIXTURE[LAYOUT_FILE[protocol]]
    path = folder / fname
    torch.save(state, path)
    return path


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_loader_accepts_the_layout_only_with_the_hash_check_off(protocol, tmp_path):
    card = load_card(protocol)
    cls = registry.extractors.get(card.extractor)
    path = _random_file(protocol, tmp_path)
    with pytest.raises(WeightsMismatchError) as err:  # check on: refused, naming the file and the hash
        cls(weights=str(tmp_path))
    msg = str(err.value)
    assert card.weights_file in msg
    if card.weights_sha256 is None:
        assert "no published sha256" in msg and "--extractor-args sha256=" in msg
    else:
        assert card.weights_sha256 in msg
    ext = cls(weights=str(path), verify=False)  # check off: the exact layout loads strictly
    assert ext.weights_status == "unverified" and ext.fingerprint()["weights"] == card.weights_file
    with pytest.raises(WeightsMismatchError, match="expects"):
        cls(weights=str(path), sha256="0" * 64)
    if card.weights_sha256 is None:  # the user's own hash of the file is accepted
        from core.io import sha256_file

        assert cls(weights=str(path), sha256=sha256_file(path)).weights_status == "verified-user-sha256"


def test_a_file_of_another_layout_is_refused_naming_the_keys(tmp_path):
    cls = registry.extractors.get("vlm3d-squeezenet-2.5d")
    state = SqueezeNet11().state_dict()
    state.pop("classifier.1.bias")
    state["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(state, tmp_path / "squeezenet1_1-b8a52dc0.pth")
    with pytest.raises(WeightsMismatchError, match=r"missing classifier\.1\.bias.*features\.0\.weight"):
        cls(weights=str(tmp_path), verify=False)


def test_missing_weights_names_the_file_its_source_and_where_to_put_it(monkeypatch, tmp_path):
    monkeypatch.setenv("BRAINGENBENCH_WEIGHTS", str(tmp_path))
    for name in PROTOCOLS:
        card = load_card(name)
        cls = registry.extractors.get(card.extractor)
        msg = cls.missing_weights()
        assert card.weights_file in msg and "BRAINGENBENCH_WEIGHTS" in msg and "download" in msg
        with pytest.raises(FileNotFoundError, match=card.weights_file.replace(".", r"\.")):
            cls()


# ------------------------------------------------------------------------- VLM3D weight-free parts
def _fixed_volumes():
    rng = np.random.default_rng(7)
    real = (rng.gamma(2.0, 100.0, (24, 28, 20)) + np.linspace(0, 300, 20)).astype(np.float32)
    fake = (real * 0.8 + rng.normal(0, 40, real.shape)).astype(np.float32)
    return real, fake


def test_percentile_scaling_and_paired_metrics_equal_scikit_image():
    from skimage.exposure import rescale_intensity
    from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

    real, fake = _fixed_volumes()
    for v in (real, fake):
        lo, hi = np.percentile(v.astype(np.float64), [0.5, 99.5])
        ref = rescale_intensity(v.astype(np.float64), in_range=(lo, hi), out_range=(0.0, 1.0))
        assert np.abs(percentile_scale(v) - ref).max() < 1e-6
    rn, fn = percentile_scale(real), percentile_scale(fake)
    got = vlm3d_paired(real, fake)
    assert abs(got["MSE"] - mean_squared_error(rn, fn)) < 1e-6
    assert abs(got["PSNR"] - peak_signal_noise_ratio(rn, fn, data_range=1.0)) < 1e-6
    assert abs(got["SSIM"] - structural_similarity(rn, fn, data_range=1.0)) < 1e-6
    assert 0 < got["SSIM"] < 1
    assert np.all(percentile_scale(np.full((8, 8, 8), 3.0)) == 0)  # no spread: zeros, as the scorer


def test_mean_rank_averages_ranks_with_ties():
    scores = {"a": {"SSIM": 0.4, "MSE": 0.05}, "b": {"SSIM": 0.5, "MSE": 0.05}, "c": {"SSIM": 0.3, "MSE": 0.01}}
    assert mean_rank(scores, {"SSIM": True, "MSE": False}) == {"a": 2.25, "b": 1.75, "c": 2.0}


def test_fid_slice_selection_follows_the_published_rules(tmp_path):
    assert every_kth_slices(13) == [0, 4, 8, 12] and every_kth_slices(12) == [0, 4, 8]
    assert centre_slices(144) == list(range(43, 100))  # int(0.3 * 144) .. int(0.7 * 144)
    assert slice_layout("vlm3d", (13, 10, 9), 3.0) == {"XY": [0, 4, 8], "XZ": [0, 4, 8], "YZ": [0, 4, 8, 12]}
    assert slice_layout("maisi", (10, 20, 30), 2.0) == {"XY": [18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30,
                                                               31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41],
                                                        "YZ": list(range(6, 14)), "ZX": list(range(12, 28))}
    # the extractor takes exactly those slices: a volume whose voxels hold their own index along each axis
    cls = registry.extractors.get("vlm3d-squeezenet-2.5d")
    ext = cls(weights=str(_random_file("vlm3d-mri", tmp_path)), verify=False)
    seen = {}
    vol = np.zeros((1, 1, 13, 10, 9), np.float32)
    idx = np.indices((13, 10, 9))

    def spy(volume, axis, slices):
        for j in slices:  # each slice taken is the one whose index along `axis` is j
            assert np.all(np.take(idx[axis], j, axis=axis) == j)
        seen[axis] = list(slices)
        return torch.zeros((len(slices), 3, 17, 17))

    ext.plane_images = spy
    feats = ext(vol, 3.0)
    assert seen == {2: [0, 4, 8], 1: [0, 4, 8], 0: [0, 4, 8, 12]} and feats.shape == (1, 10 * 512)


# ------------------------------------------------------------------- a protocol run without weights
@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    yield from registered_cohort(tmp_path_factory, "phantom", n_subjects=80, seed=0, workers=2)


def test_protocol_run_without_weights_records_the_weight_free_parts(cohort, tmp_path, monkeypatch, capfd):
    from bench.cli import main

    monkeypatch.setenv("BRAINGENBENCH_WEIGHTS", str(tmp_path / "no-weights"))
    base = suite_path("protocol-vlm3d-mri").resolve()
    suite = tmp_path / "vlm3d-tiny.yaml"
    suite.write_text(f"include: {base}\nname: vlm3d-tiny\nreference: {{name: phantom, args: {{n_subjects: 80, seed: 0}}}}\n"
                     "n_prompts: 4\n")
    rc = main(["run", "--generator", "template", "--suite", str(suite), "--out", str(tmp_path / "runs"),
               "--device", "cpu"])
    assert rc == 0
    captured = capfd.readouterr()
    said = [ln for ln in (captured.out + captured.err).splitlines() if "squeezenet1_1-b8a52dc0.pth" in ln]
    assert len(said) == 1 and "download" in said[0] and "BRAINGENBENCH_WEIGHTS" in said[0]  # one line, actionable
    record = json.loads(next((tmp_path / "runs").glob("*/record.json")).read_text())
    assert record["status"] == "complete" and not record["failed_metrics"]
    for k in ("mse", "psnr", "ssim"):
        assert np.isfinite(record["metrics"][f"vlm3d_paired/{k}"]["value"])
    assert list(record["skipped_metrics"]) == ["fid_2p5d-vlm3d-squeezenet-2.5d"]


def test_maisi_slices_are_scaled_together_and_the_imagenet_mean_subtracted(tmp_path):
    cls = registry.extractors.get("maisi-radimagenet-2.5d")
    ext = cls(weights=str(_random_file("maisi-2.5d", tmp_path)), verify=False)
    vol = np.random.default_rng(0).random((12, 14, 10)).astype(np.float32) * 5 + 2
    img = ext.plane_images(vol, 2, [3, 4, 5]).numpy()
    slab = vol[:, :, 3:6].transpose(2, 0, 1)
    scaled = (slab - slab.min()) / (slab.max() - slab.min() + 1e-10)
    for c, m in enumerate((0.406, 0.456, 0.485)):
        assert np.abs(img[:, c] - (scaled - m)).max() < 1e-6
    feats = ext(vol[None, None], 3.0)  # 36 x 42 x 30 at 1 mm: 12 + 14 + 16 centre slices of 2048 features
    assert feats.shape == (1, sum(len(v) for v in slice_layout("maisi", vol.shape, 3.0).values()) * 2048)


def test_fid_2p5d_cuts_the_features_back_into_per_plane_slice_sets():
    from metrics.protocols import split_slice_features

    layout = slice_layout("vlm3d", (13, 10, 9), 3.0)
    feats = np.arange(2 * 10 * 512, dtype=float).reshape(2, -1)
    planes = split_slice_features(feats, "vlm3d", (13, 10, 9), 3.0)
    assert {p: v.shape for p, v in planes.items()} == {p: (2 * len(ix), 512) for p, ix in layout.items()}
    assert planes["XY"][0, 0] == 0 and planes["XZ"][0, 0] == 3 * 512 and planes["XY"][3, 0] == 10 * 512
    with pytest.raises(ValueError, match="use the protocol's extractor"):
        split_slice_features(feats[:, :-1], "vlm3d", (13, 10, 9), 3.0)


def test_protocol_run_with_unverified_random_weights_computes_the_2p5d_fid(cohort, tmp_path):
    from bench.cli import main

    weights = _random_file("vlm3d-mri", tmp_path)
    base = suite_path("protocol-vlm3d-mri").resolve()
    suite = tmp_path / "vlm3d-tiny.yaml"
    suite.write_text(f"include: {base}\nname: vlm3d-tiny\nreference: {{name: phantom, args: {{n_subjects: 80, seed: 0}}}}\n"
                     "n_prompts: 4\n")
    rc = main(["--quiet", "run", "--generator", "template", "--suite", str(suite), "--out", str(tmp_path / "runs"),
               "--device", "cpu", "--extractor-args", f"weights={weights},verify=false"])
    assert rc == 0
    record = json.loads(next((tmp_path / "runs").glob("*/record.json")).read_text())
    assert not record["skipped_metrics"] and record["status"] == "complete"
    fp = record["extractors"]["vlm3d-squeezenet-2.5d"]
    assert fp["weights"] == "squeezenet1_1-b8a52dc0.pth" and fp["weights_status"] == "unverified"
    planes = [record["metrics"][f"fid_2p5d-vlm3d-squeezenet-2.5d/{p}"] for p in ("XY", "XZ", "YZ")]
    avg = record["metrics"]["fid_2p5d-vlm3d-squeezenet-2.5d/avg"]["value"]
    assert all(np.isfinite(p["value"]) for p in planes) and abs(avg - np.mean([p["value"] for p in planes])) < 1e-9
    # 3 mm grid (48, 64, 56): every 4th slice -> 14 (XY) + 16 (XZ) + 12 (YZ) slices per volume, 4 volumes
    assert [p["n"] for p in planes] == [4 * 14, 4 * 16, 4 * 12]


def test_hagan_extractor_maps_volumes_to_minus_one_one_without_normalisation(tmp_path):
    cls = registry.extractors.get("hagan-medicalnet-r50")
    ext = cls(weights=str(_random_file("hagan-fid", tmp_path)), verify=False)
    x = torch.tensor([0.0, 0.25, 1.0])
    assert torch.equal(ext.preprocess(x), torch.tensor([-1.0, -0.5, 1.0]))
    assert ext(np.full((1, 1, 16, 16, 16), 0.5, np.float32), 3.0).shape == (1, 2048)


def test_missing_weights_skips_only_the_metrics_of_extractors_without_their_file(monkeypatch, tmp_path):
    from bench.protocols import missing_weights_skips

    class _Metric:
        def __init__(self, extractor):
            self.extractor = extractor

        def extractors(self):
            return [self.extractor]

    class _Spec:
        def __init__(self, key):
            self.key = key

    monkeypatch.setenv("BRAINGENBENCH_WEIGHTS", str(tmp_path))
    real_get = registry.extractors.get

    def get(name):  # an extractor that cannot be imported is left to fail in its metric, as before
        if registry.extractors.canonical(name) == "hdbet":
            raise ImportError("hd-bet is not installed")
        return real_get(name)

    monkeypatch.setattr(registry.extractors, "get", get)
    metrics = [(_Spec(k), _Metric(e)) for k, e in (("fid-a", "hagan-medicalnet-r50"), ("mmd-a", "hagan-medicalnet-r50"),
                                                   ("fid-b", "random3d"), ("fid-c", "hdbet"))]
    assert sorted(missing_weights_skips(metrics, {})) == ["fid-a", "mmd-a"]


def test_medmetric_mmd_equals_its_definition_in_torch():
    from metrics.functional.protocols import medmetric_mmd

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 5)), rng.normal(1.0, 1.0, size=(6, 5))  # 13 items: an even count of 78 distances
    xt, yt = torch.tensor(x), torch.tensor(y)
    z = torch.cat([xt, yt])
    iu = torch.triu_indices(13, 13, 1)
    sigma0 = torch.cdist(z, z)[iu[0], iu[1]].median()  # torch: the lower of the two middle values
    sig = sigma0 * torch.tensor([1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8], dtype=torch.float64)

    def k(a, b):
        return torch.exp(-(torch.cdist(a, b) ** 2)[None] / (2 * sig ** 2)[:, None, None]).mean(0)

    kxx, kyy, kxy = k(xt, xt), k(yt, yt), k(xt, yt)
    mmd2 = (kxx.sum() - kxx.diag().sum()) / 42 + (kyy.sum() - kyy.diag().sum()) / 30 - 2 * kxy.mean()
    assert abs(medmetric_mmd(x, y) - float(torch.sqrt(mmd2.clamp(min=0)))) < 1e-12
    assert medmetric_mmd(x, x) == 0.0  # clamped at 0
