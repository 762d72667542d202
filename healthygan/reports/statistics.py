"""Image and pixel metrics (anomalib's vocabulary: pred_score, gt_label, anomaly_map).

Image level: AUROC with a bootstrap confidence interval, AUPRC (average precision), and
sensitivity, specificity, accuracy and F1 at a threshold whose source is always stated. Pixel
level, where ground-truth lesion masks exist: AUROC and Dice at the best threshold.
"""
import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import (average_precision_score, precision_recall_curve, roc_auc_score,
                             roc_curve)

from healthygan.detection.selection import aucp  # noqa: F401 (re-exported: metrics.py)


THRESHOLD_SOURCE_TEST = 'test-optimal (as the original; optimistic)'
PIXEL_THRESHOLD_SOURCE = 'test-optimal (the best Dice over all thresholds; optimistic)'


def original_threshold(gt_label, pred_score):
    """The original's operating point: the ROC threshold minimising |TPR - (1 - FPR)|.

    Returns (threshold, sensitivity, specificity). It is chosen on the data it is evaluated on,
    hence optimistic when that is the test set. Among tied points the original took the first
    of pandas' Series.argsort, i.e. numpy's default (unstable) quicksort, not the first
    minimum; so does this, and so the choice among ties is numpy's, as it was the original's.
    """
    fpr, tpr, thresholds = roc_curve(gt_label, pred_score)
    k = int(np.argsort(np.abs(tpr - (1 - fpr)), kind='quicksort')[0])
    return float(thresholds[k]), float(tpr[k]), float(1 - fpr[k])


def _check_labels_and_scores(gt_label, pred_score):
    gt_label = np.asarray(gt_label, dtype=int)
    pred_score = np.asarray(pred_score, dtype=float)
    if len(np.unique(gt_label)) < 2:
        raise ValueError('AUROC needs both normal (0) and anomalous (1) test images')
    if not np.all(np.isfinite(pred_score)):
        raise ValueError('anomaly scores contain NaN or inf: the generator output is not finite')
    return gt_label, pred_score


def threshold_metrics(gt_label, pred_score, threshold):
    """Sensitivity, specificity, accuracy and F1 when score >= threshold means anomalous."""
    gt = np.asarray(gt_label, dtype=int) == 1
    pred = np.asarray(pred_score, dtype=float) >= threshold
    tp, fn = int((pred & gt).sum()), int((~pred & gt).sum())
    tn, fp = int((~pred & ~gt).sum()), int((pred & ~gt).sum())
    return {
        'sensitivity': tp / (tp + fn) if tp + fn else float('nan'),
        'specificity': tn / (tn + fp) if tn + fp else float('nan'),
        'accuracy': (tp + tn) / len(gt),
        'F1': 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        'confusion': {'tp': tp, 'fp': fp, 'tn': tn, 'fn': fn},
    }


def auroc_rows(pos_scores, neg_scores):
    """ROC AUC of each row (Mann-Whitney U with ties counted half, as scikit-learn): [B]."""
    n1, n0 = pos_scores.shape[1], neg_scores.shape[1]
    ranks = rankdata(np.concatenate([pos_scores, neg_scores], axis=1), axis=1)
    return (ranks[:, :n1].sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def bootstrap_auroc(gt_label, pred_score, n_bootstrap=1000, seed=0, level=0.95, chunk=200):
    """Percentile bootstrap interval of the AUROC: (low, high, the B resampled AUROCs).

    Stratified: each resample draws the anomalous and the normal images with replacement
    separately, so every resample keeps the class counts (and has an AUROC).
    """
    gt_label, pred_score = _check_labels_and_scores(gt_label, pred_score)
    pos, neg = pred_score[gt_label == 1], pred_score[gt_label == 0]
    values = []
    for start in range(0, n_bootstrap, chunk):  # bounded memory for large test sets
        # Resample b draws from its own generator (seed, b): the same for any chunk size.
        rngs = [np.random.default_rng([seed, b])
                for b in range(start, min(start + chunk, n_bootstrap))]
        draws = [(r.integers(0, len(pos), len(pos)), r.integers(0, len(neg), len(neg)))
                 for r in rngs]
        values.append(auroc_rows(pos[np.stack([p for p, _ in draws])],
                                 neg[np.stack([n for _, n in draws])]))
    values = np.concatenate(values)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high), values


def paired_auroc_difference(gt_label, score_a, score_b, n_bootstrap=1000, seed=0, level=0.95):
    """AUROC(score_a) - AUROC(score_b) on the same images, with a paired percentile bootstrap
    interval: (difference, low, high). Both scores are resampled with the same draws
    (bootstrap_auroc's draws depend only on the class counts and the seed), so the interval
    reflects how the two methods differ on the same images, not each one's own spread."""
    a = roc_auc_score(*_check_labels_and_scores(gt_label, score_a))
    b = roc_auc_score(*_check_labels_and_scores(gt_label, score_b))
    _, _, values_a = bootstrap_auroc(gt_label, score_a, n_bootstrap, seed, level)
    _, _, values_b = bootstrap_auroc(gt_label, score_b, n_bootstrap, seed, level)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values_a - values_b, [tail, 100 - tail])
    return float(a - b), float(low), float(high)


def image_metrics(gt_label, pred_score, threshold=None, threshold_source=None, n_bootstrap=0,
                  seed=0):
    """image_AUROC (with a 95% bootstrap interval when n_bootstrap > 0), image_AUPRC, and
    sensitivity, specificity, accuracy and F1 at a threshold.

    threshold None applies the original's rule to these very scores (THRESHOLD_SOURCE_TEST);
    a threshold chosen elsewhere (a validation set) comes with its threshold_source.
    """
    gt_label, pred_score = _check_labels_and_scores(gt_label, pred_score)
    original = None
    if threshold is None:
        threshold, *original = original_threshold(gt_label, pred_score)
        threshold_source = THRESHOLD_SOURCE_TEST
    elif not threshold_source:
        raise ValueError('a threshold given from elsewhere needs its threshold_source')
    at = threshold_metrics(gt_label, pred_score, threshold)
    if original:  # the same rates; keep the original's floats (1 - FPR) to the last bit
        at['sensitivity'], at['specificity'] = original
    result = {
        'image_AUROC': float(roc_auc_score(gt_label, pred_score)),
        'threshold': float(threshold),
        'threshold_source': threshold_source,
        'sensitivity': at['sensitivity'],
        'specificity': at['specificity'],
        'accuracy': at['accuracy'],
        'F1': at['F1'],
        'confusion': at['confusion'],
        # average precision, the step-wise area under the precision-recall curve
        'image_AUPRC': float(average_precision_score(gt_label, pred_score)),
        'n_normal': int((gt_label == 0).sum()),
        'n_anomalous': int((gt_label == 1).sum()),
    }
    if n_bootstrap > 0:
        low, high, _ = bootstrap_auroc(gt_label, pred_score, n_bootstrap, seed)
        result['image_AUROC_ci95'] = [low, high]
    return result


def pixel_metrics(gt_masks, maps):
    """pixel_AUROC and the best pixel Dice over thresholds, over all pixels of all images.

    gt_masks: boolean arrays (lesion pixels True; all False for a normal image); maps: anomaly
    maps of the same shapes. The Dice threshold is chosen on these maps (optimistic, stated).
    """
    gt = np.concatenate([np.asarray(m, dtype=bool).ravel() for m in gt_masks])
    score = np.concatenate([np.asarray(a, dtype=np.float32).ravel() for a in maps])
    if gt.size != score.size:
        raise ValueError('ground-truth masks and anomaly maps differ in size')
    if gt.all() or not gt.any():
        raise ValueError('pixel AUROC needs both lesion and background pixels')
    precision, recall, thresholds = precision_recall_curve(gt, score)
    # Dice of the mask {score >= t} equals the F1 of its pixels; the last PR point has no t.
    with np.errstate(invalid='ignore', divide='ignore'):
        dice = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
    k = int(np.argmax(dice))
    return {
        'pixel_AUROC': float(roc_auc_score(gt, score)),
        'pixel_Dice': float(dice[k]),
        'pixel_threshold': float(thresholds[k]),
        'pixel_threshold_source': PIXEL_THRESHOLD_SOURCE,
        'pixel_n_images': len(gt_masks),
        'pixel_n_lesion_images': int(sum(np.asarray(m).any() for m in gt_masks)),
    }


def dice(gt_mask, pred_mask):
    """Dice coefficient 2|A & B| / (|A| + |B|) of two boolean masks (1 when both are empty)."""
    a, b = np.asarray(gt_mask, bool), np.asarray(pred_mask, bool)
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else 1.0
