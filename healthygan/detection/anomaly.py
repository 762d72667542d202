"""Anomaly maps and image scores (anomalib's vocabulary: anomaly_map, pred_score): the original's
mean |x - x_hat| / 2 and the added score variants, each one entry of VARIANTS (registered with
@score_variant, as stylegan2-ada's metric_main registers its metrics): what it needs fitted, how
it scores, how its own map is drawn. The command line's choices, the reports, the Detector and
the API read the registry, so a new variant is one entry and its test."""
import dataclasses

import torch


TOPK_FRACTION = 0.01  # 'top1pct': the mean of the highest 1% of a map's pixels


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


@dataclasses.dataclass(frozen=True)
class Variant:
    """One image score: its name and description, the reference it needs fitted ('region': the
    lung prior, lung.py; 'pixels': the healthy pixel reference, pixel_reference.py; None), how
    it scores, and, where it has one, how its own map is drawn (the report's panels)."""
    name: str
    description: str
    score: object        # of_map False: score(t, fitted) per translation; True: score(amap, fitted)
    needs: str = None
    of_map: bool = False  # scored from the (snapshot ensemble's mean) map, not per translation
    draw: object = None   # draw(amap, fitted) -> [N, H, W], or None: the anomaly map only


VARIANTS = {}  # name -> Variant, in the order the reports list them; 'mean' first (the default)
SCORE_VARIANTS = {}  # name -> description: the command line's choices, the reports' descriptions


def score_variant(name, description, needs=None, of_map=False, draw=None):
    """Register the decorated function as the score `name` of VARIANTS."""
    def register(fn):
        VARIANTS[name] = Variant(name, description, fn, needs, of_map, draw)
        SCORE_VARIANTS[name] = description
        return fn
    return register


def is_fitted(variant, fitted):
    """Whether `fitted` ({need: reference or None}) holds what the variant needs."""
    return variant.needs is None or fitted.get(variant.needs) is not None


@dataclasses.dataclass
class Translation:
    """One translation of a batch, as the scores read it: x, x_hat, G's mask, the map [N, H*W]."""
    x: torch.Tensor
    x_hat: torch.Tensor
    mask: torch.Tensor
    flat: torch.Tensor


@score_variant('mean', 'mean |x - x_hat| / 2 (original)')
def mean_score(t, fitted):
    return anomaly_score(t.x, t.x_hat)  # exactly the original's computation


@score_variant('p99', '99th percentile of the anomaly map')
def p99_score(t, fitted):
    # 99th percentile with linear interpolation (numpy's default), from the sorted top values;
    # torch.quantile refuses inputs of more than 16M elements (large batches of large images).
    n = t.flat.size(1)
    pos = 0.99 * (n - 1)
    lo = int(pos)
    top = t.flat.topk(n - lo, dim=1).values.flip(1)  # ascending: ranks lo .. n-1
    return top[:, 0] + (pos - lo) * (top[:, min(1, n - lo - 1)] - top[:, 0])


@score_variant('top1pct', 'mean of the top 1% of the anomaly map')
def top1pct_score(t, fitted):
    k = max(1, int(round(TOPK_FRACTION * t.flat.size(1))))
    return t.flat.topk(k, dim=1).values.mean(dim=1)


@score_variant('masked', "mean of m * |x - x_hat| / 2 (the map weighted by G's mask m)")
def masked_score(t, fitted):
    return (t.mask.flatten(1) * t.flat).mean(dim=1)


@score_variant('lung', 'mean of the map over the lung-field prior: the darker half of the pixels '
               'of the mean healthy training image (lungs are dark on a radiograph)',
               needs='region')
def lung_score(t, fitted):
    region = fitted['region']
    return (t.flat * region.to(t.flat).flatten(1)).sum(dim=1) / region.sum().to(t.flat)


@score_variant('ref_z', "mean over pixels of the map's excess over the healthy images held out "
               "of training at the same pixel, in their spread: max(0, (a - mu) / (sd + median "
               "sd))", needs='pixels', of_map=True,
               draw=lambda amap, fitted: ref_z_map(amap, *fitted['pixels']))
def ref_z_variant(amap, fitted):
    return ref_z_score(amap, *fitted['pixels'])


def score_variants(x, x_hat, mask, region=None, fitted=None):
    """Every per-translation score of VARIANTS whose reference is fitted: {name: tensor [N]}.

    'lung' needs region (lung_prior's mask); without one it is left out."""
    fitted = {'region': region, **(fitted or {})}
    t = Translation(x, x_hat, mask, anomaly_map(x, x_hat).flatten(1))
    return {name: v.score(t, fitted) for name, v in VARIANTS.items()
            if not v.of_map and is_fitted(v, fitted)}


def map_scores(amap, fitted):
    """The scores of VARIANTS read from a (snapshot ensemble's) anomaly map [N, 1, H, W]."""
    return {name: v.score(amap, fitted) for name, v in VARIANTS.items()
            if v.of_map and is_fitted(v, fitted)}


def to_numpy(t):
    """Detach a tensor to a float64 numpy array on the CPU."""
    return t.detach().to('cpu', torch.float64).numpy()
