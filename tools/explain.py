"""How much of a detector's per-image score the global image statistics explain (added).

`python tools/baselines.py --explain SCORES.csv` runs this analysis: the test AUROC of the
score's residual after a linear regression on the three statistics (tools/image_statistics.py),
and the mean AUROC within tertiles of the test images' mean intensity. The regression is fitted
on the training-folder images the CSV(s) also score (e.g. `main.py --mode score --score_dir
<image_dir>` of the same model; pass both files), else cross-fitted on the test images in
--explain_folds folds; the output says which.
"""
import csv
import os

import numpy as np
from sklearn.metrics import roc_auc_score

import metrics
from healthygan.errors import ConfigError
from tools.image_statistics import STATISTICS


def fit_linear(features, target):
    """Least-squares coefficients [intercept, one per feature column] of target on features."""
    design = np.column_stack([np.ones(len(features)), features])
    coef, *_ = np.linalg.lstsq(design, np.asarray(target, dtype=float), rcond=None)
    return coef


def predict_linear(coef, features):
    return coef[0] + np.asarray(features) @ coef[1:]


def crossfit_residuals(features, target, folds, seed=0):
    """target minus its prediction from a regression fitted on the other folds (a seeded random
    partition into `folds` parts): no image's own score enters its prediction."""
    n = len(target)
    if folds < 2 or n - -(-n // folds) <= features.shape[1] + 1:
        raise ConfigError(f'--explain_folds {folds}: {n} test images cannot be cross-fitted in '
                          f'{folds} folds with {features.shape[1]} statistics; use 2 or more '
                          f'folds that leave each fit more images than coefficients')
    order = np.random.default_rng(seed).permutation(n)
    residual = np.empty(n)
    target = np.asarray(target, dtype=float)
    for f in range(folds):
        held = order[f::folds]
        fit = np.setdiff1d(order, held)
        residual[held] = target[held] - predict_linear(fit_linear(features[fit], target[fit]),
                                                       features[held])
    return residual


def explained_variance(target, residual):
    """1 - var(residual) / var(target): the share of the score's spread the fit accounts for."""
    return float(1 - np.var(residual) / np.var(target)) if np.var(target) > 0 else float('nan')


def stratified_auroc(gt_label, score, strata_by, n_strata=3):
    """Test AUROC within quantile strata of `strata_by` (e.g. tertiles of mean intensity):
    {'mean_AUROC': the unweighted mean over strata holding both classes, 'strata': [...]}.

    A score that ranks images only by the stratifying variable falls towards 0.5 within strata;
    one whose signal is independent of it keeps its AUROC.
    """
    gt_label = np.asarray(gt_label, dtype=int)
    score, strata_by = np.asarray(score, dtype=float), np.asarray(strata_by, dtype=float)
    edges = np.quantile(strata_by, np.linspace(0, 1, n_strata + 1))
    which = np.searchsorted(edges[1:-1], strata_by, side='right')
    strata = []
    for k in range(n_strata):
        inside = which == k
        y = gt_label[inside]
        both = 0 < y.sum() < len(y)
        strata.append({'low': float(edges[k]), 'high': float(edges[k + 1]),
                       'n_normal': int((y == 0).sum()), 'n_anomalous': int((y == 1).sum()),
                       'AUROC': float(roc_auc_score(y, score[inside])) if both else None})
    values = [r['AUROC'] for r in strata if r['AUROC'] is not None]
    return {'mean_AUROC': float(np.mean(values)) if values else None, 'strata': strata}


def explain_score(gt_label, score, stats_test, train=None, folds=5, seed=0, n_strata=3,
                  n_bootstrap=0):
    """How much of a detector's test score the global statistics explain.

    train: (statistics [M, 3], the same detector's scores) of training-folder images to fit the
    regression on; None cross-fits it on the test images in `folds` folds. Returns the score's
    AUROC, the residual's AUROC (with a bootstrap interval when n_bootstrap > 0), the explained
    variance, and the AUROC of the score within strata of mean intensity.
    """
    gt_label = np.asarray(gt_label, dtype=int)
    score = np.asarray(score, dtype=float)
    if train is not None:
        stats_train, score_train = train
        coef = fit_linear(stats_train, score_train)
        residual = score - predict_linear(coef, stats_test)
        out = {'fit': f'linear regression on {len(score_train)} training-folder images scored '
                      f'by the same detector',
               'coefficients': dict(zip(('intercept', *STATISTICS), map(float, coef))),
               'explained_variance_train': explained_variance(
                   score_train, score_train - predict_linear(coef, stats_train))}
    else:
        residual = crossfit_residuals(stats_test, score, folds, seed)
        out = {'fit': f'cross-fitted on the test images, {folds} folds (the training images\' '
                      f'scores were not available)'}
    out['explained_variance_test'] = explained_variance(score, residual)
    out['AUROC'] = float(roc_auc_score(gt_label, score))
    out['residual_AUROC'] = float(roc_auc_score(gt_label, residual))
    if n_bootstrap:
        low, high, _ = metrics.bootstrap_auroc(gt_label, residual, n_bootstrap, seed)
        out['residual_AUROC_ci95'] = [low, high]
    out['stratified'] = {'by': f'mean intensity, {n_strata} quantile strata of the test images',
                         **stratified_auroc(gt_label, score, stats_test[:, 0], n_strata)}
    out['stratified_residual'] = stratified_auroc(gt_label, residual, stats_test[:, 0],
                                                  n_strata)['mean_AUROC']
    return out, residual


def read_score_tables(files, column):
    """{absolute path: (score, gt_label or None)} from one or more score CSVs (a path, the score
    column and, in testAUC's, gt_label); the first file that lists an image gives its score."""
    table = {}
    for path in files:
        try:
            with open(path, newline='') as f:
                rows = list(csv.DictReader(f))
        except OSError as e:
            raise ConfigError(f'--explain {path}: cannot read it ({e.strerror})') from None
        if not rows or not {'path', column} <= set(rows[0]):
            raise ConfigError(f'--explain {path}: expected the columns path and {column} '
                              f'(--explain_column)')
        for r in rows:
            label = int(r['gt_label']) if r.get('gt_label') not in (None, '') else None
            table.setdefault(os.path.abspath(r['path']), (float(r[column]), label))
    return table


def explain_inputs(args, table, test_paths, labels, train_paths):
    """(test scores, training-folder indices with scores, their scores) from the --explain
    table; the test images must all be there, with their labels."""
    missing = [p for p in test_paths if os.path.abspath(p) not in table]
    if missing:
        raise ConfigError(f'--explain: {len(missing)} of the {len(test_paths)} test images are not '
                          f'scored there (e.g. {missing[0]}); pass the testAUC scores.csv of the '
                          f'same --image_dir')
    test = []
    for p, label in zip(test_paths, labels):
        value, row_label = table[os.path.abspath(p)]
        if row_label is not None and row_label != int(label):
            raise ConfigError(f'--explain: {p} is labelled {row_label} there and {label} here')
        test.append(value)
    have = [k for k, p in enumerate(train_paths) if os.path.abspath(p) in table]
    return (np.asarray(test), np.asarray(have, dtype=int),
            np.asarray([table[os.path.abspath(train_paths[k])][0] for k in have]))


def run_explain(args, table, paths, labels, stats_test, train_paths, stats_train):
    """The --explain analysis of the score in args.explain, as a JSON-ready dict."""
    score, have, train_score = explain_inputs(args, table, paths, labels, train_paths)
    use_train = (args.explain_fit == 'train'
                 or (args.explain_fit == 'auto' and len(have) >= args.explain_min_train))
    if use_train and len(have) <= len(STATISTICS) + 1:
        raise ConfigError(f'--explain_fit train: the CSV(s) score {len(have)} of the '
                          f'{len(train_paths)} training-folder images; pass a scores.csv of '
                          f'them (main.py --mode score --score_dir <image_dir>) or use crossfit')
    train = (stats_train[have], train_score) if use_train else None
    result, _ = explain_score(labels, score, stats_test, train, args.explain_folds, args.seed,
                              args.explain_strata, args.bootstrap)
    return {'scores_csv': list(args.explain), 'column': args.explain_column,
            'n_train_scored': int(len(have)), 'n_train_folders': len(train_paths), **result}


def print_explain(e):
    ci = e.get('residual_AUROC_ci95')
    print(f"\n--explain {' '.join(e['scores_csv'])} ({e['column']}): {e['fit']}")
    print(f"  test AUROC {e['AUROC']:.4f}; residual after the global statistics "
          f"{e['residual_AUROC']:.4f}" + (f' [{ci[0]:.3f}, {ci[1]:.3f}]' if ci else '')
          + f"; explained variance on test {e['explained_variance_test']:.3f}")
    strata = ', '.join('-' if r['AUROC'] is None else f"{r['AUROC']:.3f}"
                       for r in e['stratified']['strata'])
    mean = e['stratified']['mean_AUROC']
    print(f"  within {e['stratified']['by']}: {strata} (mean "
          + ('-' if mean is None else f'{mean:.4f}') + ')')
