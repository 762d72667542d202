"""Choosing checkpoints: which iteration --resume_iters / --test_iters name (a number, latest,
or, added, the best label-free AUCp or validation AUROC logged at every checkpoint, aucp.py),
and the snapshot ensemble of the last checkpoints (added)."""
import os

import numpy as np
from sklearn.metrics import roc_auc_score

from healthygan.detection import anomaly
from healthygan.errors import CheckpointError, ConfigError
from healthygan.training import checkpoint_sets, jsonl_logs
from healthygan.training.jsonl_logs import AUCP_LOG
from healthygan.training.checkpoint_sets import available_iters




def ensemble_members(model_save_dir, iters, n):
    """The n most recent checkpoints up to and including `iters`, oldest first (added: a
    snapshot ensemble for --ensemble n; n = 1 is [iters], the original's single checkpoint)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f'--ensemble {n!r}: give how many checkpoints to average, 1 or more')
    if n == 1:
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
    for rec in jsonl_logs.read_jsonl(os.path.join(model_save_dir, AUCP_LOG)):  # torn: skipped
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


def resolve_iters(value, model_save_dir, flag, variant='mean'):
    """An iteration number, 'latest' (the newest complete checkpoint set in model_save_dir),
    'best_aucp' or 'best_val' (the checkpoint with the highest AUCp or validation AUROC)."""
    if value in BEST.values():
        if flag == '--resume_iters':
            raise ConfigError(f'--resume_iters {value}: resume from a number or latest')
        key = next(k for k, name in BEST.items() if name == value)
        records = read_aucp_log(model_save_dir).values()
        if anomaly.VARIANTS[variant].of_map and records and \
                all(aucp_of(r, variant, key) is None for r in records):
            # logged where the held-out healthy images allow a reference of each checkpoint
            raise ConfigError(f'{flag} {value} cannot rank checkpoints by {variant} (the '
                              f'training log {os.path.join(model_save_dir, AUCP_LOG)} has no '
                              f'{variant} scores: a run logged before them, or too few '
                              f'held-out healthy images); name a checkpoint or latest, or '
                              f'choose another --score_variant')
        return best_aucp_iters(model_save_dir, flag, variant, key)
    return checkpoint_sets.saved_iters(value, model_save_dir, flag)


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
    return aucp(truth, mean)


def aucp(pseudo_label, pred_score):
    """AUCp: the ROC AUC of pseudo-labels (known healthy = 0, unannotated mixed = 1).

    Needs no disease labels; the authors' later work (TMI 2026) shows it ranks checkpoints
    almost as the true test AUC does.
    """
    return float(roc_auc_score(np.asarray(pseudo_label, dtype=int),
                               np.asarray(pred_score, dtype=float)))
