"""Pictures of an evaluation (added; the original printed numbers only): anomaly maps saved as
16-bit PNGs, per-image panels, an ROC curve, score histograms and a report.html that works
offline, opened straight from disk (it references only files in its own folder)."""
import html
import os

import numpy as np
from PIL import Image, ImageDraw

MAP_SCALE = 65535  # maps lie in [0, 1]; a 16-bit PNG keeps them to 1.5e-5
TILE_MIN = 128     # panel tiles are upscaled (nearest) to at least this many pixels
COLORMAP = 'jet'
N_EXAMPLES = 3     # report: the most and the least anomalous images of each class


def _plt():
    """matplotlib.pyplot on the Agg backend (no display needed), imported only when drawing."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


# ------------------------------------------------------------------------------------------------ #
#                                       Files of the maps                                          #
# ------------------------------------------------------------------------------------------------ #

def output_names(paths, root=None):
    """A unique relative .png name per input path, mirroring its folders below root.

    root defaults to the deepest folder holding all the paths. 'a/x.jpg' becomes 'a/x.png';
    when two inputs differ only in their extension both keep it ('a/x.jpg.png').
    """
    absolute = [os.path.abspath(p) for p in paths]
    if root is None:
        root = os.path.commonpath([os.path.dirname(p) for p in absolute]) if absolute else '.'
    rel = [os.path.relpath(p, os.path.abspath(root)) for p in absolute]
    names = [os.path.splitext(r)[0] + '.png' for r in rel]
    seen = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    return [r + '.png' if seen[n] > 1 else n for r, n in zip(rel, names)]


def save_map(amap, path):
    """Write an anomaly map (H, W) in [0, 1] as a 16-bit grayscale PNG."""
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    values = np.round(np.clip(np.asarray(amap, dtype=np.float64), 0, 1) * MAP_SCALE)
    Image.fromarray(values.astype(np.uint16)).save(path)


def load_map(path):
    """Read a map written by save_map: float32 (H, W) in [0, 1]."""
    with Image.open(path) as img:
        return np.asarray(img, dtype=np.float32) / MAP_SCALE


# ------------------------------------------------------------------------------------------------ #
#                                         Per-image panels                                         #
# ------------------------------------------------------------------------------------------------ #

def _gray_rgb(x):
    """An image in [-1, 1], (3, H, W) or (H, W), as uint8 RGB (H, W, 3)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x.transpose(1, 2, 0)
    else:
        x = np.repeat(x[..., None], 3, axis=2)
    return np.round(np.clip((x + 1) / 2, 0, 1) * 255).astype(np.uint8)


def heat_overlay(image_rgb, amap, vmax):
    """The map coloured by COLORMAP over the radiograph; low values stay see-through."""
    from matplotlib import colormaps
    v = np.clip(np.asarray(amap, dtype=np.float32) / vmax, 0, 1)
    heat = colormaps[COLORMAP](v)[..., :3] * 255
    alpha = 0.7 * v[..., None]
    return np.round((1 - alpha) * image_rgb + alpha * heat).astype(np.uint8)


REF_Z_VMAX = 3.0  # the 'ref_z' excess map's colours: 0 to 3 healthy spreads


def panel(x, x_hat, mask, amap, vmax, gt_mask=None, caption='', excess=None, boxes=None):
    """One row: input | translation | G's mask | map over the input [| the map's excess over
    the healthy images ('ref_z')] [| true lesion mask].

    x, x_hat: (3, H, W) in [-1, 1]; mask, amap: (H, W) in [0, 1]; the map's colours run from 0
    to vmax (the same for every image of a run, so panels compare); excess: max(0, (a - mu) /
    scale), coloured from 0 to REF_Z_VMAX; boxes: [(x0, y0, x1, y1)] in the map's pixels (a
    reader's lesion boxes, --boxes), outlined on the input, the mask and the maps.
    """
    image = _gray_rgb(x)
    tiles = [('input', image), ('translation', _gray_rgb(x_hat)),
             ('mask m', _gray_rgb(np.asarray(mask) * 2 - 1)),
             (f'|x-x_hat|/2, 0-{vmax:.3g}', heat_overlay(image, amap, vmax))]
    if excess is not None:
        tiles.append((f'over healthy, 0-{REF_Z_VMAX:g} sd',
                      heat_overlay(image, excess, REF_Z_VMAX)))
    if gt_mask is not None:
        tiles.append(('true lesion', _gray_rgb(np.asarray(gt_mask, np.float32) * 2 - 1)))
    h, w = image.shape[:2]
    scale = max(1, -(-TILE_MIN // h))
    th, tw, header = h * scale, w * scale, 14
    footer = 14 if caption else 0
    canvas = Image.new('RGB', (tw * len(tiles), th + header + footer), 'white')
    draw = ImageDraw.Draw(canvas)
    for k, (label, tile) in enumerate(tiles):
        big = Image.fromarray(tile).resize((tw, th), Image.NEAREST)
        canvas.paste(big, (k * tw, header))
        draw.text((k * tw + 3, 1), label, fill='black')
        if boxes and label != 'translation' and label != 'true lesion':
            outline_boxes(draw, boxes, (k * tw, header), scale, w)
    if caption:
        draw.text((3, header + th + 1), caption, fill='black')
    return canvas


BOX_COLOUR = (0, 255, 255)  # cyan: apart from the jet map's colours and the grey image


def outline_boxes(draw, boxes, origin, scale, side):
    """Outline boxes given in map pixels (clipped to the side x side map) on a tile upscaled by
    scale whose corner is origin."""
    ox, oy = origin
    for box in boxes:
        x0, y0, x1, y1 = (min(max(v, 0), side) for v in box)
        draw.rectangle([ox + x0 * scale, oy + y0 * scale, ox + x1 * scale - 1,
                        oy + y1 * scale - 1], outline=BOX_COLOUR, width=1)


# ------------------------------------------------------------------------------------------------ #
#                                              Plots                                               #
# ------------------------------------------------------------------------------------------------ #

def plot_roc(gt_label, variant_scores, selected, threshold, path, variant_auroc=None):
    """ROC curves of every score variant; the selected one bold, with its operating point."""
    from sklearn.metrics import roc_curve
    plt = _plt()
    gt_label = np.asarray(gt_label, dtype=int)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.plot([0, 1], [0, 1], color='0.7', lw=1, ls='--')
    for name, score in variant_scores.items():
        fpr, tpr, _ = roc_curve(gt_label, score)
        auc = f' (AUROC {variant_auroc[name]:.3f})' if variant_auroc else ''
        ax.plot(fpr, tpr, lw=2.5 if name == selected else 1,
                label=name + auc + (' [selected]' if name == selected else ''))
    score = np.asarray(variant_scores[selected], dtype=float)
    pred = score >= threshold
    tpr = (pred & (gt_label == 1)).sum() / max((gt_label == 1).sum(), 1)
    fpr = (pred & (gt_label == 0)).sum() / max((gt_label == 0).sum(), 1)
    ax.plot([fpr], [tpr], 'ko', label=f'threshold {threshold:.4g}')
    ax.set(xlabel='1 - specificity (FPR)', ylabel='sensitivity (TPR)', xlim=(0, 1),
           ylim=(0, 1.01), title='ROC, test set')
    ax.legend(loc='lower right', fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_histogram(pred_score, path, gt_label=None, threshold=None, xlabel='anomaly score'):
    """Score histogram, one per class when labels are given, and the threshold if there is one."""
    plt = _plt()
    pred_score = np.asarray(pred_score, dtype=float)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    bins = np.histogram_bin_edges(pred_score, bins=min(40, max(10, len(pred_score) // 5)))
    if gt_label is None:
        ax.hist(pred_score, bins=bins, color='tab:blue', alpha=0.8,
                label=f'all images (n={len(pred_score)})')
    else:
        gt_label = np.asarray(gt_label, dtype=int)
        for label, name, color in ((0, 'normal', 'tab:blue'), (1, 'anomalous', 'tab:red')):
            s = pred_score[gt_label == label]
            ax.hist(s, bins=bins, color=color, alpha=0.55, label=f'{name} (n={len(s)})')
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color='k', ls='--', lw=1, label=f'threshold {threshold:.4g}')
    ax.set(xlabel=xlabel, ylabel='images')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ #
#                                            report.html                                           #
# ------------------------------------------------------------------------------------------------ #

CSS = """
body { font-family: sans-serif; margin: 1.5em; max-width: 1150px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #bbb; padding: 3px 8px; text-align: right; font-size: 14px; }
th { background: #eee; } td.l, th.l { text-align: left; }
tr.sel td { font-weight: bold; }
img { max-width: 100%; border: 1px solid #ddd; }
.plots img { width: 48%; vertical-align: top; }
.ex { margin: 0.4em 0 0.8em; } .ex div { font-size: 13px; }
.note { color: #555; font-size: 13px; }
"""


def _fmt(v, digits=4):
    if v is None:
        return ''
    if isinstance(v, float):
        return f'{v:.{digits}f}' if np.isfinite(v) else str(v)
    return html.escape(str(v))


def _table(header, rows, selected_row=None):
    out = ['<table>']
    if header:
        out.append('<tr>' + ''.join(f'<th class="l">{html.escape(h)}</th>' if k == 0 else
                                    f'<th>{html.escape(h)}</th>' for k, h in enumerate(header))
                   + '</tr>')
    for k, row in enumerate(rows):
        cls = ' class="sel"' if k == selected_row else ''
        out.append(f'<tr{cls}>' + ''.join(f'<td class="l">{_fmt(v)}</td>' if j == 0 else
                                          f'<td>{_fmt(v)}</td>' for j, v in enumerate(row))
                   + '</tr>')
    return '\n'.join(out + ['</table>'])


def _ci(r):
    ci = r.get('image_AUROC_ci95')
    return f'{ci[0]:.4f} - {ci[1]:.4f}' if ci else 'not computed'


def metrics_html(result):
    """The tables of a metrics.json dict: headline, score variants side by side, pixel level."""
    parts = ['<h2>Image level</h2>', _table(
        ['metric', 'value'],
        [['image AUROC', result['image_AUROC']], ['95% bootstrap CI', _ci(result)],
         ['AUPRC (average precision)', result['image_AUPRC']],
         ['threshold', result['threshold']], ['threshold source', result['threshold_source']],
         ['sensitivity', result['sensitivity']], ['specificity', result['specificity']],
         ['accuracy', result['accuracy']], ['F1', result['F1']],
         ['normal / anomalous images', f"{result['n_normal']} / {result['n_anomalous']}"]])]
    variants = result.get('variants', {})
    if variants:
        names = list(variants)
        parts += ['<h2>Score variants (one translation pass)</h2>', _table(
            ['variant', 'image AUROC', '95% CI', 'AUPRC', 'sensitivity', 'specificity',
             'accuracy', 'F1'],
            [[f"{n}: {v['description']}", v['image_AUROC'], _ci(v), v['image_AUPRC'],
              v['sensitivity'], v['specificity'], v['accuracy'], v['F1']]
             for n, v in variants.items()],
            selected_row=names.index(result['score_variant'])
            if result.get('score_variant') in names else None),
            '<p class="note">Bold: the variant selected with --score_variant (the headline '
            'numbers). Each variant\'s threshold comes from the same source as the headline '
            'one.</p>']
    if 'pixel_AUROC' in result:
        parts += ['<h2>Pixel level (ground-truth lesion masks)</h2>', _table(
            ['metric', 'value'],
            [['pixel AUROC', result['pixel_AUROC']], ['Dice at the best threshold',
                                                      result['pixel_Dice']],
             ['pixel threshold', result['pixel_threshold']],
             ['threshold source', result['pixel_threshold_source']],
             ['images (with a lesion mask)',
              f"{result['pixel_n_images']} ({result['pixel_n_lesion_images']})"]])]
    return '\n'.join(parts)


def examples_html(groups):
    """groups: [(title, [(panel path relative to the report, caption), ...]), ...]."""
    parts = []
    for title, items in groups:
        parts.append(f'<h3>{html.escape(title)}</h3>')
        for src, caption in items:
            parts.append(f'<div class="ex"><img src="{html.escape(src)}" alt="">'
                         f'<div>{html.escape(caption)}</div></div>')
    return '\n'.join(parts)


def write_html(path, title, info, body):
    """report.html: a title, a table of facts about the run, and the given body (HTML)."""
    facts = _table(None, [[k, v] for k, v in info.items()])
    doc = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
           f'<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n'
           f'<h1>{html.escape(title)}</h1>\n{facts}\n{body}\n</body></html>\n')
    with open(path, 'w', encoding='utf-8') as f:
        f.write(doc)
