"""metrics.py: the anomaly score and map, the original's threshold rule, and the metrics against
scikit-learn and hand computations on known inputs; mask geometry."""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import (accuracy_score, average_precision_score, f1_score, recall_score,
                             roc_auc_score)

import data_loader
import metrics
from metrics import anomaly_map, anomaly_score, image_metrics, original_threshold

# 12 images, with tied scores across and within the classes
LABELS = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
SCORES = np.array([0.10, 0.20, 0.20, 0.35, 0.50, 0.05, 0.30, 0.20, 0.60, 0.90, 0.35, 0.70])


def test_hand_computed_auroc():
    # (anomalous, normal) pairs: 0.8 beats 0.1 and 0.4, 0.35 beats 0.1 but not 0.4
    r = metrics.image_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert r['image_AUROC'] == 0.75  # 3 of the 4 (anomalous, normal) pairs ranked right


def test_image_metrics_match_scikit_learn_at_the_original_threshold():
    r = metrics.image_metrics(LABELS, SCORES)
    assert r['image_AUROC'] == pytest.approx(roc_auc_score(LABELS, SCORES))
    assert r['image_AUPRC'] == pytest.approx(average_precision_score(LABELS, SCORES))
    thr, sens, spec = metrics.original_threshold(LABELS, SCORES)
    assert r['threshold'] == thr and r['threshold_source'] == metrics.THRESHOLD_SOURCE_TEST
    assert r['sensitivity'] == sens and r['specificity'] == spec
    pred = (SCORES >= thr).astype(int)
    assert r['sensitivity'] == pytest.approx(recall_score(LABELS, pred))
    assert r['specificity'] == pytest.approx(recall_score(LABELS, pred, pos_label=0))
    assert r['accuracy'] == pytest.approx(accuracy_score(LABELS, pred))
    assert r['F1'] == pytest.approx(f1_score(LABELS, pred))
    assert (r['n_normal'], r['n_anomalous']) == (6, 6)


@pytest.mark.parametrize('thr', [0.2, 0.35, 0.65, 5.0])
def test_threshold_from_elsewhere_matches_scikit_learn(thr):
    r = metrics.image_metrics(LABELS, SCORES, threshold=thr, threshold_source='validation set X')
    pred = (SCORES >= thr).astype(int)
    assert r['threshold'] == thr and r['threshold_source'] == 'validation set X'
    assert r['sensitivity'] == pytest.approx(recall_score(LABELS, pred, zero_division=0))
    assert r['specificity'] == pytest.approx(recall_score(LABELS, pred, pos_label=0))
    assert r['accuracy'] == pytest.approx(accuracy_score(LABELS, pred))
    assert r['F1'] == pytest.approx(f1_score(LABELS, pred, zero_division=0))


def test_a_threshold_without_its_source_is_refused():
    with pytest.raises(ValueError, match='threshold_source'):
        metrics.image_metrics(LABELS, SCORES, threshold=0.3)


def test_rowwise_auroc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    pos = rng.integers(0, 5, (20, 7)).astype(float)  # few distinct values: many ties
    neg = rng.integers(0, 5, (20, 9)).astype(float)
    got = metrics.auroc_rows(pos, neg)
    want = [roc_auc_score([1] * 7 + [0] * 9, np.concatenate([p, n])) for p, n in zip(pos, neg)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_bootstrap_interval_is_seeded_sized_and_sensible():
    low, high, values = metrics.bootstrap_auroc(LABELS, SCORES, n_bootstrap=300, seed=3)
    assert len(values) == 300
    again = metrics.bootstrap_auroc(LABELS, SCORES, n_bootstrap=300, seed=3)
    assert (low, high) == again[:2] and np.array_equal(values, again[2])
    other = metrics.bootstrap_auroc(LABELS, SCORES, n_bootstrap=300, seed=4)
    assert not np.array_equal(values, other[2])
    auc = roc_auc_score(LABELS, SCORES)
    assert low < auc < high and 0 <= low and high <= 1
    assert (low, high) == pytest.approx(np.percentile(values, [2.5, 97.5]))
    # Chunked resampling gives the same draws as one chunk.
    assert np.array_equal(values, metrics.bootstrap_auroc(LABELS, SCORES, 300, 3, chunk=7)[2])
    # A perfectly separated set has no uncertainty left in a stratified bootstrap.
    sep = metrics.bootstrap_auroc([0, 0, 0, 1, 1, 1], [1, 2, 3, 4, 5, 6], n_bootstrap=50)
    assert sep[:2] == (1.0, 1.0)
    r = metrics.image_metrics(LABELS, SCORES, n_bootstrap=300, seed=3)
    assert r['image_AUROC_ci95'] == [low, high]
    assert 'image_AUROC_ci95' not in metrics.image_metrics(LABELS, SCORES)


@pytest.mark.parametrize('h, w', [(5, 7), (1, 1)])
def test_percentile_variant_matches_numpy_on_any_size(h, w):
    torch.manual_seed(1)
    x, x_hat = torch.rand(3, 3, h, w) * 2 - 1, torch.rand(3, 3, h, w) * 2 - 1
    v = metrics.score_variants(x, x_hat, torch.rand(3, 1, h, w))
    amap = ((x - x_hat).abs().mean(dim=1) / 2).numpy().reshape(3, -1).astype(np.float64)
    np.testing.assert_allclose(v['p99'].numpy(), np.percentile(amap, 99, axis=1), rtol=1e-5)


def test_score_variants_on_known_maps():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 20, 20) * 2 - 1
    x_hat = torch.rand(2, 3, 20, 20) * 2 - 1
    mask = torch.rand(2, 1, 20, 20)
    assert set(metrics.score_variants(x, x_hat, mask)) == \
        set(metrics.SCORE_VARIANTS) - {'lung', 'ref_z'}
    mean_healthy = torch.linspace(-1, 1, 400).view(1, 20, 20).expand(3, -1, -1)
    region = metrics.lung_prior(mean_healthy)  # the darker half: the first 200 pixels
    assert region.shape == (1, 1, 20, 20) and region.flatten()[:200].all()
    assert not region.flatten()[200:].any()
    v = metrics.score_variants(x, x_hat, mask, region)
    assert set(v) == set(metrics.SCORE_VARIANTS) - {'ref_z'}  # ref_z: from an ensemble's map
    assert torch.equal(v['mean'], metrics.anomaly_score(x, x_hat))
    amap = ((x - x_hat).abs().mean(dim=1) / 2).numpy().reshape(2, -1).astype(np.float64)
    np.testing.assert_allclose(v['mean'].numpy(), amap.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(v['p99'].numpy(), np.percentile(amap, 99, axis=1), rtol=1e-5)
    top4 = np.sort(amap, axis=1)[:, -4:].mean(axis=1)  # 1% of 400 pixels
    np.testing.assert_allclose(v['top1pct'].numpy(), top4, rtol=1e-5)
    masked = (mask.numpy().reshape(2, -1) * amap).mean(axis=1)
    np.testing.assert_allclose(v['masked'].numpy(), masked, rtol=1e-5)
    np.testing.assert_allclose(v['lung'].numpy(), amap[:, :200].mean(axis=1), rtol=1e-5)


def test_pixel_metrics_match_scikit_learn_and_a_brute_force_dice():
    rng = np.random.default_rng(1)
    gt = [np.zeros((8, 8), bool) for _ in range(3)]
    gt[0][2:5, 2:6] = True
    gt[2][0:3, 5:8] = True
    maps = [rng.random((8, 8)) * 0.5 + 0.4 * g for g in gt]
    maps[1][0, 0] = 0.95  # a hot pixel on the normal image
    maps = [np.round(m, 2) for m in maps]  # ties
    r = metrics.pixel_metrics(gt, maps)
    flat_gt = np.concatenate([g.ravel() for g in gt])
    flat = np.concatenate([m.ravel() for m in maps])
    assert r['pixel_AUROC'] == pytest.approx(roc_auc_score(flat_gt, flat))
    brute = max(metrics.dice(flat_gt, flat >= t) for t in np.unique(flat))
    assert r['pixel_Dice'] == pytest.approx(brute)
    assert metrics.dice(flat_gt, flat >= r['pixel_threshold']) == pytest.approx(r['pixel_Dice'])
    assert (r['pixel_n_images'], r['pixel_n_lesion_images']) == (3, 2)
    with pytest.raises(ValueError, match='lesion and background'):
        metrics.pixel_metrics([np.zeros((4, 4), bool)], [np.zeros((4, 4))])


def test_dice_by_hand():
    a = np.array([1, 1, 0, 0], bool)
    assert metrics.dice(a, np.array([1, 0, 1, 0], bool)) == 0.5
    assert metrics.dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def test_masks_are_found_by_synthetics_layout_and_follow_the_images_crop(tmp_path):
    root = tmp_path / 'syn'
    img_path = root / 'test' / 'anomalous' / 'a.png'
    mask_path = root / 'masks' / 'test' / 'anomalous' / 'a.png'
    for p in (img_path, mask_path):
        p.parent.mkdir(parents=True)
    Image.fromarray(np.full((50, 40), 120, np.uint8)).save(img_path)
    m = np.zeros((50, 40), np.uint8)
    m[20:35, 5:20] = 255
    m[0:3, :] = 255  # inside the top 8% the crop removes
    Image.fromarray(m).save(mask_path)
    assert data_loader.find_mask(str(img_path), str(root)) == str(mask_path)
    assert data_loader.find_mask(str(root / 'test' / 'normal' / 'b.png'), str(root)) is None
    assert data_loader.find_mask(str(tmp_path / 'elsewhere.png'), str(root)) is None

    got = data_loader.load_mask(str(mask_path), str(img_path), 16)
    # The same geometry as the image: the test transform applied to the mask itself.
    through_transform = data_loader.build_transform(16)(Image.fromarray(m).convert('RGB'))[0]
    assert got.shape == (16, 16) and got.dtype == bool
    assert np.array_equal(got, through_transform.numpy() >= (128 / 255 - 0.5) / 0.5 - 1e-6)
    assert got.any() and not got[0].any()  # the top rows were cropped away

    Image.fromarray(np.zeros((10, 10), np.uint8)).save(mask_path)
    with pytest.raises(data_loader.DataError, match='must match their images'):
        data_loader.load_mask(str(mask_path), str(img_path), 16)


def test_paired_auroc_difference_is_paired():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(30, int), np.ones(30, int)]
    a = labels * 0.8 + rng.normal(size=60)
    b = a + rng.normal(scale=0.1, size=60)  # nearly the same detector
    d, low, high = metrics.paired_auroc_difference(labels, a, b, 500, seed=3)
    assert d == pytest.approx(roc_auc_score(labels, a) - roc_auc_score(labels, b))
    assert low <= d <= high
    # resampled together, two close detectors differ by far less than either one's own spread
    a_low, a_high, _ = metrics.bootstrap_auroc(labels, a, 500, seed=3)
    assert high - low < (a_high - a_low) / 3
    assert metrics.paired_auroc_difference(labels, a, a, 200) == (0.0, 0.0, 0.0)


def test_anomaly_score_and_map():
    x = torch.ones(2, 3, 2, 2)
    x_hat = x.clone()
    x_hat[0] = -1  # the largest possible difference: score 1
    x_hat[1, :, 0, 0] = 0  # |1 - 0| / 2 on one pixel of four: score 0.125
    assert torch.allclose(anomaly_score(x, x_hat), torch.tensor([1.0, 0.125]))
    amap = anomaly_map(x, x_hat)
    assert amap.shape == (2, 1, 2, 2)
    assert torch.allclose(amap.flatten(1).mean(1), anomaly_score(x, x_hat))


def test_original_threshold_rule_by_hand():
    labels = [0, 0, 0, 1, 1, 1]
    scores = [0.1, 0.2, 0.6, 0.4, 0.7, 0.8]
    # threshold 0.4: TPR 3/3, FPR 1/3 -> |1 - 2/3| = 1/3; threshold 0.7: TPR 2/3, FPR 0 -> 1/3;
    # threshold 0.6: TPR 2/3, FPR 1/3 -> 0 (the minimum)
    thr, sens, spec = original_threshold(labels, scores)
    assert thr == 0.6 and sens == pytest.approx(2 / 3) and spec == pytest.approx(2 / 3)
    m = image_metrics(labels, scores)
    assert m['image_AUROC'] == pytest.approx(8 / 9)  # 8 of 9 (anomalous, normal) pairs ordered
    assert m['threshold_source'].startswith('test-optimal')
    with pytest.raises(ValueError):
        image_metrics([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError):
        image_metrics([0, 1], [0.1, math.nan])


def test_ref_z_counts_only_what_healthy_images_do_not_show_at_the_same_place():
    torch.manual_seed(0)
    healthy = torch.rand(6, 8, 8) * 0.02
    healthy[:, 2, :] += 0.5  # a rib G misses on every healthy image
    mu, scale = metrics.healthy_pixel_reference(healthy)
    sd = healthy.double().std(dim=0, unbiased=False)
    np.testing.assert_allclose(mu.numpy(), healthy.double().mean(dim=0).numpy())
    np.testing.assert_allclose(scale.numpy(), (sd + np.median(sd.numpy())).numpy())
    rib = healthy[:1].clone()
    lesion = healthy[:1].clone()
    lesion[0, 5, 3:6] += 0.3  # a residual no healthy image has there
    z = metrics.ref_z_score(torch.cat([rib, lesion])[:, None], mu, scale)
    # the rib weighs nothing more than it does on healthy images; the lesion does
    plain = torch.cat([rib, lesion]).mean(dim=(1, 2))
    assert z[1] > z[0] and (z[1] - z[0]) / z[0] > (plain[1] - plain[0]) / plain[0]
    expected = np.maximum((lesion[0].double() - mu) / scale, 0).mean()
    assert float(z[1]) == pytest.approx(float(expected), rel=1e-6)
    # a background identical on every image divides by one grey level, not by 0
    _, flat = metrics.healthy_pixel_reference(torch.zeros(4, 8, 8))
    assert float(flat.min()) == pytest.approx(metrics.REF_Z_MIN_SPREAD)


def test_ref_z_healthy_scores_leave_each_image_out():
    from healthygan.detection.pixel_reference import leave_one_out_scores
    torch.manual_seed(1)
    maps = torch.rand(5, 6, 6).double() * 0.1
    scores = leave_one_out_scores(maps)
    mu, scale = metrics.healthy_pixel_reference(maps[1:])
    assert scores[0] == pytest.approx(float(metrics.ref_z_score(maps[:1, None], mu, scale)[0]))
    # against the others, each scores higher than against a reference holding itself
    mu_all, scale_all = metrics.healthy_pixel_reference(maps)
    inside = metrics.ref_z_score(maps[:, None], mu_all, scale_all)
    assert all(s >= float(i) for s, i in zip(scores, inside))
