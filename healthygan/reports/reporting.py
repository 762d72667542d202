"""report.html of testAUC and score: the ROC curve, the score histogram and per-image panels of
the most and least anomalous images (drawn by report.py)."""
import datetime
import os
import sys

import numpy as np
import torch
from tqdm import tqdm

from healthygan.detection import anomaly
from healthygan.reports import report


def example_groups(prefix, rows, selected, n):
    """[(title, indices)] of the n most and the n least anomalous of rows; with fewer than 2n
    images the least anomalous are those not shown as most, so that no image is in both."""
    order = rows[np.argsort(-selected[rows], kind='stable')]
    most = order[:n].tolist()
    least = order[::-1][:min(n, len(order) - len(most))].tolist()
    return [(f'{prefix}most anomalous', most)] + ([(f'{prefix}least anomalous', least)]
                                                  if least else [])


class ReportWriter:
    """Writes report.html and its pictures into --result_dir; the panels' translations come from
    the detector (detector.Detector) that gave the scores."""

    def __init__(self, config, device):
        self.config, self.device = config, device
        self.detector = None  # the detector that gave the scores, set before any report

    def own_map(self):
        """Whether the selected score draws a map of its own (anomaly.VARIANTS' draw)."""
        return anomaly.VARIANTS[self.config.score_variant].draw is not None

    def picture_indices(self, n, order_groups):
        """The first --num_maps images (-1: all) plus the report's examples."""
        first = range(n) if self.config.num_maps < 0 else range(min(self.config.num_maps, n))
        return sorted(set(first) | {k for _, ks in order_groups for k in ks})

    def write_report(self, scores, rows, names, dataset, title, info, intro, record,
                     labels=None, threshold=None, gt_masks=None, variant_auroc=None,
                     boxes=None, healthy_percentiles=None):
        """Plots, per-image panels and report.html of the scored images `rows`. With labels
        (testAUC): the ROC curve and examples per class; without (score): examples overall,
        captioned with each image's healthy_percentile where one is given. boxes (--boxes):
        {index: [(x0, y0, x1, y1) in map pixels]}, drawn on those panels, which are always
        drawn and listed in their own group."""
        c = self.config
        selected, rows = scores[c.score_variant], np.asarray(list(rows), dtype=int)
        plots = os.path.join(c.result_dir, 'plots')
        os.makedirs(plots, exist_ok=True)
        images = []
        if labels is not None:
            report.plot_roc(labels, scores, c.score_variant, threshold,
                            os.path.join(plots, 'roc.png'), variant_auroc)
            images.append('<img src="plots/roc.png" alt="ROC">')
        report.plot_histogram(selected[rows], os.path.join(plots, 'score_histogram.png'),
                              None if labels is None else labels[rows], threshold,
                              f'anomaly score ({c.score_variant})')
        images.append('<img src="plots/score_histogram.png" alt="histogram">')
        sets = [('', rows)] if labels is None else [
            (f'{name}: ', rows[labels[rows] == label]) for label, name in ((1, 'anomalous'),
                                                                           (0, 'normal'))]
        groups = [group for prefix, ks in sets
                  for group in example_groups(prefix, ks, selected, report.N_EXAMPLES)]
        if boxes:
            groups.append(('images with boxes (--boxes)', sorted(k for k in boxes
                                                                 if k in set(rows.tolist()))))
        captions = {int(k): names[k] + ('' if labels is None else
                                        f'  label {"anomalous" if labels[k] else "normal"}')
                    + f'  pred_score {selected[k]:.5f}'
                    + ('' if healthy_percentiles is None else
                       f'  healthy_percentile {healthy_percentiles[k]:.1f}') for k in rows}
        vmax = max(float(np.nanmax(scores['p99'])), 1e-6)
        shown = [k for k in self.picture_indices(len(names), groups) if k in captions]
        self.draw_panels(dataset, shown, names, os.path.join(c.result_dir, 'panels'), vmax,
                         gt_masks, captions, boxes)
        examples = [(title_, [(f'panels/{names[k]}', f'#{rank + 1}: {captions[k]}')
                              for rank, k in enumerate(ks)]) for title_, ks in groups]
        body = (intro + '\n<h2>Plots</h2><div class="plots">' + ''.join(images) + '</div>'
                + f'\n<h2>Examples</h2><p class="note">Columns: input, translation, G\'s mask, '
                  f'the anomaly map |x - x_hat| / 2 over the input (colours from 0 to {vmax:.4g}, '
                  f'the largest 99th percentile of any map in this run), '
                + ('its excess over the held-out healthy images at each pixel in their spread '
                   f'(ref_z\'s map, 0 to {report.REF_Z_VMAX:g}), ' if self.own_map() else '')
                + f'and the true lesion where a mask exists. Ranked by the {c.score_variant} '
                  f'score.</p>\n'
                + report.examples_html(examples)
                + f'\n<p class="note">Files: <a href="{record}">{record}</a>, '
                  '<a href="scores.csv">scores.csv</a> (one row per image, with its map in '
                  'maps/ and, for the first --num_maps images, its panel in panels/).</p>')
        info = {**info, 'written': datetime.datetime.now().isoformat(timespec='seconds')}
        report.write_html(os.path.join(c.result_dir, 'report.html'), title, info, body)

    def draw_panels(self, dataset, indices, names, panel_dir, vmax, gt_masks=None, captions=None,
                    boxes=None):
        """Per-image panels (input, translation, mask, map; true lesion where known) as PNGs.

        A second, short translation pass over these images only: the scores come from the
        first pass, and the colour scale vmax needs every map first.
        """
        gt_masks, captions, boxes = gt_masks or {}, captions or {}, boxes or {}
        indices = list(indices)
        for a in tqdm(range(0, len(indices), self.config.batch_size), desc='pictures',
                      file=sys.stdout, disable=len(indices) < 50):
            chunk = indices[a:a + self.config.batch_size]
            x = torch.stack([dataset[k][0] for k in chunk]).to(self.device)
            out = self.detector.score_all(x)
            x_hat, mask, amap = out['x_hat'], out['mask'], out['map']
            excess = [None] * len(chunk)
            if self.own_map():  # the selected variant's own map (ref_z's excess), drawn too
                excess = anomaly.to_numpy(self.detector.drawn_map(amap))
            x, x_hat = anomaly.to_numpy(x), anomaly.to_numpy(x_hat)
            mask, amap = anomaly.to_numpy(mask)[:, 0], anomaly.to_numpy(amap)[:, 0]
            for j, k in enumerate(chunk):
                path = os.path.join(panel_dir, names[k])
                os.makedirs(os.path.dirname(path), exist_ok=True)
                report.panel(x[j], x_hat[j], mask[j], amap[j], vmax, gt_masks.get(k),
                             captions.get(k, ''), excess[j], boxes.get(k)).save(path)
