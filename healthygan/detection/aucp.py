"""The label-free AUCp (added) and, with --holdout_labels, the validation AUROC, scored on the
held-out images at every checkpoint and appended to aucp.jsonl, from which selection.py chooses
the best checkpoint."""
import json
import os
import sys
import types

import torch
from tqdm import tqdm

from healthygan import errors
from healthygan.data.loaders import get_loader
from healthygan.data.splits import read_truth_labels, resolve_split
from healthygan.detection import anomaly
from healthygan.detection.pixel_reference import MIN_PIXEL_REFERENCE, leave_one_out_scores
from healthygan.detection.selection import aucp
from healthygan.training.jsonl_logs import AUCP_LOG


def per_image(scores):
    """{variant: per-image scores} as JSON floats of 9 significant digits, as aucp.jsonl keeps
    them."""
    return {name: [float(f'{v:.9g}') for v in s] for name, s in scores.items()}


class AUCpLog:
    """At every checkpoint, scores of the held-out healthy and mixed images: AUCp (healthy = 0,
    mixed = 1), the authors' later label-free criterion (Siddiquee et al., IEEE TMI), and, with
    --holdout_labels, the validation AUROC of the same images by their true labels.

    The images are scored eagerly in fp32 whatever the speed switches (detector: a
    detector.Detector around the training G), as before they existed, so that the logged values
    of runs with and without them compare."""

    def __init__(self, config, split, detector, lung, device):
        self.config, self.split, self.detector, self.lung, self.device = (config, split, detector,
                                                                           lung, device)

    def load_holdout(self):
        """The held-out images as CPU tensors (healthy, mixed) and, with --holdout_labels, the
        mixed ones' true labels; None when none are held out."""
        c = self.config
        split = self.split or resolve_split(c, 'train')
        if not split.get('holdout_healthy') or not split.get('holdout_mixed'):
            print('AUCp: no held-out images (--holdout_fraction 0 or sets too small): '
                  'checkpoints are not scored')
            return None
        loader = get_loader(c, 'holdout', split)
        x, labels = [], []
        for batch, label, _ in loader:
            x.append(batch.cpu())
            labels.append(label.cpu())
        x, labels = torch.cat(x), torch.cat(labels)
        holdout = types.SimpleNamespace(healthy=x[labels == 0], mixed=x[labels == 1], truth=None)
        print(f'AUCp: {len(holdout.healthy)} healthy and {len(holdout.mixed)} mixed images held '
              f'out of training')
        if len(holdout.healthy) < MIN_PIXEL_REFERENCE and \
                anomaly.VARIANTS[c.score_variant].needs == 'pixels':
            errors.warn(f'--score_variant {c.score_variant}: {len(holdout.healthy)} held-out '
                        f'healthy image(s) are too few for the healthy pixel reference (at '
                        f'least {MIN_PIXEL_REFERENCE}), so aucp.jsonl logs no {c.score_variant} '
                        f'and its AUCp is mean\'s; raise --holdout_fraction to log it')
        if c.holdout_labels:
            mixed = [p for p, lab in zip(loader.dataset.paths, loader.dataset.labels) if lab == 1]
            holdout.truth = read_truth_labels(
                c.holdout_labels, mixed, os.path.join(c.image_dir, 'mixed'))
            if sum(holdout.truth) == 0:  # one class only: no AUROC can be computed
                errors.warn(f'--holdout_labels {c.holdout_labels}: the {len(holdout.mixed)} '
                              f'held-out mixed images hold no anomalous image, so no validation '
                              f'AUROC is logged (AUCp still is); raise --holdout_fraction or '
                              f'pass --holdout_stratify true')
            else:
                print(f'Validation: the held-out mixed images hold {sum(holdout.truth)} anomalous '
                      f'by --holdout_labels; validation AUROC on {len(holdout.healthy)} healthy + '
                      f'{len(holdout.mixed)} mixed images at every checkpoint')
        return holdout

    def holdout_aucp(self, holdout):
        """{'AUCp': {variant: value}} of the held-out images and, with their true labels,
        {'val_AUROC': {variant: value}} (held-out healthy = 0, mixed by label)."""
        batch_size, det = self.config.batch_size, self.detector
        det.fit_region(self.lung.region())
        det.fit_pixels(None, None)  # the previous checkpoint's reference is not this one's
        s_healthy, maps = det.score_images(holdout.healthy, batch_size, maps=True)
        if len(maps) >= MIN_PIXEL_REFERENCE:
            # 'ref_z' as testAUC scores it, against the healthy pixel reference of the held-out
            # healthy images translated by this checkpoint; each healthy image against the
            # others, as its in-sample score would be too low
            mu, scale = anomaly.healthy_pixel_reference(maps)
            det.fit_pixels(mu.float(), scale.float())  # as saved: a re-read one scores alike
            s_healthy['ref_z'] = torch.tensor(leave_one_out_scores(maps), dtype=torch.float64)
        s_mixed = det.score_images(holdout.mixed, batch_size)
        s_healthy = {name: s_healthy[name] for name in s_mixed}  # the registry's order
        scores = {name: anomaly.to_numpy(torch.cat([s_healthy[name], s_mixed[name]]))
                  for name in s_mixed}
        pseudo = [0] * len(holdout.healthy) + [1] * len(holdout.mixed)
        result = {'AUCp': {name: aucp(pseudo, s) for name, s in scores.items()}}
        # The label-free reference of `score` and the API (reference.py): each held-out healthy
        # image's score, kept whether or not labels exist.
        result['healthy_scores'] = per_image({name: anomaly.to_numpy(s)
                                              for name, s in s_healthy.items()})
        if holdout.truth is not None and sum(holdout.truth) > 0:  # both classes present
            truth = [0] * len(holdout.healthy) + list(holdout.truth)
            result['val_AUROC'] = {name: aucp(truth, s) for name, s in scores.items()}
            # Kept per image, so that a snapshot ensemble's validation AUROC can be computed
            # later from the log alone (ensemble_val_auroc).
            result['val_scores'] = per_image(scores)
            result['val_truth'] = truth
        return result

    def log(self, iters, holdout, logger=None):
        """AUCp (and the validation AUROC) of the current G, to TensorBoard and aucp.jsonl.

        'AUCp' uses --score_variant (the score testAUC reports first); every variant's value is
        recorded too, so a score can also be chosen on these images.
        """
        if holdout is None:
            return None
        result = self.holdout_aucp(holdout)
        variant = self.config.score_variant
        if variant not in result['AUCp']:  # 'ref_z' of too few healthy images (load_holdout warned)
            variant = 'mean'
        record = {'iter': iters, 'score_variant': variant, 'n_healthy': len(holdout.healthy),
                  'n_mixed': len(holdout.mixed)}
        per_image = {key: result.pop(key) for key in ('healthy_scores', 'val_scores', 'val_truth')
                     if key in result}
        for key, by_variant in result.items():
            record.update({key: by_variant[variant], f'{key}_by_variant': by_variant})
            if logger:
                logger.scalar_summary(key, by_variant[variant], iters)
        record.update(per_image)
        if holdout.truth is not None:
            record['n_mixed_anomalous'] = sum(holdout.truth)
        path = os.path.join(self.config.model_save_dir, AUCP_LOG)
        try:
            with open(path, 'a') as f:
                f.write(json.dumps(record) + '\n')
        except OSError as e:  # a full disk: name the file (a write's error names none)
            raise OSError(e.errno, e.strerror, path) from None
        tqdm.write(f'AUCp at iteration {iters}: {record["AUCp"]:.4f} [' + ', '.join(
            f'{k} {v:.3f}' for k, v in record['AUCp_by_variant'].items()) + ']'
            + (f'; validation AUROC {record["val_AUROC"]:.4f}' if 'val_AUROC' in record else ''),
            file=sys.stdout)
        return record['AUCp']
