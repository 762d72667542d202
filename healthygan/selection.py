"""Choosing checkpoints (added): the label-free AUCp logged at every checkpoint, and the snapshot
ensemble of the last checkpoints."""
import json
import os
import sys

import torch
from tqdm import tqdm

import data_loader
import metrics
from healthygan import runfiles
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


def aucp_of(record, variant='mean'):
    """The AUCp a record holds under a score variant, or None."""
    by_variant = record.get('AUCp_by_variant', {})
    if variant in by_variant:
        return by_variant[variant]
    if record.get('score_variant', 'mean') == variant:
        return record.get('AUCp')
    return None


def best_aucp_iters(model_save_dir, flag='--test_iters', variant='mean'):
    """The checkpoint with the highest AUCp (ties: the later one) among those still on disk,
    under the score variant that will be tested."""
    found = set(available_iters(model_save_dir))
    values = {i: aucp_of(r, variant) for i, r in read_aucp_log(model_save_dir).items()
              if i in found}
    values = {i: v for i, v in values.items() if v is not None}
    if not values:
        raise CheckpointError(
            f'{flag} best_aucp: no AUCp records for the checkpoints in {model_save_dir} (train '
            f'with --holdout_fraction > 0 to log them in {AUCP_LOG})')
    return max(values, key=lambda i: (values[i], i))


class AUCpLogging:
    """AUCp of the held-out healthy (0) and mixed (1) images at every checkpoint: the authors'
    later label-free criterion (Siddiquee et al., IEEE TMI)."""

    def load_holdout(self):
        """The held-out healthy and mixed images as two CPU tensors (None when none held out)."""
        split = self.split or data_loader.resolve_split(self.config, 'train')
        if not split.get('holdout_healthy') or not split.get('holdout_mixed'):
            print('AUCp: no held-out images (--holdout_fraction 0 or sets too small): '
                  'checkpoints are not scored')
            return None
        loader = data_loader.get_loader(self.config, 'holdout', split)
        x, labels = [], []
        for batch, label, _ in loader:
            x.append(batch.cpu())
            labels.append(label.cpu())
        x, labels = torch.cat(x), torch.cat(labels)
        print(f'AUCp: {int((labels == 0).sum())} healthy and {int((labels == 1).sum())} mixed '
              f'images held out of training')
        return x[labels == 0], x[labels == 1]

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
        """AUCp of every score variant on the held-out images: {name: value}."""
        x_healthy, x_mixed = holdout
        s_healthy, s_mixed = self.score_images(x_healthy, G), self.score_images(x_mixed, G)
        labels = [0] * len(x_healthy) + [1] * len(x_mixed)
        return {name: metrics.aucp(labels, metrics.to_numpy(torch.cat([s_healthy[name],
                                                                       s_mixed[name]])))
                for name in s_healthy}

    def log_aucp(self, iters, holdout):
        """AUCp (healthy held-out = 0, mixed held-out = 1) of the current G, to TB and aucp.jsonl.

        'AUCp' uses --score_variant (the score testAUC reports first); every variant's AUCp is
        recorded too, so a score can also be chosen without labels.
        Added: the label-free checkpoint selection of the authors' later work.
        """
        if holdout is None:
            return None
        variant = self.config.score_variant
        by_variant = self.holdout_aucp(holdout)
        value = by_variant[variant]
        record = {'iter': iters, 'AUCp': value, 'score_variant': variant,
                  'n_healthy': len(holdout[0]), 'n_mixed': len(holdout[1]),
                  'AUCp_by_variant': by_variant}
        with open(os.path.join(self.config.model_save_dir, AUCP_LOG), 'a') as f:
            f.write(json.dumps(record) + '\n')
        if self.logger:
            self.logger.scalar_summary('AUCp', value, iters)
        tqdm.write(f'AUCp at iteration {iters}: {value:.4f} [' + ', '.join(
            f'{k} {v:.3f}' for k, v in by_variant.items()) + ']', file=sys.stdout)
        return value
