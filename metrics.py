"""Anomaly scores and image-level metrics (anomalib's vocabulary: pred_score, gt_label)."""
import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

THRESHOLD_SOURCE_TEST = 'test-optimal (as the original; optimistic)'


def anomaly_map(x, x_hat):
    """Per-pixel anomaly map |x - x_hat| / 2, averaged over channels: [N,1,H,W] in [0, 1]."""
    return (x - x_hat).abs().mean(dim=1, keepdim=True) / 2


def anomaly_score(x, x_hat):
    """The original's image score: mean over channels and pixels of |x - x_hat| / 2, shape [N]."""
    return (x - x_hat).abs().flatten(1).mean(dim=1) / 2


def original_threshold(gt_label, pred_score):
    """The original's operating point: the ROC threshold minimising |TPR - (1 - FPR)|.

    Returns (threshold, sensitivity, specificity). It is chosen on the data it is evaluated on,
    hence optimistic when that is the test set.
    """
    fpr, tpr, thresholds = roc_curve(gt_label, pred_score)
    k = int(np.argmin(np.abs(tpr - (1 - fpr))))
    return float(thresholds[k]), float(tpr[k]), float(1 - fpr[k])


def image_metrics(gt_label, pred_score):
    """image_AUROC plus sensitivity / specificity at the original's threshold rule."""
    gt_label = np.asarray(gt_label, dtype=int)
    pred_score = np.asarray(pred_score, dtype=float)
    if len(np.unique(gt_label)) < 2:
        raise ValueError('AUROC needs both normal (0) and anomalous (1) test images')
    if not np.all(np.isfinite(pred_score)):
        raise ValueError('anomaly scores contain NaN or inf: the generator output is not finite')
    threshold, sensitivity, specificity = original_threshold(gt_label, pred_score)
    return {
        'image_AUROC': float(roc_auc_score(gt_label, pred_score)),
        'threshold': threshold,
        'threshold_source': THRESHOLD_SOURCE_TEST,
        'sensitivity': sensitivity,
        'specificity': specificity,
        'n_normal': int((gt_label == 0).sum()),
        'n_anomalous': int((gt_label == 1).sum()),
    }


def to_numpy(t):
    """Detach a tensor to a float64 numpy array on the CPU."""
    return t.detach().to('cpu', torch.float64).numpy()
