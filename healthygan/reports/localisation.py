"""Localisation as a measured output (added): --boxes FILE for testAUC and score, and
Detector.localise for the API. Each boxed image's maps are measured against its boxes
(reports/boxes.py: the pointing game, the share of the map's top 5% pixels inside the boxes,
the pixel AUROC inside against outside, each beside its chance level) for two maps: the selected
score's own map (ref_z's excess map, where the variant draws one; else the anomaly map
|x - x_hat| / 2) and G's mask, the region the paper's translation may change."""
import math
import os

import numpy as np
import torch

from healthygan.detection import anomaly
from healthygan.reports import boxes

MAPS = ('map', 'mask')  # the selected score's map and G's mask
MAP_TITLES = {'map': 'score map', 'mask': "G's mask"}


class BoxedImages:
    """The images of an evaluation that carry boxes: {index: box mask at the map's size} and
    {index: the boxes in map pixels (x0, y0, x1, y1)}, read and checked before any scoring."""

    def __init__(self, boxes_csv, paths, image_size):
        self.source, self.image_size = boxes_csv, image_size
        matched = boxes.match_boxes(boxes.read_boxes(boxes_csv), list(paths), boxes_csv)
        index = {p: k for k, p in enumerate(paths)}
        self.masks, self.rects = {}, {}
        for path, bs in matched.items():
            size = boxes.sizes_of([path])[path]
            inside = boxes.check_inside(bs, size, boxes_csv)
            self.masks[index[path]] = boxes.box_mask(inside, size, image_size, boxes_csv)
            self.rects[index[path]] = [boxes.box_in_map(b, size, image_size) for b in inside]
        self.n_boxes = sum(len(bs) for bs in matched.values())

    @property
    def indices(self):
        return sorted(self.masks)


def map_source(variant):
    """What the 'map' row measures, in words."""
    if anomaly.VARIANTS[variant].draw is not None:
        return f"the {variant} score's own map (its excess over the healthy pixel reference)"
    return 'the anomaly map |x - x_hat| / 2'


def selected_maps(detector, amap, mask):
    """{'map': the selected score's map [N, H, W], 'mask': G's mask [N, H, W]} as float64 numpy,
    from one pass's anomaly maps [N, 1, H, W] and mask [N, 1, H, W]."""
    drawn = detector.drawn_map(amap)
    chosen = amap[:, 0] if drawn is None else drawn
    return {'map': anomaly.to_numpy(chosen).astype(np.float64),
            'mask': anomaly.to_numpy(mask[:, 0].float()).astype(np.float64)}


def kept_maps(detector, kept, indices):
    """{index: {'map', 'mask'}} of the boxed images from a scoring pass's kept
    {index: (anomaly map [H, W], G's mask [H, W])}."""
    out = {}
    for k in indices:
        amap, mask = (torch.from_numpy(np.asarray(a, dtype=np.float32))[None, None]
                      for a in kept[k])
        chosen = selected_maps(detector, amap, mask)
        out[k] = {name: chosen[name][0] for name in MAPS}
    return out


def image_rows(maps, boxed, percent=boxes.TOP_PERCENT):
    """{index: {'map': metrics, 'mask': metrics, 'area': box fraction, 'n_boxes'}} of the boxed
    images; maps: {index: {'map': [H, W], 'mask': [H, W]}} (the pointing game unsmoothed)."""
    rows = {}
    for k in boxed.indices:
        measured = {name: boxes.image_box_metrics(maps[k][name], boxed.masks[k], 0.0, percent)
                    for name in MAPS}
        rows[k] = {**measured, 'area': measured['map']['area'], 'n_boxes': len(boxed.rects[k])}
    return rows


def no_nan(value):
    """A JSON-safe copy: NaN (no interval with fewer than 2 images or no bootstrap) as None."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [no_nan(v) for v in value]
    return value


def summary(rows, boxed, variant, n_bootstrap, seed):
    """The localisation block of metrics.json / summary.json: counts, chance, and each map's
    means with their bootstrap intervals (images resampled alike for both maps)."""
    ordered = [rows[k] for k in sorted(rows)]
    block = {'boxes': boxed.source, 'n_images': len(ordered), 'n_boxes': boxed.n_boxes,
             'top_percent': boxes.TOP_PERCENT, 'pointing_sigma': 0,
             'bootstrap': {'n': n_bootstrap, 'seed': seed, 'method': 'percentile, over images'},
             'map_source': map_source(variant), 'mask_source': "G's mask (the tested checkpoint's)"}
    per_map = {name: boxes.summarise([r[name] for r in ordered], n_bootstrap, seed)
               for name in MAPS}
    block['chance'] = {m: per_map['map'][m]['chance'] for m in boxes.METRICS}
    for name in MAPS:
        block[name] = {m: {'mean': per_map[name][m]['mean'], 'ci95': per_map[name][m]['ci95']}
                       for m in boxes.METRICS}
    return no_nan(block)


def csv_columns(rows, n):
    """scores.csv's added columns {name: [n values]}: each boxed image's numbers, empty for the
    images without boxes."""
    columns = {'n_boxes': [''] * n, 'box_area': [''] * n}
    for name in MAPS:
        for metric in boxes.METRICS:
            columns[f'{name}_{metric}'] = [''] * n
    for k, r in rows.items():
        columns['n_boxes'][k] = r['n_boxes']
        columns['box_area'][k] = f"{r['area']:.6f}"
        for name in MAPS:
            for metric in boxes.METRICS:
                columns[f'{name}_{metric}'][k] = f'{r[name][metric]:.6f}'
    return columns


def cell(entry):
    """'0.074 [0.00, 0.19]', or the mean alone where there is no interval."""
    low, high = entry['ci95']
    return f"{entry['mean']:.3f}" + ('' if low is None else f' [{low:.2f}, {high:.2f}]')


HEADERS = ('pointing game', f'top-{boxes.TOP_PERCENT:g}% share', 'pixel AUROC')


def table_lines(block):
    """The console's short table: one row per map, chance last."""
    width = 24
    lines = [f"Localisation: {block['n_boxes']} boxes on {block['n_images']} images "
             f"({block['boxes']}); means over images, 95% bootstrap intervals",
             f"{'':12}" + ''.join(f'{h:<{width}}' for h in HEADERS)]
    for name in MAPS:
        lines.append(f'{MAP_TITLES[name]:12}' + ''.join(
            f'{cell(block[name][m]):<{width}}' for m in boxes.METRICS))
    lines.append(f"{'chance':12}" + ''.join(f"{block['chance'][m]:<{width}.3f}"
                                            for m in boxes.METRICS))
    return [line.rstrip() for line in lines]


def html_table(block):
    """report.html's localisation section."""
    from healthygan.reports.report import _table
    rows = [[f"{MAP_TITLES[name]}: {block[f'{name}_source']}"]
            + [cell(block[name][m]) for m in boxes.METRICS] for name in MAPS]
    rows.append(['chance (box area over image; 0.5 for the AUROC)']
                + [f"{block['chance'][m]:.3f}" for m in boxes.METRICS])
    return (f"<h2>Localisation ({block['n_boxes']} boxes on {block['n_images']} images)</h2>"
            + _table(['map', *HEADERS], rows)
            + f"<p class=\"note\">Boxes from {block['boxes']}, drawn in cyan on the panels, mapped "
              f"through the images' crop and resize. Pointing game: the map's peak inside a box; "
              f"top share: the share of the map's top {block['top_percent']:g}% pixels inside "
              f"the boxes; pixel AUROC: the map inside against outside the boxes. Means over "
              f"images with 95% bootstrap intervals ({block['bootstrap']['n']} resamples).</p>")


# ------------------------------------------------------------------------------------------------ #
#                                           The API                                                #
# ------------------------------------------------------------------------------------------------ #

@torch.no_grad()
def localise(detector, paths, boxes_csv, n_bootstrap=1000, seed=0, batch_size=16):
    """{'per_image': {path: {'map', 'mask': metrics, 'area', 'n_boxes'}}, 'summary': the
    localisation block} of image files scored by the detector against a boxes CSV."""
    from healthygan.data.decode import build_transform
    from healthygan.detection.inputs import prepare
    paths = [os.fspath(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    boxed = BoxedImages(boxes_csv, paths, detector.image_size)
    maps = {}
    for start in range(0, len(boxed.indices), batch_size):
        chunk = boxed.indices[start:start + batch_size]
        batch, _, _ = prepare([paths[k] for k in chunk], build_transform(detector.image_size),
                              detector.image_size, detector.device)
        out = detector.score_all(batch)
        chosen = selected_maps(detector, out['map'], out['mask'])
        for j, k in enumerate(chunk):
            maps[k] = {name: chosen[name][j] for name in MAPS}
    rows = image_rows(maps, boxed)
    return {'per_image': {paths[k]: r for k, r in rows.items()},
            'summary': summary(rows, boxed, detector.variant, n_bootstrap, seed)}
