"""Tests for the synthetic chest-radiograph generator (small sizes, a few seconds each)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import synthetic  # tests/conftest.py puts the repository root on sys.path
from synthetic import dataset_is_complete, main, make_synthetic_dataset, render_radiograph

SMALL = dict(n_healthy=3, n_mixed=6, anomalous_fraction=0.5, n_test_normal=2, n_test_anomalous=3, size=64, seed=5)


def _rng(*key):
    return np.random.default_rng(list(key))


def _pngs(folder):
    return sorted(p.name for p in Path(folder).glob("*.png"))


def test_render_types_and_shapes():
    img, mask = render_radiograph(_rng(0), 64, True)
    assert img.shape == (64, 64) and img.dtype == np.uint8
    assert mask.shape == (64, 64) and mask.dtype == bool
    img, mask = render_radiograph(_rng(0), 48, False)
    assert img.shape == (48, 48) and not mask.any()
    # The brightest anatomy must not all sit in the top rows the loader crops away.
    assert img[int(0.1 * 48):].std() > 10


def test_same_seed_same_image_different_seed_different():
    a, ma = render_radiograph(_rng(1, 2), 64, True)
    b, mb = render_radiograph(_rng(1, 2), 64, True)
    c, _ = render_radiograph(_rng(1, 3), 64, True)
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    assert not np.array_equal(a, c)


def test_dataset_is_byte_identical_for_same_seed(tmp_path):
    make_synthetic_dataset(tmp_path / "a", **SMALL)
    make_synthetic_dataset(tmp_path / "b", **SMALL)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 3 + 6 + 2 + 3 + 3 + 3
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    make_synthetic_dataset(tmp_path / "c", **{**SMALL, "seed": 6})
    first = "healthy/healthy_00000.png"
    assert (tmp_path / "a" / first).read_bytes() != (tmp_path / "c" / first).read_bytes()


def test_subset_does_not_depend_on_other_subset_sizes(tmp_path):
    make_synthetic_dataset(tmp_path / "a", **SMALL)
    make_synthetic_dataset(tmp_path / "b", **{**SMALL, "n_mixed": 2, "n_test_normal": 4})
    for name in _pngs(tmp_path / "a/healthy"):
        assert (tmp_path / "a/healthy" / name).read_bytes() == (tmp_path / "b/healthy" / name).read_bytes()
    # Different subsets are different subjects.
    h = np.asarray(Image.open(tmp_path / "a/healthy/healthy_00000.png"))
    n = np.asarray(Image.open(tmp_path / "a/test/normal/normal_00000.png"))
    assert not np.array_equal(h, n)


def test_layout_counts_masks_and_truth(tmp_path):
    root = tmp_path / "syn"
    counts = make_synthetic_dataset(root, **SMALL)
    assert counts == dict(healthy=3, mixed=6, mixed_anomalous=3, test_normal=2, test_anomalous=3)
    assert len(_pngs(root / "healthy")) == 3
    assert len(_pngs(root / "mixed")) == 6
    assert len(_pngs(root / "test/normal")) == 2
    assert _pngs(root / "test/anomalous") == _pngs(root / "masks/test/anomalous")
    assert (root / "README.md").read_text().strip()
    with open(root / "mixed_truth.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["file"] for r in rows) == _pngs(root / "mixed")
    assert set(r["label"] for r in rows) <= {"normal", "anomalous"}
    anomalous = sorted(r["file"] for r in rows if r["label"] == "anomalous")
    assert len(anomalous) == round(6 * 0.5)
    # Masks exist exactly for the anomalous mixed images, are 0/255 and non-empty.
    assert _pngs(root / "masks/mixed") == anomalous
    for folder in ("masks/mixed", "masks/test/anomalous"):
        for name in _pngs(root / folder):
            m = np.asarray(Image.open(root / folder / name))
            assert m.shape == (64, 64) and set(np.unique(m)) <= {0, 255} and m.max() == 255
    for name in _pngs(root / "mixed"):
        im = Image.open(root / "mixed" / name)
        assert im.mode == "L" and im.size == (64, 64)
    info = json.loads((root / ".complete").read_text())
    assert info["params"]["seed"] == 5 and not (root / ".partial").exists()


def test_mixed_label_count_rounds():
    assert synthetic._counts(synthetic._normalise_params(n_mixed=7, anomalous_fraction=0.3))["mixed_anomalous"] == 2


def test_lesion_masks_non_empty_and_inside_lungs():
    for i in range(30):
        _, mask, lungs = render_radiograph(_rng(9, i), 64, True, return_lungs=True)
        assert mask.any()
        assert not (mask & ~lungs).any()
        # The lung fields themselves must be plausible: two sizeable regions.
        assert 0.12 < lungs.mean() < 0.45
        _, mask, _ = render_radiograph(_rng(9, i), 64, False, return_lungs=True)
        assert not mask.any()


def test_mean_intensity_does_not_separate_classes():
    from sklearn.metrics import roc_auc_score
    means, labels = [], []
    for i in range(100):
        for anomalous in (False, True):
            img, _ = render_radiograph(_rng(11, int(anomalous), i), 64, anomalous)
            means.append(img.mean())
            labels.append(int(anomalous))
    auc = roc_auc_score(labels, means)
    assert max(auc, 1 - auc) < 0.75, auc


def test_lesions_are_locally_visible():
    diffs = []
    for i in range(40):
        sick, mask = render_radiograph(_rng(13, i), 64, True)
        base, empty = render_radiograph(_rng(13, i), 64, True, lesions=False)
        assert not empty.any()
        d = sick.astype(int) - base.astype(int)
        # Lesions only add density, and only around their masks.
        assert d.min() >= 0
        assert d[mask].mean() > 3 * max(d[~mask].mean(), 0.1)
        diffs.append(d[mask].mean())
    diffs = np.array(diffs)
    # Every lesion stands out by a few grey levels on average; typical ones by ~10+.
    assert diffs.min() >= 3.0, diffs.min()
    assert np.median(diffs) >= 10.0, np.median(diffs)


def test_lesion_strength_scales_contrast():
    sick1, mask = render_radiograph(_rng(17), 64, True, lesion_strength=1.0)
    sick2, mask2 = render_radiograph(_rng(17), 64, True, lesion_strength=2.0)
    base, _ = render_radiograph(_rng(17), 64, True, lesions=False)
    assert np.array_equal(mask, mask2)
    d1 = (sick1.astype(int) - base)[mask].mean()
    d2 = (sick2.astype(int) - base)[mask].mean()
    assert d2 > 1.5 * d1 > 0


def test_dataset_is_complete(tmp_path):
    root = tmp_path / "syn"
    assert not dataset_is_complete(root, **SMALL)
    make_synthetic_dataset(root, **SMALL)
    assert dataset_is_complete(root, **SMALL)
    assert not dataset_is_complete(root, **{**SMALL, "seed": 6})
    assert not dataset_is_complete(root)  # defaults differ
    next((root / "healthy").glob("*.png")).unlink()
    assert not dataset_is_complete(root, **SMALL)
    make_synthetic_dataset(root, **SMALL)  # regenerates over its own output
    (root / ".complete").unlink()
    assert not dataset_is_complete(root, **SMALL)


def test_refuses_to_overwrite_foreign_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        make_synthetic_dataset(tmp_path, **SMALL)
    assert (tmp_path / "precious.txt").exists()


@pytest.mark.parametrize("kwargs", [dict(anomalous_fraction=1.5), dict(size=16), dict(n_mixed=-1)])
def test_bad_parameters_raise(tmp_path, kwargs):
    with pytest.raises(ValueError):
        make_synthetic_dataset(tmp_path / "x", **{**SMALL, **kwargs})


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--out", str(out), "--seed", "3", "--size", "64", "--n_healthy", "2", "--n_mixed", "4",
            "--anomalous_fraction", "0.25", "--n_test_normal", "1", "--n_test_anomalous", "1"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "wrote" in text and str(out.resolve()) in text and "'mixed_anomalous': 1" in text
    assert dataset_is_complete(out, seed=3, size=64, n_healthy=2, n_mixed=4, anomalous_fraction=0.25,
                               n_test_normal=1, n_test_anomalous=1)
    assert main(args) == 0
    assert "already complete" in capsys.readouterr().out
    assert main(args + ["--force"]) == 0
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("bad", [["--anomalous_fraction", "1.5"], ["--anomalous_fraction", "-0.1"],
                                 ["--size", "16"], ["--n_healthy", "-3"], ["--n_mixed", "x"]])
def test_cli_rejects_bad_values(tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "never")] + bad)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
