"""A label-free out-of-distribution check (added): an image whose simple global statistics lie
outside the range the held-out healthy radiographs span, or whose channels differ (colour), is
no radiograph like those the detector was fitted to, and its score means little. The statistics
are tools/image_statistics.py's: mean intensity, contrast and sharpness of the channel mean."""
import torch

STATISTICS = ('mean_intensity', 'contrast', 'sharpness')
# The healthy range is widened by this share of its width on each side: a few dozen held-out
# images do not reach the extremes of healthy radiographs.
MARGIN = 0.25
# Mean |channel - channel mean| in [-1, 1] units above which an image is colour (an X-ray's
# channels are equal; JPEG chroma rounding stays far below).
COLOUR_TOLERANCE = 0.02


def global_statistics(x):
    """[N, C, H, W] images in [-1, 1] -> [N, 3] float64: mean intensity, contrast (standard
    deviation of the pixel values) and sharpness (mean magnitude of the forward-difference
    gradient), of the channel mean."""
    g = x.detach().to(torch.float64).mean(dim=1)
    values = g.flatten(1)
    dx = g[:, :-1, 1:] - g[:, :-1, :-1]
    dy = g[:, 1:, :-1] - g[:, :-1, :-1]
    sharpness = (dx ** 2 + dy ** 2).sqrt().flatten(1).mean(dim=1)
    return torch.stack([values.mean(dim=1), values.std(dim=1, unbiased=False), sharpness], dim=1)


def colour(x):
    """[N] bool: the images whose channels differ (no grey radiograph)."""
    x = x.detach().to(torch.float64)
    return (x - x.mean(dim=1, keepdim=True)).abs().flatten(1).mean(dim=1) > COLOUR_TOLERANCE


def fit_range(stats):
    """[2, 3] float64: the low and high ends of each statistic over healthy images [N, 3],
    widened by MARGIN of the span on each side."""
    stats = torch.as_tensor(stats, dtype=torch.float64)
    low, high = stats.min(dim=0).values, stats.max(dim=0).values
    pad = MARGIN * (high - low)
    return torch.stack([low - pad, high + pad])


def outside(stats, healthy_range):
    """[N] list of the statistics' names each image has outside the healthy range."""
    low, high = healthy_range[0].cpu(), healthy_range[1].cpu()
    stats = stats.cpu()
    return [[name for j, name in enumerate(STATISTICS)
             if not low[j] <= s[j] <= high[j]] for s in stats]


def check(x, healthy_range):
    """([N] bool or None: in distribution, [N] reasons in words) of images [N, 3, S, S]. Without
    a fitted range only colour is checked (None where an image is grey)."""
    stats, grey = global_statistics(x), ~colour(x)
    out = outside(stats, healthy_range) if healthy_range.numel() else [[] for _ in stats]
    verdicts, reasons = [], []
    for k, names in enumerate(out):
        why = ([] if grey[k] else ['colour']) + [
            f'{n} {float(stats[k, STATISTICS.index(n)]):.3g} outside the healthy '
            f'{float(healthy_range[0, STATISTICS.index(n)]):.3g}..'
            f'{float(healthy_range[1, STATISTICS.index(n)]):.3g}' for n in names]
        fitted = bool(healthy_range.numel())
        verdicts.append(False if why else (True if fitted else None))
        reasons.append(', '.join(why))
    return verdicts, reasons
