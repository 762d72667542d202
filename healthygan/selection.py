"""Choosing checkpoints (added): the label-free AUCp logged at every checkpoint, and the snapshot
ensemble of the last checkpoints."""
import json
import os
import sys
import types

import torch
from tqdm import tqdm

from healthygan import metrics, runfiles
from healthygan.data.loaders import get_loader
from healthygan.data.splits import read_truth_labels, resolve_split
from healthygan.errors import CheckpointError
from healthygan.runfiles import available_iters
from healthygan.losses import generate


AUCP_LOG = 'aucp.jsonl'  # beside the checkpoints: one {"iter", "AUCp", ...} line per checkpoint


def ensemble_members(model_save_dir, iters, n):
    """The n most recent checkpoints up to and including `iters`, oldest first (added: a
    snapshot ensemble for --ensemble n; n = 1 is [iters], the original's single checkpoint)."""
    if n <= 1:
        return [iters]
    earlier = [i for i in available_iters(model_save_dir) if i <= iters]
    if len(earlier) < n:
        raise CheckpointError(
            f'--ensemble {n}: only {len(earlier)} checkpoint(s) *-G.ckpt at or before iteration '
            f'{iters} in {model_save_dir}; lower --ensemble or save checkpoints more often '
            f'(--model_save_step)')
    return earlier[-n:]


def read_aucp_log(model_save_dir):
    """The AUCp records of a run ({iter: record}), later lines winning (a resumed run rewrites)."""
    records = {}
    for rec in runfiles.read_jsonl(os.path.join(model_save_dir, AUCP_LOG)):  # torn: skipped
        if isinstance(rec, dict) and 'iter' in rec:
            records[int(rec['iter'])] = rec
    return records


# --test_iters names of the two criteria logged at every checkpoint
BEST = {'AUCp': 'best_aucp', 'val_AUROC': 'best_val'}


def aucp_of(record, variant='mean', key='AUCp'):
    """The AUCp (or, key 'val_AUROC', the validation AUROC) a record holds under a score
    variant, or None."""
    by_variant = record.get(f'{key}_by_variant', {})
    if variant in by_variant:
        return by_variant[variant]
    if record.get('score_variant', 'mean') == variant:
        return record.get(key)
    return None


def best_aucp_iters(model_save_dir, flag='--test_iters', variant='mean', key='AUCp'):
    """The checkpoint with the highest AUCp (key 'AUCp') or validation AUROC (key 'val_AUROC')
    among those still on disk (ties: the later one), under the score variant to be tested."""
    found = set(available_iters(model_save_dir))
    records = read_aucp_log(model_save_dir)
    values = {i: aucp_of(r, variant, key) for i, r in records.items() if i in found}
    values = {i: v for i, v in values.items() if v is not None}
    if not values and key == 'val_AUROC' and any(r.get('n_mixed_anomalous') == 0
                                                 for r in records.values()):
        raise CheckpointError(
            f'{flag} {BEST[key]}: the run was trained with --holdout_labels, but its held-out '
            f'mixed images held no anomalous image (n_mixed_anomalous 0 in {AUCP_LOG} in '
            f'{model_save_dir}), so no validation AUROC was logged; use --test_iters best_aucp, '
            f'or train with a larger --holdout_fraction or --holdout_stratify true')
    if not values:
        how = ('--holdout_fraction > 0' if key == 'AUCp'
               else '--holdout_fraction > 0 and --holdout_labels')
        raise CheckpointError(
            f'{flag} {BEST[key]}: no {key} records for the checkpoints in {model_save_dir} '
            f'(train with {how} to log them in {AUCP_LOG})')
    return max(values, key=lambda i: (values[i], i))


def ensemble_val_auroc(model_save_dir, iters, n, variant):
    """The validation AUROC of the snapshot ensemble of the n checkpoints up to `iters` under a
    score variant: each held-out image's scores averaged over the members' log records, as
    --ensemble n averages every variant's scores. None without the per-image records (a run
    without --holdout_labels, or logged before they were kept)."""
    records = read_aucp_log(model_save_dir)
    members = ensemble_members(model_save_dir, iters, n)
    kept = [records.get(i, {}) for i in members]
    if not all(variant in r.get('val_scores', {}) for r in kept):
        return None
    truth = kept[-1]['val_truth']
    if any(r['val_truth'] != truth for r in kept):
        raise CheckpointError(f'{AUCP_LOG} in {model_save_dir}: the checkpoints {members} were '
                              f'scored on different held-out images; their ensemble cannot be '
                              f'validated')
    mean = [sum(v) / len(kept) for v in zip(*(r['val_scores'][variant] for r in kept))]
    return metrics.aucp(truth, mean)


class AUCpLogging:
    """At every checkpoint, scores of the held-out healthy and mixed images: AUCp (healthy = 0,
    mixed = 1), the authors' later label-free criterion (Siddiquee et al., IEEE TMI), and, with
    --holdout_labels, the validation AUROC of the same images by their true labels."""

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
        if c.holdout_labels:
            mixed = [p for p, lab in zip(loader.dataset.paths, loader.dataset.labels) if lab == 1]
            holdout.truth = read_truth_labels(
                c.holdout_labels, mixed, os.path.join(c.image_dir, 'mixed'))
            if sum(holdout.truth) == 0:  # one class only: no AUROC can be computed
                runfiles.warn(f'--holdout_labels {c.holdout_labels}: the {len(holdout.mixed)} '
                              f'held-out mixed images hold no anomalous image, so no validation '
                              f'AUROC is logged (AUCp still is); raise --holdout_fraction or '
                              f'pass --holdout_stratify true')
            else:
                print(f'Validation: the held-out mixed images hold {sum(holdout.truth)} anomalous '
                      f'by --holdout_labels; validation AUROC on {len(holdout.healthy)} healthy + '
                      f'{len(holdout.mixed)} mixed images at every checkpoint')
        return holdout

    @torch.no_grad()
    def score_images(self, x, G=None):
        """Every score variant (metrics.SCORE_VARIANTS) of each image in a CPU tensor: {name: [N]}."""
        G = G or self.G
        G.train()  # per-image InstanceNorm statistics, as in testing (see translate)
        # Training-mode forwards move InstanceNorm's running statistics; put them back so that
        # scoring leaves the run exactly as it was (and a resumed run equal to an unbroken one).
        buffers = [b.clone() for b in G.buffers()]
        scores = {}
        for batch in torch.split(x, self.config.batch_size):
            batch = batch.to(self.device)
            x_hat, _, mask = generate(G, batch)
            for name, s in metrics.score_variants(batch, x_hat, mask,
                                                  self.lung_region()).items():
                scores.setdefault(name, []).append(s.cpu())
        for b, saved in zip(G.buffers(), buffers):
            b.copy_(saved)
        return {name: torch.cat(s) for name, s in scores.items()}

    def holdout_aucp(self, holdout, G=None):
        """{'AUCp': {variant: value}} of the held-out images and, with their true labels,
        {'val_AUROC': {variant: value}} (held-out healthy = 0, mixed by label)."""
        s_healthy = self.score_images(holdout.healthy, G)
        s_mixed = self.score_images(holdout.mixed, G)
        scores = {name: metrics.to_numpy(torch.cat([s_healthy[name], s_mixed[name]]))
                  for name in s_healthy}
        pseudo = [0] * len(holdout.healthy) + [1] * len(holdout.mixed)
        result = {'AUCp': {name: metrics.aucp(pseudo, s) for name, s in scores.items()}}
        if holdout.truth is not None and sum(holdout.truth) > 0:  # both classes present
            truth = [0] * len(holdout.healthy) + list(holdout.truth)
            result['val_AUROC'] = {name: metrics.aucp(truth, s) for name, s in scores.items()}
            # Kept per image, so that a snapshot ensemble's validation AUROC can be computed
            # later from the log alone (ensemble_val_auroc).
            result['val_scores'] = {name: [float(f'{v:.9g}') for v in s]
                                    for name, s in scores.items()}
            result['val_truth'] = truth
        return result

    def log_aucp(self, iters, holdout):
        """AUCp (and the validation AUROC) of the current G, to TensorBoard and aucp.jsonl.

        'AUCp' uses --score_variant (the score testAUC reports first); every variant's value is
        recorded too, so a score can also be chosen on these images.
        """
        if holdout is None:
            return None
        variant = self.config.score_variant
        record = {'iter': iters, 'score_variant': variant, 'n_healthy': len(holdout.healthy),
                  'n_mixed': len(holdout.mixed)}
        result = self.holdout_aucp(holdout)
        per_image = {key: result.pop(key) for key in ('val_scores', 'val_truth') if key in result}
        for key, by_variant in result.items():
            record.update({key: by_variant[variant], f'{key}_by_variant': by_variant})
            if self.logger:
                self.logger.scalar_summary(key, by_variant[variant], iters)
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
