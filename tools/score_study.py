"""The validation table of a trained run from labelled images (added).

For each checkpoint of a run it translates the labelled validation images (a folder with
normal/ and anomalous/, e.g. datasets/nih-cxr-mini/validation, plus the run's held-out mixed
images by their true labels) and the run's held-out healthy images, and scores them in several
ways from the same translations: the project's variants (mean, masked, top1pct, lung), a
residual referenced to healthy anatomy (ref_z: how far each pixel's |x - x_hat| exceeds the
held-out healthy images' at the same place, in their standard deviations), and the
disagreement of the snapshot-ensemble members' translations (DDAD's intra-discrepancy). For
every checkpoint alone and every ensemble of the last --ensemble checkpoints it prints the
validation AUROC with its 95% bootstrap interval, and for the last ensemble the AUROC of what
the global image statistics do not explain (cross-fitted, tools/explain.py). The test set is
never read: choices made with this table are made on validation data.

    python tools/score_study.py --model_save_dir nih_s0/models \
        --val_dir datasets/nih-cxr-mini/validation --ensemble 4
"""
import argparse
import csv
import json
import os
import sys

import numpy as np
import torch

if not __package__:  # run as python tools/x.py: the repository root on the path
    import _path  # noqa: F401

import data_loader  # noqa: E402
from healthygan import cli  # noqa: E402
import metrics  # noqa: E402
from healthygan.errors import ConfigError, DataError  # noqa: E402
from healthygan.training.checkpoint_sets import available_iters  # noqa: E402
from solver import Solver  # noqa: E402
from tools.explain import explain_score  # noqa: E402
from tools.image_statistics import STATISTICS, global_statistics  # noqa: E402

RUN_FLAGS = ('dataset', 'image_dir', 'image_size', 'g_conv_dim', 'd_conv_dim', 'g_repeat_num',
             'd_repeat_num', 'holdout_fraction', 'holdout_labels', 'holdout_stratify', 'seed',
             'list_dir')
TABLE_SCORES = ('mean', 'masked', 'lung', 'ref_z', 'ref_z_lung', 'disagreement')


def run_config(model_save_dir):
    """The project's config of a trained run: its saved data and architecture flags."""
    path = os.path.join(model_save_dir, 'run_config.json')
    if not os.path.exists(path):
        raise ConfigError(f'{path} not found: --model_save_dir must be a trained run\'s folder')
    with open(path) as f:
        saved = json.load(f)['config']
    argv = ['--mode', 'testAUC', '--model_save_dir', model_save_dir, '--device', 'cpu',
            '--use_tensorboard', 'false', '--num_workers', '0']
    for name in RUN_FLAGS:
        if saved.get(name) is not None:
            argv += [f'--{name}', str(saved[name])]
    return cli.parse(argv)[1]


def image_sets(config, val_dir):
    """{'reference': healthy hold-out paths, 'validation': (paths, labels)}."""
    split = data_loader.resolve_split(config, 'train')
    if not split.get('holdout_healthy') or not split.get('holdout_mixed'):
        raise ConfigError('the run was trained without a hold-out (--holdout_fraction 0): the '
                          'healthy reference needs held-out healthy images')
    truth = data_loader.read_truth_labels(config.holdout_labels, split['holdout_mixed'],
                                          os.path.join(config.image_dir, 'mixed'))
    normal = data_loader.list_images(os.path.join(val_dir, 'normal'))
    anomalous = data_loader.list_images(os.path.join(val_dir, 'anomalous'))
    paths = normal + anomalous + split['holdout_mixed']
    labels = [0] * len(normal) + [1] * len(anomalous) + list(truth)
    return split['holdout_healthy'], (paths, labels)


def translate_all(solver, paths, states):
    """Per member state [M, N, H, W] (float16): the anomaly maps |x - x_hat| / 2, the signed
    residuals (x - x_hat) / 2 (channel means) and G's masks; and the images' global statistics
    [N, 3]."""
    loader = data_loader.folder_loader(solver.config, paths, [0] * len(paths))
    out = [[[] for _ in states] for _ in range(3)]
    stats = []
    with torch.no_grad():
        for batch in loader:
            x = batch[0]
            stats.append(global_statistics(x))
            for m, state in enumerate(states):
                solver.G.load_state_dict(state)
                x_hat, _, mask = solver.translate(x)
                for k, a in enumerate((metrics.anomaly_map(x, x_hat)[:, 0],
                                       (x - x_hat).mean(dim=1) / 2, mask[:, 0].float())):
                    out[k][m].append(a.numpy().astype(np.float16))
    maps, residuals, masks = (np.stack([np.concatenate(a) for a in o]) for o in out)
    return maps, residuals, masks, np.concatenate(stats)


def region_mean(values, region):
    """Mean of [N, H, W] values over a boolean region [H, W] (None: every pixel)."""
    return values.mean(axis=(1, 2)) if region is None else values[:, region].mean(axis=1)


def healthy_z(maps, ref_maps):
    """Each pixel's excess over the healthy reference, in its standard deviations: (a - mu) /
    (sd + median sd), mu and sd per pixel over the reference maps (metrics.healthy_pixel_reference,
    as --score_variant ref_z computes it)."""
    mu, scale = metrics.healthy_pixel_reference(torch.from_numpy(np.asarray(ref_maps)))
    return ((maps - mu.numpy()) / scale.numpy()).astype(np.float32)


def study_scores(maps, residuals, masks, ref_maps, lung):
    """{name: score [N]} of the ensemble of the given members: anomaly maps, signed residuals
    and masks [M, N, H, W] of the scored images, the healthy reference's anomaly maps
    [M, N_ref, H, W], the lung prior [H, W] or None."""
    a = maps.astype(np.float32).mean(axis=0)
    r = residuals.astype(np.float32)
    z = np.maximum(healthy_z(a, ref_maps.astype(np.float32).mean(axis=0)), 0)
    out = {'mean': a.mean(axis=(1, 2)),
           'masked': (masks.astype(np.float32).mean(axis=0) * a).mean(axis=(1, 2)),
           'top1pct': np.sort(a.reshape(len(a), -1), axis=1)[:, -max(1, a[0].size // 100):]
           .mean(axis=1),
           'ref_z': z.mean(axis=(1, 2)),
           # brighter than the translation: an opacity that G removed
           'positive': np.maximum(r, 0).mean(axis=0).mean(axis=(1, 2))}
    if lung is not None:
        out['lung'] = region_mean(a, lung)
        out['ref_z_lung'] = region_mean(z, lung)
    if r.shape[0] > 1:  # how much the members' translations differ
        out['disagreement'] = r.std(axis=0).mean(axis=(1, 2))
    return out


def best_statistic(labels, stats):
    """(name, values, AUROC) of the global statistic that separates these images best, each
    turned the way that separates (generous to the statistic: its direction is read off the
    labels it is compared on)."""
    best = None
    for j, name in enumerate(STATISTICS):
        values = stats[:, j]
        auroc = metrics.image_metrics(labels, values)['image_AUROC']
        if auroc < 0.5:
            values, auroc = -values, 1 - auroc
        if best is None or auroc > best[2]:
            best = (name, values, auroc)
    return best


def auroc_cell(labels, score, n_bootstrap):
    m = metrics.image_metrics(labels, score, n_bootstrap=n_bootstrap)
    return {'AUROC': m['image_AUROC'], 'ci95': m.get('image_AUROC_ci95')}


def validation_table(model_save_dir, val_dir, ensemble, n_bootstrap=1000, iters=None):
    """The table as a dict (see the module's docstring)."""
    config = run_config(model_save_dir)
    config.batch_size = 16
    members = iters or available_iters(model_save_dir)
    if not members:
        raise ConfigError(f'no checkpoints in {model_save_dir}')
    reference, (paths, labels) = image_sets(config, val_dir)
    solver = Solver(config)
    states = []
    for i in members:
        solver.restore_model(i, load_D=False)
        states.append({k: v.clone() for k, v in solver.G.state_dict().items()})
    ref_maps = translate_all(solver, reference, states)[0]
    val_maps, val_r, val_m, stats = translate_all(solver, paths, states)
    prior = solver.lung.read()
    lung = None if prior is None else prior[0, 0].numpy().astype(bool)
    labels = np.asarray(labels)
    rows = []
    for k, i in enumerate(members):
        row = {'iter': int(i), 'single': {}, 'ensemble': {}}
        for kind, first in (('single', k), ('ensemble', k - ensemble + 1)):
            if first < 0 or (kind == 'ensemble' and ensemble == 1):
                continue
            pick = slice(first, k + 1)
            scores = study_scores(val_maps[pick], val_r[pick], val_m[pick], ref_maps[pick], lung)
            row[kind] = {v: auroc_cell(labels, s, n_bootstrap) for v, s in scores.items()}
        rows.append(row)
    last = slice(len(members) - ensemble, len(members)) if len(members) >= ensemble else \
        slice(0, len(members))
    scores = study_scores(val_maps[last], val_r[last], val_m[last], ref_maps[last], lung)
    stat_name, stat_values, stat_auroc = best_statistic(labels, stats)
    residual = {}
    for v, s in scores.items():
        e, _ = explain_score(labels, s, stats, folds=5, n_bootstrap=n_bootstrap)
        residual[v] = {'residual_AUROC': e['residual_AUROC'],
                       'residual_ci95': e['residual_AUROC_ci95'],
                       'within_intensity_tertiles': e['stratified']['mean_AUROC'],
                       'lead_over_mean': metrics.paired_auroc_difference(
                           labels, s, scores['mean'], max(n_bootstrap, 1)),
                       'lead_over_best_statistic': metrics.paired_auroc_difference(
                           labels, s, stat_values, max(n_bootstrap, 1))}
    statistics = {name: metrics.image_metrics(labels, stats[:, j])['image_AUROC']
                  for j, name in enumerate(STATISTICS)}
    return {'model_save_dir': model_save_dir, 'val_dir': val_dir,
            'n_normal': int((labels == 0).sum()), 'n_anomalous': int(labels.sum()),
            'n_reference': len(reference), 'ensemble': ensemble, 'checkpoints': rows,
            'last_ensemble': [int(i) for i in members[last]], 'residual': residual,
            'global_statistics_AUROC': statistics,
            'best_statistic': {'name': stat_name, 'AUROC': stat_auroc},
            'per_image': {'path': list(paths), 'gt_label': labels.tolist(),
                          **{v: s.tolist() for v, s in scores.items()}},
            'scores': {'ref_z': metrics.SCORE_VARIANTS['ref_z']}}


def cell(c):
    if not c:
        return '-'
    ci = c['ci95']
    return f"{c['AUROC']:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{c['AUROC']:.3f}"


def print_table(t):
    print(f"Validation AUROC [95% interval], {t['val_dir']} + the held-out mixed images: "
          f"{t['n_normal']} normal, {t['n_anomalous']} anomalous; healthy reference: "
          f"{t['n_reference']} held-out healthy images")
    names = [v for v in TABLE_SCORES if any(v in r['single'] or v in r['ensemble']
                                            for r in t['checkpoints'])]
    for kind in ('single', 'ensemble'):
        if not any(r[kind] for r in t['checkpoints']):
            continue
        title = 'checkpoint alone' if kind == 'single' else \
            f"ensemble of the last {t['ensemble']} up to it"
        print(f'\n{title}:\n' + 'iter'.rjust(6) + ''.join(f'{v:>22s}' for v in names))
        for r in t['checkpoints']:
            if r[kind]:
                print(f"{r['iter']:6d}" + ''.join(f'{cell(r[kind].get(v)):>22s}' for v in names))
    print(f"\nWhat the global statistics do not explain (ensemble {t['last_ensemble']}, "
          f"residual AUROC [95%], mean AUROC within tertiles of mean intensity, paired lead):")
    for v, r in t['residual'].items():
        lo, hi = r['residual_ci95']
        d, dlo, dhi = r['lead_over_mean'][:3]
        print(f"  {v:14s} {r['residual_AUROC']:.3f} [{lo:.2f}, {hi:.2f}]  "
              f"{r['within_intensity_tertiles']:.3f}  AUROC minus mean's {d:+.3f} "
              f"[{dlo:+.3f}, {dhi:+.3f}]")
    print('Global statistics alone: ' + ', '.join(
        f'{k} {v:.3f}' for k, v in t['global_statistics_AUROC'].items()))
    best = t['best_statistic']
    print(f"Lead over the best of them ({best['name']}, turned to separate: {best['AUROC']:.3f}), "
          "paired [95%]:")
    for v, r in t['residual'].items():
        d, dlo, dhi = r['lead_over_best_statistic'][:3]
        print(f"  {v:14s} {d:+.3f} [{dlo:+.3f}, {dhi:+.3f}]")


def main_(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model_save_dir', required=True)
    p.add_argument('--val_dir', required=True, help='folder with normal/ and anomalous/')
    p.add_argument('--ensemble', type=int, default=4)
    p.add_argument('--iters', default=None, help='comma-separated checkpoints (default: all)')
    p.add_argument('--bootstrap', type=int, default=1000)
    p.add_argument('--out', default=None, help='JSON file (default: '
                                               '<model_save_dir>/validation_images.json)')
    args = p.parse_args(argv)
    try:
        iters = [int(i) for i in args.iters.split(',')] if args.iters else None
        t = validation_table(args.model_save_dir, args.val_dir, args.ensemble, args.bootstrap,
                             iters)
    except (ConfigError, DataError) as e:
        sys.exit(f'error: {e}')
    print_table(t)
    out = args.out or os.path.join(args.model_save_dir, 'validation_images.json')
    write_scores(os.path.splitext(out)[0] + '_scores.csv', t.pop('per_image'))
    with open(out, 'w') as f:
        json.dump(t, f, indent=1)
    print(f'Saved {out} and its per-image scores (the last ensemble) beside it')


def write_scores(path, columns):
    """The last ensemble's per-image scores as CSV: path, gt_label, one column per score."""
    names = list(columns)
    with open(path, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(names)
        w.writerows(zip(*(columns[n] for n in names)))


if __name__ == '__main__':
    main_()
