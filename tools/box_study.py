"""Which map points at the lesion (added): candidate anomaly maps of a run measured against the
radiologists' boxes of the labelled validation images (healthygan/boxes.py).

For each boxed validation image the run's detector (healthygan.load: its checkpoints, snapshot
ensemble, lung prior and healthy pixel reference) translates the image once; every candidate map
comes from that one pass: the residual |x - x_hat| / 2, the 'ref_z' map max(0, (a - mu) / scale),
G's mask, the residual and the ref_z map inside the lung prior, the image's brightness and
darkness, and a uniform map, each smoothed by Gaussians of several sigmas (pixels at the map's
size). It prints the pointing game, the top-5% share and the pixel AUROC with 95% bootstrap
intervals beside their chance levels, saves them (and every image's numbers) as JSON, and draws
a panel of a few boxed images. Only the boxes of images in --val_dir are read: the test images'
boxes are left for the one final scoring.

    python tools/box_study.py --run_dir pretrained/nih-cxr-mini \
        --val_dir datasets/nih-cxr-mini/validation --boxes BOXES.csv --out box_study.json
"""
import argparse
import glob
import json
import os
import sys

import numpy as np
import torch

if not __package__:  # run as python tools/x.py: the repository root on the path
    import _path  # noqa: F401

import healthygan  # noqa: E402
import metrics  # noqa: E402
from healthygan.reports import boxes  # noqa: E402
from healthygan.data.decode import IMAGE_EXTENSIONS, build_transform  # noqa: E402
from healthygan.detection.inputs import prepare  # noqa: E402
from healthygan.errors import ConfigError, DataError  # noqa: E402

SMOOTHED = ('residual', 'ref_z', 'residual_in_lung', 'ref_z_in_lung', 'mask')
PLAIN = ('brightness', 'darkness', 'uniform')


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--run_dir', default='pretrained/nih-cxr-mini',
                   help='a run folder or shipped weights (healthygan.load)')
    p.add_argument('--val_dir', required=True, help='labelled validation images (any subfolders)')
    p.add_argument('--boxes', required=True, help='boxes CSV: file, x, y, w, h in file pixels')
    p.add_argument('--sigmas', type=float, nargs='+', default=[0, 2, 4, 8],
                   help='Gaussian smoothings of the maps, in pixels at the map size')
    p.add_argument('--top_percent', type=float, default=boxes.TOP_PERCENT)
    p.add_argument('--bootstrap', type=int, default=1000)
    p.add_argument('--seed', type=int, default=0, help='bootstrap seed')
    p.add_argument('--out', default=None, help='JSON of the table and every image\'s numbers')
    p.add_argument('--panel', default=None, help='PNG panel of --panel_images boxed images')
    p.add_argument('--panel_images', type=int, default=6)
    p.add_argument('--full_resolution', action='store_true',
                   help='also measure with the maps upsampled (bilinear) to the cropped file\'s '
                        'own pixels, boxes drawn there')
    return p


def validation_boxes(val_dir, boxes_csv):
    """(paths of the boxed images in val_dir, {path: boxes}, rows of other folders left out)."""
    paths = sorted(p for p in glob.glob(os.path.join(val_dir, '**', '*'), recursive=True)
                   if p.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise DataError(f'--val_dir {val_dir} holds no images')
    names = {os.path.basename(p) for p in paths}
    rows = boxes.read_boxes(boxes_csv)
    kept = [r for r in rows if os.path.basename(r['file']) in names]
    matched = boxes.match_boxes(kept, paths, boxes_csv)
    return sorted(matched), matched, len(rows) - len(kept)


def candidate_maps(det, batch, sigmas):
    """{(name, sigma): maps [N, H, W] float64} from one pass of the detector over the batch."""
    with torch.no_grad():
        out = det.score_all(batch)
    x_hat, mask, amap = out['x_hat'], out['mask'], out['map']
    fitted = det.fitted()
    residual = metrics.to_numpy(amap[:, 0])
    base = {'residual': residual, 'mask': metrics.to_numpy(mask[:, 0].float())}
    if fitted['pixels'] is not None:
        base['ref_z'] = metrics.to_numpy(metrics.ref_z_map(amap, *fitted['pixels']))
    lung = None if fitted['region'] is None else metrics.to_numpy(fitted['region'][0, 0])
    brightness = metrics.to_numpy((batch.mean(dim=1) + 1) / 2)
    maps = {}
    for name, m in base.items():
        for sigma in sigmas:
            smoothed = np.stack([boxes.smooth(a, sigma) for a in m])
            maps[(name, sigma)] = smoothed
            if lung is not None and name in ('residual', 'ref_z'):
                maps[(f'{name}_in_lung', sigma)] = smoothed * lung
    order = [*SMOOTHED, *PLAIN]
    maps = dict(sorted(maps.items(), key=lambda item: (order.index(item[0][0]), item[0][1])))
    maps[('brightness', 0)] = brightness
    maps[('darkness', 0)] = 1 - brightness
    maps[('uniform', 0)] = np.zeros_like(residual)
    extras = {'x_hat': metrics.to_numpy((x_hat.mean(dim=1) + 1) / 2), 'lung': lung}
    return maps, extras


def study(det, paths, masks, sigmas, top_percent, n_bootstrap, seed):
    """({(name, sigma): summary}, {(name, sigma): per-image rows}, maps, extras, the batch)."""
    batch, _, _ = prepare(paths, build_transform(det.image_size), det.image_size, det.device)
    maps, extras = candidate_maps(det, batch, sigmas)
    summaries, per_image = {}, {}
    for key, m in maps.items():
        rows = [boxes.image_box_metrics(m[k], masks[p], 0.0, top_percent)
                for k, p in enumerate(paths)]
        per_image[key] = rows
        summaries[key] = boxes.summarise(rows, n_bootstrap, seed)
    return summaries, per_image, maps, extras, batch


def upsampled_study(maps, paths, matched, sizes, top_percent, n_bootstrap, seed, source):
    """The study's summaries with every map (smoothed at the map's size) upsampled to its
    image's cropped square, and the boxes drawn at that size: (summaries, the sides)."""
    summaries = {}
    sides = {p: boxes.crop_geometry(sizes[p])[2] for p in paths}
    masks = {p: boxes.box_mask(boxes.check_inside(matched[p], sizes[p], source), sizes[p],
                               sides[p], source) for p in paths}
    for key, m in maps.items():
        rows = []
        for k, p in enumerate(paths):
            up = torch.nn.functional.interpolate(torch.from_numpy(m[k])[None, None],
                                                 size=(sides[p], sides[p]), mode='bilinear',
                                                 align_corners=False)[0, 0].numpy()
            rows.append(boxes.image_box_metrics(up, masks[p], 0.0, top_percent))
        summaries[key] = boxes.summarise(rows, n_bootstrap, seed)
    return summaries, sorted(set(sides.values()))


EDGE = 4  # pixels from the map's edge counted as 'at the edge' (borders, collimation)


def peak_places(maps, lung, sigma=0):
    """{map: (share of images whose peak lies within EDGE px of the edge, share in the lung
    prior)} for the unsmoothed maps; tied peaks count by their share, as the pointing game's."""
    size = next(iter(maps.values())).shape[-1]
    idx = np.arange(size)
    edge = np.minimum.outer(np.minimum(idx, size - 1 - idx), np.minimum(idx, size - 1 - idx))
    edge = edge < EDGE
    places = {}
    for (name, s), m in maps.items():
        if s != sigma or name == 'uniform':
            continue
        places[name] = (float(np.mean([boxes.pointing_game(a, edge) for a in m])),
                        None if lung is None else
                        float(np.mean([boxes.pointing_game(a, lung > 0) for a in m])))
    return places


def rounded(value, digits=4):
    """A JSON-able structure with its floats rounded (the file stays small and readable)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def cell(s):
    low, high = s['ci95']
    return f'{s["mean"]:.3f} [{low:.2f}, {high:.2f}]'


def table(summaries):
    """The study as a markdown table, one row per map and smoothing, chance last."""
    lines = ['| map | sigma (px at 64) | pointing game | top-5% share | pixel AUROC |',
             '|---|---|---|---|---|']
    for (name, sigma), s in summaries.items():
        lines.append(f'| {name} | {sigma:g} | {cell(s["pointing"])} | {cell(s["top_share"])} | '
                     f'{cell(s["pixel_AUROC"])} |')
    any_s = next(iter(summaries.values()))
    lines.append(f'| chance | | {any_s["pointing"]["chance"]:.3f} | '
                 f'{any_s["top_share"]["chance"]:.3f} | {any_s["pixel_AUROC"]["chance"]:.3f} |')
    return '\n'.join(lines)


def draw_panel(path, paths, matched, sizes, batch, maps, extras, image_size, n):
    """Image, translation, residual, ref_z map and G's mask of n boxed images, boxes drawn."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    columns = [('image', metrics.to_numpy((batch.mean(dim=1) + 1) / 2), (0, 1)),
               ('translation (G)', extras['x_hat'], (0, 1)),
               ('residual |x - x_hat| / 2', maps[('residual', 0)], None),
               ('ref_z map', maps.get(('ref_z', 0)), None),
               ("G's mask", maps[('mask', 0)], (0, 1))]
    columns = [c for c in columns if c[1] is not None]
    fig, axes = plt.subplots(n, len(columns), figsize=(2.2 * len(columns), 2.3 * n))
    for row in range(n):
        p = paths[row]
        for col, (title, m, limits) in enumerate(columns):
            ax = axes[row, col]
            vmin, vmax = limits or (0, max(float(m[row].max()), 1e-6))
            ax.imshow(m[row], cmap='gray' if col < 2 else 'magma', vmin=vmin, vmax=vmax,
                      interpolation='nearest')  # the map's own pixels
            for box in matched[p]:
                x0, y0, x1, y1 = boxes.box_in_map(box, sizes[p], image_size)
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                       edgecolor='cyan', linewidth=1))
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=8)
            if col == 0:
                findings = ', '.join(sorted({b['finding'] or '?' for b in matched[p]}))
                ax.set_ylabel(f'{os.path.basename(p)[4:-4]}\n{findings}', fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_json(path, args, det, paths, n_boxes, summaries, per_image, full):
    """The table (and the upsampled one), every image's numbers, and what was measured."""
    saved = {'run_dir': args.run_dir, 'members': det.members, 'image_size': det.image_size,
             'n_images': len(paths), 'n_boxes': n_boxes, 'top_percent': args.top_percent,
             'bootstrap': args.bootstrap, 'seed': args.seed,
             'table': [{'map': n, 'sigma': s, **summaries[(n, s)]} for n, s in summaries],
             'full_resolution': None if full is None else
             [{'map': n, 'sigma': s, **full[(n, s)]} for n, s in full],
             'per_image': {f'{n}@{s:g}': {os.path.basename(p): r
                                          for p, r in zip(paths, per_image[(n, s)])}
                           for n, s in per_image}}
    with open(path, 'w') as f:
        json.dump(rounded(saved), f, indent=1)


def main(argv=None):
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)
    paths, matched, left_out = validation_boxes(args.val_dir, args.boxes)
    det = healthygan.load(args.run_dir, device='cpu')
    sizes = boxes.sizes_of(paths)
    masks = {p: boxes.box_mask(boxes.check_inside(matched[p], sizes[p], args.boxes), sizes[p],
                               det.image_size, args.boxes) for p in paths}
    summaries, per_image, maps, extras, batch = study(
        det, paths, masks, args.sigmas, args.top_percent, args.bootstrap, args.seed)
    n_boxes = sum(len(b) for b in matched.values())
    print(f'{det!r}\n{len(paths)} validation images with {n_boxes} boxes from {args.boxes} '
          f'({left_out} rows of other folders left out); maps at {det.image_size} px; '
          f'95% bootstrap intervals over images ({args.bootstrap} resamples)\n')
    print(table(summaries))
    band = 1 - (1 - 2 * EDGE / det.image_size) ** 2
    print(f'\nWhere each map\'s peak lies (sigma 0): the share of images with it within {EDGE} px '
          f'of the edge (a band of {band:.0%} of the map), and in the lung prior (which covers '
          f'{extras["lung"].mean():.0%} of the map, the edges included):')
    for name, (at_edge, in_lung) in peak_places(maps, extras['lung']).items():
        print(f'  {name}: {at_edge:.2f} at the edge, {in_lung:.2f} in the lung prior')
    full = None
    if args.full_resolution:
        full, sides = upsampled_study(maps, paths, matched, sizes, args.top_percent,
                                      args.bootstrap, args.seed, args.boxes)
        print(f'\nThe same maps upsampled to the cropped files\' {sides} px (sigma still in '
              f'pixels at {det.image_size}):\n')
        print(table(full))
    if args.out:
        write_json(args.out, args, det, paths, n_boxes, summaries, per_image, full)
    if args.panel:
        draw_panel(args.panel, paths, matched, sizes, batch, maps, extras, det.image_size,
                   min(args.panel_images, len(paths)))
    return summaries


if __name__ == '__main__':
    try:
        main()
    except (DataError, ConfigError) as e:
        sys.exit(f'error: {e}')
