"""A label-free reference for scores (added): the scores of the healthy images held out of
training, logged at every checkpoint (aucp.jsonl), against which a new image's score reads as a
percentile. An image above the --healthy_percentile-th percentile of those healthy scores is
marked: a threshold that needs no labelled image, stated as such wherever it is used."""
import os

import numpy as np

from healthygan.detection import fitted
from healthygan.detection.selection import AUCP_LOG, read_aucp_log


def healthy_scores(record, variant):
    """The held-out healthy images' scores under a variant in one aucp.jsonl record, or None.

    Records written before 'healthy_scores' was kept hold them as the first n_healthy entries
    of 'val_scores' (the held-out healthy images come first there, with true label 0), so runs
    trained with --holdout_labels before then still have a reference.
    """
    kept = record.get('healthy_scores', {})
    if variant in kept:
        return kept[variant]
    n = record.get('n_healthy')
    val = record.get('val_scores', {}).get(variant)
    if val is not None and n and record.get('val_truth', [])[:n] == [0] * n:
        return val[:n]
    return None


class HealthyReference:
    """The held-out healthy images' scores of one checkpoint (or the mean over a snapshot
    ensemble's members, as --ensemble averages every score) and the percentile that marks."""

    def __init__(self, scores, percentile, members, variant, source=AUCP_LOG):
        self.scores = np.sort(np.asarray(scores, dtype=np.float64))
        self.percentile, self.members, self.variant = float(percentile), list(members), variant
        self.source = source  # where the healthy scores come from
        self.threshold = float(np.percentile(self.scores, self.percentile))

    @classmethod
    def of_run(cls, model_save_dir, members, variant, percentile):
        """The reference of the checkpoints `members` under a score variant, or None where the
        run logged no held-out healthy scores for one of them (no hold-out, or released
        weights)."""
        records = read_aucp_log(model_save_dir)
        per_member = [healthy_scores(records.get(i, {}), variant) for i in members]
        if any(s is None for s in per_member):
            return None
        path = os.path.join(model_save_dir, AUCP_LOG)
        per_member = [fitted.finite_scores(path, s, f'healthy_scores of checkpoint {i}')
                      for i, s in zip(members, per_member)]
        if len({len(s) for s in per_member}) != 1:
            return None
        return cls(np.mean(np.asarray(per_member, dtype=np.float64), axis=0), percentile,
                   members, variant)

    def percentiles(self, scores):
        """Each score's percentile among the healthy scores: the share (in %) at or below it."""
        ranks = np.searchsorted(self.scores, np.asarray(scores, dtype=np.float64), side='right')
        return 100.0 * ranks / len(self.scores)

    def above(self, scores):
        """True where a score exceeds the reference's percentile of the healthy scores."""
        return np.asarray(scores, dtype=np.float64) > self.threshold

    def describe(self):
        return (f'label-free: the {self.percentile:g}th percentile of the {self.variant} scores of '
                f'the {len(self.scores)} healthy images held out of training ({self.source})')

    def record(self):
        """What summary.json / metrics.json say of it."""
        return {'source': self.describe(), 'percentile': self.percentile,
                'threshold': self.threshold, 'n_healthy': len(self.scores),
                'score_variant': self.variant, 'checkpoints': self.members}
