"""Anomaly maps and image scores (anomalib's vocabulary: anomaly_map, pred_score): the original's
mean |x - x_hat| / 2 and the added score variants computed from the same translation."""
import torch


TOPK_FRACTION = 0.01  # 'top1pct': the mean of the highest 1% of a map's pixels



# Image scores computed from one translation. 'mean' is the original's and the default.
SCORE_VARIANTS = {
    'mean': 'mean |x - x_hat| / 2 (original)',
    'p99': '99th percentile of the anomaly map',
    'top1pct': 'mean of the top 1% of the anomaly map',
    'masked': "mean of m * |x - x_hat| / 2 (the map weighted by G's mask m)",
    'lung': 'mean of the map over the lung-field prior: the darker half of the pixels of the '
            'mean healthy training image (lungs are dark on a radiograph)',
    'ref_z': "mean over pixels of the map's excess over the healthy images held out of "
             "training at the same pixel, in their spread: max(0, (a - mu) / (sd + median sd))",
}



# 'lung' and 'ref_z' need a reference of the run (lung.py, pixel_reference.py); without one they
# are left out of the scores.
NEEDS_REFERENCE = ('lung', 'ref_z')
LUNG_PRIOR_QUANTILE = 0.5  # 'lung': the darkest half of the mean healthy image's pixels



def lung_prior(mean_image, quantile=LUNG_PRIOR_QUANTILE):
    """The region prior behind the 'lung' score: a [1, 1, H, W] float mask of the pixels of the
    mean healthy image (any channels, [-1, 1]) at or below its quantile. Added: the original
    scores the whole image, borders, labels and shoulders included."""
    m = mean_image.float().mean(dim=-3, keepdim=True).reshape(1, 1, *mean_image.shape[-2:])
    return (m <= torch.quantile(m.flatten(), quantile)).float()
REF_Z_MIN_SPREAD = 1 / 255  # one 8-bit grey level of the map: the least spread 'ref_z' divides by



def healthy_pixel_reference(maps):
    """The 'ref_z' score's reference from the anomaly maps [N, H, W] of healthy images: each
    pixel's mean mu and scale sd + median(sd) (sd over the images, per pixel). The median keeps
    the pixels where every healthy image agrees (sd near 0) from dominating the score; it is
    at least one grey level, so that a background identical on every image divides by no 0."""
    maps = maps.double()
    sd = maps.std(dim=0, unbiased=False)
    return maps.mean(dim=0), sd + max(float(torch.quantile(sd.flatten(), 0.5)), REF_Z_MIN_SPREAD)



def ref_z_map(amap, mu, scale):
    """max(0, (a - mu) / scale) of anomaly maps [N, 1, H, W]: [N, H, W], float64, how far each
    pixel's residual exceeds what healthy images show at the same place."""
    z = (amap[:, 0].double() - mu.to(amap.device)) / scale.to(amap.device)
    return z.clamp(min=0)



def ref_z_score(amap, mu, scale):
    """'ref_z' of anomaly maps [N, 1, H, W]: the mean over pixels of ref_z_map. Added: ribs,
    edges and borders that G misses on every image stop counting."""
    return ref_z_map(amap, mu, scale).mean(dim=(1, 2)).to(amap.dtype)



def anomaly_map(x, x_hat):
    """Per-pixel anomaly map |x - x_hat| / 2, averaged over channels: [N,1,H,W] in [0, 1]."""
    return (x - x_hat).abs().mean(dim=1, keepdim=True) / 2



def anomaly_score(x, x_hat):
    """The original's image score: mean over channels and pixels of |x - x_hat| / 2, shape [N]."""
    return (x - x_hat).abs().flatten(1).mean(dim=1) / 2



def score_variants(x, x_hat, mask, region=None):
    """Every image score of SCORE_VARIANTS from one translation: {name: tensor [N]}.

    'lung' needs region (lung_prior's mask); without one it is left out."""
    amap = anomaly_map(x, x_hat).flatten(1)
    n = amap.size(1)
    k = max(1, int(round(TOPK_FRACTION * n)))
    # 99th percentile with linear interpolation (numpy's default), from the sorted top values;
    # torch.quantile refuses inputs of more than 16M elements (large batches of large images).
    pos = 0.99 * (n - 1)
    lo = int(pos)
    top = amap.topk(n - lo, dim=1).values.flip(1)  # ascending: ranks lo .. n-1
    p99 = top[:, 0] + (pos - lo) * (top[:, min(1, n - lo - 1)] - top[:, 0])
    return {
        'mean': anomaly_score(x, x_hat),  # exactly the original's computation
        'p99': p99,
        'top1pct': amap.topk(k, dim=1).values.mean(dim=1),
        'masked': (mask.flatten(1) * amap).mean(dim=1),
        **({'lung': (amap * region.to(amap).flatten(1)).sum(dim=1) / region.sum().to(amap)}
           if region is not None else {}),
    }



def to_numpy(t):
    """Detach a tensor to a float64 numpy array on the CPU."""
    return t.detach().to('cpu', torch.float64).numpy()
