"""Lesion boxes (added): how well an anomaly map points into a reader's bounding boxes.

A boxes CSV gives file, x, y, w, h in the image file's own pixels (several rows per image; an
optional finding column is kept, other columns are ignored). Each box is mapped through the very
crop and resize the image gets on its way into the network (data/decode.py: the top rows cut
away, the largest centred square kept, the square resized to image_size), and each map is
measured against the boxes' mask by three numbers, each beside what a map reaches by chance:

- pointing game: the peak of the map, smoothed by a Gaussian, lies inside a box
  (chance: the boxes' area fraction);
- top share: the share of the map's top p% pixels inside the boxes (chance: the area fraction);
- pixel AUROC: the map's values inside against outside the boxes (chance: 0.5).

Ties are resolved by their expectation under a random order, so that a flat map scores chance
exactly: the pointing game of a map with several equal peaks is the share of those peaks inside
a box, the top share counts the pixels tied at the cut by the share of the free places they
would get, and the AUROC counts ties half.
"""
import csv
import math

import numpy as np
from scipy.ndimage import gaussian_filter

from healthygan.data.decode import TOP_CROP_FRACTION, load_image
from healthygan.errors import DataError
from healthygan.reports.statistics import auroc_rows

BOX_COLUMNS = ('file', 'x', 'y', 'w', 'h')
TOP_PERCENT = 5.0  # the top share's p: the map's highest 5% of pixels
METRICS = ('pointing', 'top_share', 'pixel_AUROC')


# ------------------------------------------------------------------------------------------------ #
#                                    Reading and matching                                          #
# ------------------------------------------------------------------------------------------------ #

def read_boxes(path):
    """The rows of a boxes CSV as dicts (file, x, y, w, h as floats, finding or None, line)."""
    try:
        with open(path, newline='', encoding='utf-8-sig') as f:  # spreadsheets' BOM
            reader = csv.DictReader(f)
            header = [c.strip() for c in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f'cannot read the boxes file {path}: {e}') from None
    missing = [c for c in BOX_COLUMNS if c not in header]
    if missing:
        raise DataError(f'{path} lacks the column(s) {", ".join(missing)}: a boxes CSV needs '
                        f'file, x, y, w, h (the box in the image file\'s pixels)')
    if not rows:
        raise DataError(f'{path} holds no boxes: add rows of file, x, y, w, h')
    return [parse_row({k.strip(): v for k, v in row.items() if k is not None}, path, line)
            for line, row in enumerate(rows, start=2)]


def parse_row(row, path, line):
    """One CSV row as a box dict, or one clear error naming the file and line."""
    box = {'file': (row['file'] or '').strip(), 'finding': (row.get('finding') or '').strip()
           or None, 'line': line}
    if not box['file']:
        raise DataError(f'{path} line {line}: the file column is empty')
    for c in ('x', 'y', 'w', 'h'):
        try:
            box[c] = float(row[c])
        except (TypeError, ValueError):
            raise DataError(f'{path} line {line}: {c} is {row[c]!r}, not a number') from None
        if not math.isfinite(box[c]):
            raise DataError(f'{path} line {line}: {c} is {row[c]!r}, not a finite number')
    if box['w'] <= 0 or box['h'] <= 0:
        raise DataError(f'{path} line {line}: the box of {box["file"]} has size '
                        f'{box["w"]:g} x {box["h"]:g}; w and h must be positive')
    return box


def match_boxes(boxes, paths, source):
    """{path: its boxes} for the evaluated image paths; a box's file matches a path that equals
    it or ends with it (a name, or a name under folders); every box must match one path."""
    by_path, missing = {}, []
    for box in boxes:
        name = box['file'].replace('\\', '/')
        hits = [p for p in paths if p.replace('\\', '/') == name
                or p.replace('\\', '/').endswith('/' + name)]
        if not hits:
            missing.append(box)
            continue
        if len(hits) > 1:
            raise DataError(f'{source} line {box["line"]}: {box["file"]} matches '
                            f'{len(hits)} evaluated images ({hits[0]}, {hits[1]}); name it by '
                            f'its folder too')
        by_path.setdefault(hits[0], []).append(box)
    if missing:  # all counted: a boxes file of a whole dataset names other folders' images too
        first = missing[0]
        others = (f' ({len(missing)} rows name images not evaluated)' if len(missing) > 1
                  else '')
        raise DataError(f'{source} line {first["line"]}: {first["file"]} is not among the '
                        f'{len(paths)} evaluated images{others}; remove those rows or evaluate '
                        f'those images')
    return by_path


def check_inside(boxes, original_size, source):
    """The boxes clipped to the image (width, height); a box wholly outside is an error."""
    width, height = original_size
    clipped = []
    for box in boxes:
        x0, y0 = max(box['x'], 0.0), max(box['y'], 0.0)
        x1, y1 = min(box['x'] + box['w'], width), min(box['y'] + box['h'], height)
        if x1 <= x0 or y1 <= y0:
            raise DataError(f'{source} line {box["line"]}: the box of {box["file"]} '
                            f'(x {box["x"]:g}, y {box["y"]:g}, w {box["w"]:g}, h {box["h"]:g}) '
                            f'lies outside the image ({width} x {height} px); boxes are in the '
                            f'image file\'s own pixels')
        clipped.append({**box, 'x': x0, 'y': y0, 'w': x1 - x0, 'h': y1 - y0})
    return clipped


# ------------------------------------------------------------------------------------------------ #
#                         Boxes through the loader's crop and resize                               #
# ------------------------------------------------------------------------------------------------ #

def crop_geometry(original_size):
    """(left, top, side) of the square decode.crop_radiograph keeps, in the file's pixels."""
    w, h = original_size
    top = int(h * TOP_CROP_FRACTION)
    side = min(w, h - top)
    return (w - side) // 2, top + (h - top - side) // 2, side


def box_in_map(box, original_size, image_size):
    """(x0, y0, x1, y1) of a box in the map's pixel coordinates after the crop and resize."""
    left, top, side = crop_geometry(original_size)
    scale = image_size / side
    return ((box['x'] - left) * scale, (box['y'] - top) * scale,
            (box['x'] + box['w'] - left) * scale, (box['y'] + box['h'] - top) * scale)


def box_mask(boxes, original_size, image_size, source='boxes'):
    """A boolean [image_size, image_size] mask of the boxes after the loader's crop and resize.

    A map pixel is inside where its centre lies in a box (the resize maps pixel i's centre to
    (i + 0.5) * side / image_size in the square); a box too small to hold a centre keeps the
    pixel under its own centre, so that no box vanishes. A box in the part the crop cuts away
    adds nothing; an image left with no box pixel, or with every pixel boxed, is an error.
    """
    centres = np.arange(image_size) + 0.5
    mask = np.zeros((image_size, image_size), dtype=bool)
    for box in boxes:
        x0, y0, x1, y1 = box_in_map(box, original_size, image_size)
        cols = (centres >= x0) & (centres < x1)
        rows = (centres >= y0) & (centres < y1)
        if not cols.any() and 0 <= (x0 + x1) / 2 < image_size:
            cols[int((x0 + x1) / 2)] = True
        if not rows.any() and 0 <= (y0 + y1) / 2 < image_size:
            rows[int((y0 + y1) / 2)] = True
        mask |= rows[:, None] & cols[None, :]
    name = boxes[0]['file'] if boxes else '?'
    if not mask.any():
        raise DataError(f'{source}: the boxes of {name} lie wholly in the part of the image '
                        f'the crop cuts away (the top {TOP_CROP_FRACTION:.0%} of rows and the '
                        f'sides beyond the centred square); nothing is left to measure')
    if mask.all():
        raise DataError(f'{source}: the boxes of {name} cover the whole cropped image; '
                        f'nothing lies outside them to measure against')
    return mask


# ------------------------------------------------------------------------------------------------ #
#                                     Metrics of one map                                           #
# ------------------------------------------------------------------------------------------------ #

def smooth(amap, sigma):
    """The map smoothed by a Gaussian of sigma pixels (sigma 0: the map itself)."""
    amap = np.asarray(amap, dtype=np.float64)
    return gaussian_filter(amap, sigma, mode='nearest') if sigma > 0 else amap


def pointing_game(amap, mask, sigma=0.0):
    """1 where the smoothed map's peak lies inside the boxes, 0 where not; with several equal
    peaks, the share of them inside (a random choice among them, in expectation)."""
    s = smooth(amap, sigma)
    peaks = s == s.max()
    return float(mask[peaks].mean())


def top_share(amap, mask, percent=TOP_PERCENT):
    """The share of the map's top percent pixels that lie inside the boxes; pixels tied at the
    cut fill the places left, in proportion, as a random order among them would."""
    values = np.asarray(amap, dtype=np.float64).ravel()
    inside = np.asarray(mask, dtype=bool).ravel()
    k = min(values.size, max(1, int(round(percent / 100 * values.size))))
    cut = np.partition(values, values.size - k)[values.size - k]
    above, tied = values > cut, values == cut
    free = k - int(above.sum())
    hits = inside[above].sum() + free * inside[tied].mean()
    return float(hits / k)


def pixel_auroc(amap, mask):
    """The ROC AUC of the map's values inside the boxes against outside (ties count half)."""
    values = np.asarray(amap, dtype=np.float64).ravel()
    inside = np.asarray(mask, dtype=bool).ravel()
    return float(auroc_rows(values[inside][None], values[~inside][None])[0])


def image_box_metrics(amap, mask, sigma=0.0, percent=TOP_PERCENT):
    """{pointing, top_share, pixel_AUROC, area} of one map [H, W] and its box mask [H, W];
    sigma smooths the map for the pointing game only (the others measure the map as given)."""
    amap = np.asarray(amap, dtype=np.float64)
    if amap.shape != mask.shape:
        raise ValueError(f'map {amap.shape} and box mask {mask.shape} differ in size')
    if not np.all(np.isfinite(amap)):
        raise ValueError('the anomaly map contains NaN or inf')
    return {'pointing': pointing_game(amap, mask, sigma), 'top_share': top_share(amap, mask, percent),
            'pixel_AUROC': pixel_auroc(amap, mask), 'area': float(mask.mean())}


def chance(metric, area):
    """What a map reaches by chance on an image whose boxes cover this fraction of it."""
    return 0.5 if metric == 'pixel_AUROC' else area


# ------------------------------------------------------------------------------------------------ #
#                                   Means over images                                              #
# ------------------------------------------------------------------------------------------------ #

def bootstrap_mean(values, n_bootstrap=1000, seed=0, level=0.95):
    """(mean, low, high): the percentile bootstrap interval of a mean over images, resample b
    drawn from its own generator (seed, b) as metrics.bootstrap_auroc draws."""
    values = np.asarray(values, dtype=np.float64)
    if n_bootstrap <= 0 or len(values) < 2:
        return float(values.mean()), float('nan'), float('nan')
    means = np.array([values[np.random.default_rng([seed, b]).integers(0, len(values),
                                                                        len(values))].mean()
                      for b in range(n_bootstrap)])
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(values.mean()), float(low), float(high)


def summarise(per_image, n_bootstrap=1000, seed=0):
    """{metric: {mean, ci95, chance}} over the images' image_box_metrics; the images are drawn
    with the same resamples for every metric (same seed), so the intervals are paired."""
    areas = [r['area'] for r in per_image]
    out = {}
    for metric in METRICS:
        mean, low, high = bootstrap_mean([r[metric] for r in per_image], n_bootstrap, seed)
        out[metric] = {'mean': mean, 'ci95': [low, high],
                       'chance': float(np.mean([chance(metric, a) for a in areas]))}
    out['n_images'] = len(per_image)
    return out


def boxes_of_images(boxes_csv, paths, image_sizes, image_size):
    """{path: box mask at image_size} for the evaluated paths that have boxes in the CSV;
    image_sizes: {path: (width, height)} of the files."""
    matched = match_boxes(read_boxes(boxes_csv), list(paths), boxes_csv)
    return {p: box_mask(check_inside(b, image_sizes[p], boxes_csv), image_sizes[p], image_size,
                        boxes_csv)
            for p, b in matched.items()}


def sizes_of(paths):
    """{path: (width, height)} of image files, read as the loader reads them (any format)."""
    return {p: load_image(p).size for p in paths}
