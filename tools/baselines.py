"""Reference anomaly detectors scored on the same test images as HealthyGAN (added).

    python tools/baselines.py --dataset Folder --image_dir datasets/nih-cxr-mini \
        --image_size 64 --result_dir baselines64 --methods mean_intensity,pca,knn

Methods (each gives one pred_score per test image; higher = more anomalous):
- mean_intensity: minus the image's mean pixel value (darker = more anomalous, fixed a priori);
- global_mean, global_contrast, global_sharpness: one global image statistic each (mean pixel
  value; its standard deviation; the mean gradient magnitude), with the sign that ranks the
  unannotated mixed/ images above the healthy/ ones (AUCp on every image of the two training
  folders: label-free, never the test set);
- pca: squared reconstruction error per pixel from the first --pca_components principal
  components of the fit set;
- knn: mean Euclidean distance, in pixel space, to the --knn_k nearest fit-set images;
- autoencoder: the generator backbone of HealthyGAN (model.Generator) trained as a plain
  reconstruction autoencoder, the normal-only setting most of the literature uses; scored like
  HealthyGAN, mean |x - x_hat| / 2.
Images are read exactly as `main.py --mode testAUC` reads them (data_loader's top-8% crop, square,
resize, [-1, 1]). pca, knn and autoencoder are fitted on the healthy set only unless
--fit_on healthy+mixed. Nothing is tuned on the test set: every setting is a flag whose default
was fixed beforehand. Writes <result_dir>/baselines.json (image_AUROC with a seeded 95% bootstrap
CI, AUPRC, fit set, parameters, time per method) and <result_dir>/baselines_scores.csv.

--explain SCORES.csv asks how much of another detector's per-image score (e.g. HealthyGAN's
testAUC scores.csv) the global statistics explain: tools/explain.py.
"""
import argparse
import csv
import json
import os
import shlex
import sys
import time

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

if not __package__:  # run as python tools/x.py: the repository root on the path
    import _path  # noqa: F401

import data_loader  # noqa: E402
from healthygan import cli  # noqa: E402
import metrics  # noqa: E402
from data_loader import DataError  # noqa: E402
from model import Generator, count_parameters  # noqa: E402
from healthygan.device import resolve_device  # noqa: E402
from healthygan.errors import ConfigError  # noqa: E402
from healthygan.training.checkpoints import load_state_dict_checked, save_atomic  # noqa: E402
from tools.explain import print_explain, read_score_tables, run_explain  # noqa: E402
# The analysis's parts, as tests and scripts reach them through this module.
from tools.explain import crossfit_residuals, explain_score, stratified_auroc  # noqa: E402,F401
from tools.image_statistics import STATISTICS, folder_statistics, global_statistics  # noqa: E402
GLOBAL_METHODS = {'global_mean': 'mean_intensity', 'global_contrast': 'contrast',
                  'global_sharpness': 'sharpness'}
METHODS = ('mean_intensity', 'pca', 'knn', 'autoencoder', *GLOBAL_METHODS)
FIT_SETS = {'healthy': ('healthy',), 'healthy+mixed': ('healthy', 'mixed')}


def method_list(v):
    """Comma-separated subset of METHODS, in the order given."""
    names = [m.strip() for m in v.split(',') if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f'unknown method(s) {", ".join(unknown) or "(none)"}; '
                                         f'choose from {",".join(METHODS)}')
    return list(dict.fromkeys(names))


def non_negative_int(v):
    n = int(v)
    if n < 0:
        raise argparse.ArgumentTypeError(f'expected an integer >= 0, got {v}')
    return n


def build_parser():
    """Flags; the data flags mean what they mean in main.py."""
    p = argparse.ArgumentParser(description='Reference anomaly detectors on the HealthyGAN test '
                                            'set (added).')
    g = p.add_argument_group('Data (as main.py)')
    for name in ('--dataset', '--image_dir', '--list_dir', '--image_size'):
        cli.add_shared_flag(g, name)
    g.add_argument('--result_dir', type=str, required=True,
                   help='where baselines.json, baselines_scores.csv and the autoencoder go')

    g = p.add_argument_group('Methods')
    g.add_argument('--methods', type=method_list, default=list(METHODS),
                   help=f'comma-separated subset of {",".join(METHODS)} (default: all)')
    g.add_argument('--fit_on', type=str, default='healthy', choices=list(FIT_SETS),
                   help='training images of pca, knn and autoencoder (the mixed set is '
                        'unannotated; healthy is the normal-only setting)')
    g.add_argument('--pca_components', type=cli.positive_int, default=32)
    g.add_argument('--knn_k', type=cli.positive_int, default=5)

    g = p.add_argument_group('Autoencoder (HealthyGAN\'s generator backbone, L1 reconstruction)')
    g.add_argument('--ae_iters', type=cli.positive_int, default=10000, help='training iterations')
    g.add_argument('--ae_g_conv_dim', type=cli.positive_int, default=64,
                   help='as --g_conv_dim of main.py')
    g.add_argument('--ae_g_repeat_num', type=non_negative_int, default=6,
                   help='as --g_repeat_num of main.py')
    g.add_argument('--ae_batch_size', type=cli.positive_int, default=16)
    g.add_argument('--ae_lr', type=float, default=0.0001,
                   help='Adam learning rate (betas --beta1, --beta2), as --g_lr of main.py')
    cli.add_shared_flag(g, '--beta1')
    cli.add_shared_flag(g, '--beta2')
    g.add_argument('--ae_flip', type=cli.str2bool, default=True,
                   help='random horizontal flips, drawn per item as in HealthyGAN training')
    g.add_argument('--ae_checkpoint', type=str, default=None,
                   help='score this saved autoencoder G (a <iters>-G.ckpt written by this tool) '
                        'instead of training one')
    g.add_argument('--ae_log_step', type=cli.positive_int, default=50)

    g = p.add_argument_group('Comparison')
    g.add_argument('--compare', type=str, default=None,
                   help="a testAUC scores.csv (HealthyGAN's pred_score) of the same test images: "
                        'also report AUROC(HealthyGAN) - AUROC(method) for every method, with a '
                        'paired bootstrap interval')
    g.add_argument('--explain', type=str, nargs='+', default=None, metavar='CSV',
                   help='per-image scores of a detector (a testAUC scores.csv; optionally also a '
                        'score-mode scores.csv of the training folders): report how much of the '
                        'score the global statistics explain (residual and intensity-stratified '
                        'test AUROC)')
    g.add_argument('--explain_column', type=str, default='pred_score',
                   help='the score column of the --explain CSV(s) (e.g. score_mean, or a method '
                        'of a baselines_scores.csv)')
    g.add_argument('--explain_fit', type=str, default='auto', choices=['auto', 'train', 'crossfit'],
                   help='fit the regression on the training-folder images the CSV(s) score '
                        '(train), cross-fit it on the test images (crossfit), or train when the '
                        'CSV(s) score at least --explain_min_train of them (auto)')
    g.add_argument('--explain_min_train', type=cli.positive_int, default=20)
    g.add_argument('--explain_folds', type=cli.positive_int, default=5,
                   help='folds of the cross-fit on the test images')
    g.add_argument('--explain_strata', type=cli.positive_int, default=3,
                   help='quantile strata of mean intensity (3: tertiles)')

    g = p.add_argument_group('Miscellaneous')
    g.add_argument('--seed', type=int, default=0,
                   help='seeds PCA, the autoencoder (weights, data order, flips) and the '
                        'bootstrap')
    g.add_argument('--bootstrap', type=non_negative_int, default=1000,
                   help='bootstrap resamples of the test set for the AUROC CI (0: no CI)')
    cli.add_shared_flag(g, '--holdout_fraction',
                        help="leave out of the fit the images main.py's --holdout_fraction holds "
                             "out of training (0: fit on the whole set)")
    cli.add_shared_flag(g, '--holdout_stratify',
                        help="as main.py's: hold out that fraction of each label of "
                             '--holdout_labels among the mixed images')
    cli.add_shared_flag(g, '--holdout_labels',
                        help="the mixed images' true labels (mixed_truth.csv), for "
                             '--holdout_stratify')
    cli.add_shared_flag(g, '--device',
                        help='for the autoencoder; auto picks cuda, then mps, then cpu')
    return p


def project_config(args):
    """The full main.py config for these data flags, so that data_loader reads as testAUC does."""
    config = cli.build_parser().parse_args([
        '--dataset', args.dataset, '--image_dir', args.image_dir, '--list_dir', args.list_dir,
        '--image_size', str(args.image_size), '--mode', 'testAUC', '--num_workers', '0',
        '--batch_size', str(args.ae_batch_size), '--seed', str(args.seed),
        '--result_dir', args.result_dir])
    # By default the baselines fit on the whole healthy set: they select no checkpoint, so they
    # need no held-out images. --holdout_fraction as in the HealthyGAN run fits them on exactly
    # the images that run trained on, for a side-by-side comparison on the same data.
    config.holdout_fraction = args.holdout_fraction
    config.holdout_stratify, config.holdout_labels = args.holdout_stratify, args.holdout_labels
    # Every image is read once here, so the uint8 cache gains nothing; without it nothing is
    # written beside the data. Both paths give the same floats (data_loader).
    config.data_cache = 'off'
    return config


# ------------------------------------------------------------------------------------------------ #
#                                             Data                                                 #
# ------------------------------------------------------------------------------------------------ #

def stack_dataset(dataset):
    """All images of a LabelledDataset as one [N, 3, H, W] tensor, read by its own __getitem__."""
    return torch.stack([dataset[k][0] for k in range(len(dataset))])


def load_sets(config, split, fit_on):
    """(x_fit, x_test, test paths, test labels) with the project's preprocessing."""
    # The test set in testAUC's own order, paths and labels, from the loader main.py uses.
    test = data_loader.get_loader(config, 'testAUC', split).dataset
    transform = data_loader.build_transform(config.image_size)
    fit_paths = [p for name in FIT_SETS[fit_on] for p in split[name]]
    data_loader.check_files_exist(fit_paths, fit_on)
    # No flips here: the fit images are read as the test images are (flips only in AE training).
    fit = data_loader.LabelledDataset(fit_paths, [0] * len(fit_paths), transform)
    return stack_dataset(fit), stack_dataset(test), test.paths, test.labels


def training_folders(split):
    """(paths, pseudo-labels) of every image of the two training folders: healthy 0, mixed 1,
    held-out images included (the pseudo-labels are AUCp's and need no disease label)."""
    healthy = split['healthy'] + split.get('holdout_healthy', [])
    mixed = split['mixed'] + split.get('holdout_mixed', [])
    return healthy + mixed, np.array([0] * len(healthy) + [1] * len(mixed))


def flat(x):
    """[N, 3, H, W] tensor -> [N, 3*H*W] float64 numpy array (pixel-space feature vectors)."""
    return x.flatten(1).to(torch.float64).numpy()


# ------------------------------------------------------------------------------------------------ #
#                                          Scorers                                                 #
# ------------------------------------------------------------------------------------------------ #

def mean_intensity_scores(x):
    """Minus the mean pixel value: darker = more anomalous (direction chosen a priori)."""
    return -x.flatten(1).to(torch.float64).mean(dim=1).numpy()


def choose_direction(pseudo_label, values):
    """(sign, AUCp of +values): +1 when higher values rank the mixed images (1) above the
    healthy ones (0), else -1. Only the training folders decide, never a test label."""
    a = metrics.aucp(pseudo_label, values)
    return (1 if a >= 0.5 else -1), a


def pca_scores(train, test, n_components, seed=0):
    """Mean squared error per pixel of each test row's reconstruction from the training PCA."""
    limit = min(train.shape)
    if n_components > limit:
        raise ConfigError(f'--pca_components {n_components}: the fit set allows at most {limit} '
                          f'({train.shape[0]} images of {train.shape[1]} values); use fewer')
    pca = PCA(n_components=n_components, svd_solver='full', random_state=seed).fit(train)
    recon = pca.inverse_transform(pca.transform(test))
    return ((test - recon) ** 2).mean(axis=1)


def knn_scores(train, test, k):
    """Mean Euclidean distance from each test row to its k nearest training rows."""
    if k > len(train):
        raise ConfigError(f'--knn_k {k}: the fit set has only {len(train)} images; use fewer')
    dist, _ = NearestNeighbors(n_neighbors=k).fit(train).kneighbors(test)
    return dist.mean(axis=1)


def flip_draws(seed, indices):
    """Per-item horizontal flips drawn from (seed, stream index), as PairDataset draws them."""
    return torch.tensor([bool(np.random.default_rng([seed, int(i)]).random() < 0.5)
                         for i in indices])


def train_autoencoder(x_train, args, device):
    """HealthyGAN's Generator trained with L1 reconstruction on x_train; returns (G, loss log).

    The loss is the identity term of HealthyGAN's healthy path, mean |x - tanh(image logits)|,
    alone: no critic, no mask. Images come in seeded per-epoch permutations (data_loader's
    EpochSampler) read as one stream, so a batch may span two epochs.
    """
    torch.manual_seed(args.seed)
    G = Generator(args.ae_g_conv_dim, 0, args.ae_g_repeat_num).to(device)
    optimizer = torch.optim.Adam(G.parameters(), args.ae_lr, (args.beta1, args.beta2))
    sampler = data_loader.EpochSampler(len(x_train), args.seed)
    n = len(x_train)
    stream, epoch, log = [], 0, []
    G.train()
    start = time.time()
    for i in range(args.ae_iters):
        while len(stream) < args.ae_batch_size:
            stream += [epoch * n + k for k in sampler.order(epoch)]
            epoch += 1
        batch, stream = stream[:args.ae_batch_size], stream[args.ae_batch_size:]
        x = x_train[[b % n for b in batch]]
        if args.ae_flip:
            flip = flip_draws(args.seed, batch)
            x[flip] = x[flip].flip(-1)
        x = x.to(device)
        # The mask logit (channel 3) is ignored: a plain autoencoder has no mask.
        image_logits, _ = G(x)
        loss = (x - torch.tanh(image_logits)).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (i + 1) % args.ae_log_step == 0 or i + 1 == args.ae_iters:
            value = loss.item()
            if not np.isfinite(value):
                raise ConfigError(f'autoencoder loss is {value} at iteration {i + 1}; try a lower '
                                  f'--ae_lr')
            log.append({'iter': i + 1, 'time': round(time.time() - start, 2), 'loss': value})
            print(f'  autoencoder iteration {i + 1}/{args.ae_iters}: L1 {value:.4f} '
                  f'({time.time() - start:.0f} s)', flush=True)
    return G, log


@torch.no_grad()
def autoencoder_scores(G, x, batch_size, device):
    """mean |x - x_hat| / 2 per image (metrics.anomaly_score), x_hat = tanh(image logits).

    As Solver.translate, G stays in training mode: InstanceNorm uses each image's own statistics.
    """
    G.train()
    scores = []
    for k in range(0, len(x), batch_size):
        xb = x[k:k + batch_size].to(device)
        image_logits, _ = G(xb)  # the mask logit is ignored
        scores.append(metrics.to_numpy(metrics.anomaly_score(xb, torch.tanh(image_logits))))
    return np.concatenate(scores)


# ------------------------------------------------------------------------------------------------ #
#                                          Evaluation                                              #
# ------------------------------------------------------------------------------------------------ #

def evaluate(gt_label, pred_score, n_bootstrap, seed):
    """metrics.image_metrics, as HealthyGAN's testAUC computes it: image_AUROC, its stratified
    percentile bootstrap CI (the same resamples for every method), image_AUPRC, and sensitivity
    / specificity at the original's test-optimal threshold."""
    try:
        return metrics.image_metrics(gt_label, pred_score, n_bootstrap=n_bootstrap, seed=seed)
    except ValueError as e:  # one class only, or non-finite scores
        raise ConfigError(str(e)) from None


def read_compare_scores(path, paths, labels):
    """The pred_score column of a testAUC scores.csv, in the order of `paths` (the test images
    of this run; matched by their absolute path), checked against their labels."""
    try:
        with open(path, newline='') as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ConfigError(f'--compare {path}: cannot read it ({e.strerror}); pass the scores.csv '
                          f'that main.py --mode testAUC wrote') from None
    if not rows or not {'path', 'gt_label', 'pred_score'} <= set(rows[0]):
        raise ConfigError(f'--compare {path}: expected the columns path, gt_label and pred_score '
                          f'of a testAUC scores.csv')
    by_path = {os.path.abspath(r['path']): r for r in rows}
    missing = [p for p in paths if os.path.abspath(p) not in by_path]
    if missing:
        raise ConfigError(f'--compare {path}: {len(missing)} of the {len(paths)} test images are '
                          f'not in it (e.g. {missing[0]}); score the same --image_dir with testAUC')
    out = []
    for p, label in zip(paths, labels):
        row = by_path[os.path.abspath(p)]
        if int(row['gt_label']) != int(label):
            raise ConfigError(f'--compare {path}: {p} is labelled {row["gt_label"]} there and '
                              f'{label} here')
        out.append(float(row['pred_score']))
    return np.asarray(out)


def compare(labels, reference, scores, n_bootstrap, seed):
    """{method: {AUROC difference, paired 95% interval}} of `reference` against each method."""
    out = {}
    for name, s in scores.items():
        d, low, high = metrics.paired_auroc_difference(labels, reference, s,
                                                       max(n_bootstrap, 1), seed)
        out[name] = {'AUROC_difference': d, 'ci95': [low, high] if n_bootstrap else None}
    return out


def print_table(results):
    """One line per method."""
    print(f'\n{"method":<18}{"AUROC":>7}  {"95% CI":<15}{"AUPRC":>7}  {"fit on":<35}{"time":>8}')
    for name, r in results.items():
        ci = r.get('image_AUROC_ci95')
        ci = f'[{ci[0]:.3f}, {ci[1]:.3f}]' if ci else '-'
        print(f'{name:<18}{r["image_AUROC"]:>7.4f}  {ci:<15}{r["image_AUPRC"]:>7.4f}  '
              f'{r["fit_set"]:<35}{r["time_s"]:>7.1f}s')


def score_global(name, pseudo, stats_train, stats_test):
    """(scores, fit set, info) of a global_* method: its statistic, signed by the training
    folders' AUCp."""
    column = STATISTICS.index(GLOBAL_METHODS[name])
    sign, a = choose_direction(pseudo, stats_train[:, column])
    fit_set = f'direction: healthy {int((pseudo == 0).sum())} vs mixed {int(pseudo.sum())}'
    info = {'parameters': {'direction': 'higher' if sign > 0 else 'lower',
                           'AUCp_higher': a, 'AUCp_lower': 1 - a},
            'score': f'{"+" if sign > 0 else "-"}{GLOBAL_METHODS[name]} '
                     f'({"higher" if sign > 0 else "lower"} = more anomalous: the '
                     f'direction with AUCp >= 0.5 on the training folders)'}
    return sign * stats_test[:, column], fit_set, info


def score_autoencoder(args, x_fit, x_test):
    """(scores, info) of the autoencoder: trained on x_fit and saved, or --ae_checkpoint's."""
    start = time.time()
    device = resolve_device(args.device)
    params = {'g_conv_dim': args.ae_g_conv_dim, 'g_repeat_num': args.ae_g_repeat_num,
              'iters': args.ae_iters, 'batch_size': args.ae_batch_size,
              'lr': args.ae_lr, 'betas': [args.beta1, args.beta2],
              'flip': args.ae_flip, 'loss': 'L1 on tanh(image logits); mask ignored'}
    if args.ae_checkpoint:
        G = Generator(args.ae_g_conv_dim, 0, args.ae_g_repeat_num).to(device)
        load_state_dict_checked(G, args.ae_checkpoint, 'Generator')
        checkpoint, log = args.ae_checkpoint, None
        params['trained'] = 'loaded from --ae_checkpoint, not trained in this run'
    else:
        print(f'Training the autoencoder on {len(x_fit)} {args.fit_on} images, '
              f'device {device}...')
        G, log = train_autoencoder(x_fit, args, device)
        print(f'  {count_parameters(G):,} parameters, {time.time() - start:.0f} s')
        ae_dir = os.path.join(args.result_dir, 'autoencoder')
        os.makedirs(ae_dir, exist_ok=True)
        # The project's checkpoint format (a bare G state dict), written before scoring:
        # scoring in train() mode moves InstanceNorm's (unused) running statistics.
        checkpoint = os.path.join(ae_dir, f'{args.ae_iters}-G.ckpt')
        save_atomic(G.state_dict(), checkpoint)
    scores = autoencoder_scores(G, x_test, args.ae_batch_size, device)
    info = {'parameters': params, 'checkpoint': checkpoint, 'train_log': log,
            'score': 'mean |x - x_hat| / 2, x_hat = tanh(image logits), G in train() '
                     'mode (as Solver.translate)'}
    return scores, info


def score_method(name, args, data):
    """(test scores, fit set, info) of one method. data: x_fit, x_test, and for the global_*
    methods the training folders' pseudo-labels and statistics and the test statistics."""
    x_fit, x_test = data['x_fit'], data['x_test']
    fit_set = f'{args.fit_on} ({len(x_fit)})'
    if name == 'mean_intensity':
        return (mean_intensity_scores(x_test), 'none',
                {'parameters': {}, 'score': '-mean pixel value (darker = more anomalous)'})
    if name in GLOBAL_METHODS:
        return score_global(name, data['pseudo'], data['stats_train'], data['stats_test'])
    if name == 'pca':
        return (pca_scores(flat(x_fit), flat(x_test), args.pca_components, args.seed), fit_set,
                {'parameters': {'n_components': args.pca_components},
                 'score': 'mean squared reconstruction error per pixel'})
    if name == 'knn':
        return (knn_scores(flat(x_fit), flat(x_test), args.knn_k), fit_set,
                {'parameters': {'k': args.knn_k},
                 'score': 'mean Euclidean distance to the k nearest fit images (pixels)'})
    scores, info = score_autoencoder(args, x_fit, x_test)
    return scores, fit_set, info


def make_result_dir(args):
    """Check the flags the data do not decide, and create --result_dir."""
    if 'autoencoder' in args.methods and args.image_size % 4 != 0:
        raise ConfigError(f'--image_size {args.image_size}: the generator downsamples twice, so '
                          f'the autoencoder needs a multiple of 4')
    try:
        os.makedirs(args.result_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f'--result_dir {args.result_dir} cannot be created ({e.strerror}); '
                          f'choose another folder') from None


def load_data(args, config, split):
    """{x_fit, x_test, paths, labels}: the fit and test sets as testAUC reads them."""
    t0 = time.time()
    x_fit, x_test, paths, labels = load_sets(config, split, args.fit_on)
    print(f'Loaded {len(x_fit)} fit images ({args.fit_on}) and {len(x_test)} test images at '
          f'{args.image_size} px in {time.time() - t0:.1f} s')
    return {'x_fit': x_fit, 'x_test': x_test, 'paths': paths, 'labels': labels}


def statistics_of(args, split, x_test):
    """{stats_test, and, when a global_* method or --explain needs them, train_paths, pseudo
    (healthy 0, mixed 1) and stats_train of the training folders}."""
    out = {'stats_test': global_statistics(x_test)}
    if args.explain or any(m in GLOBAL_METHODS for m in args.methods):
        t0 = time.time()
        out['train_paths'], out['pseudo'] = training_folders(split)
        out['stats_train'] = folder_statistics(out['train_paths'], args.image_size)
        print(f'Global statistics of the {len(out["train_paths"])} training-folder images in '
              f'{time.time() - t0:.1f} s')
    return out


def summarize(args, command, data, results):
    """The baselines.json dict, without the compare and explain parts."""
    labels = data['labels']
    return {
        'methods': results,
        'dataset': args.dataset, 'image_dir': args.image_dir, 'image_size': args.image_size,
        'n_normal': int(labels.count(0)), 'n_anomalous': int(labels.count(1)),
        'fit_on': args.fit_on, 'n_fit': len(data['x_fit']), 'seed': args.seed,
        'bootstrap': {'resamples': args.bootstrap, 'level': 0.95,
                      'kind': 'stratified percentile (metrics.bootstrap_auroc); the same '
                              'resamples for every method'},
        'higher_score': 'more anomalous',
        'command': command,
    }


def write_outputs(args, summary, data, scores):
    """baselines.json and baselines_scores.csv into --result_dir."""
    with open(os.path.join(args.result_dir, 'baselines.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(args.result_dir, 'baselines_scores.csv'), 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['path', 'gt_label', *args.methods])
        for k, (path, label) in enumerate(zip(data['paths'], data['labels'])):
            w.writerow([path, label, *(f'{scores[m][k]:.10g}' for m in args.methods)])


def print_compare(path, c):
    print(f"\n{path}: AUROC {c['AUROC']:.4f}; difference to each method "
          f"(paired 95% interval):")
    for name, r in c['methods'].items():
        ci = r['ci95']
        print(f"  - {name:<15}{r['AUROC_difference']:+.4f}"
              + (f'  [{ci[0]:+.3f}, {ci[1]:+.3f}]' if ci else ''))


def run(args, command=''):
    """Score the test set with every chosen method; write and return the results."""
    make_result_dir(args)
    cli.seed_everything(args.seed)
    config = project_config(args)
    split = data_loader.resolve_split(config)
    data = load_data(args, config, split)
    paths, labels = data['paths'], data['labels']
    # Read before the methods run (training the autoencoder is slow): a wrong file fails at once.
    reference = read_compare_scores(args.compare, paths, labels) if args.compare else None
    explain_table = (read_score_tables(args.explain, args.explain_column) if args.explain
                     else None)
    data.update(statistics_of(args, split, data['x_test']))

    scores, results = {}, {}
    for name in args.methods:
        start = time.time()
        scores[name], fit_set, info = score_method(name, args, data)
        elapsed = time.time() - start
        results[name] = {**evaluate(labels, scores[name], args.bootstrap, args.seed),
                         'fit_set': fit_set, **info, 'time_s': round(elapsed, 2)}

    summary = summarize(args, command, data, results)
    if args.compare:
        summary['compare'] = {
            'scores_csv': args.compare,
            'AUROC': metrics.image_metrics(labels, reference)['image_AUROC'],
            'methods': compare(labels, reference, scores, args.bootstrap, args.seed),
            'note': 'AUROC(pred_score of scores_csv) - AUROC(method); paired: the same '
                    'bootstrap resamples of the test images for both'}
    if explain_table is not None:
        summary['explain'] = run_explain(args, explain_table, paths, labels, data['stats_test'],
                                         data['train_paths'], data['stats_train'])
    write_outputs(args, summary, data, scores)
    print_table(results)
    if args.compare:
        print_compare(args.compare, summary['compare'])
    if explain_table is not None:
        print_explain(summary['explain'])
    print(f'Saved baselines.json and baselines_scores.csv into {args.result_dir}')
    return summary


def main(argv=None):
    """Parse flags and run; returns the summary dict, exits with code 2 on a user error."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = build_parser().parse_args(argv)
    try:
        return run(args, 'python tools/baselines.py ' + shlex.join(argv))
    except (DataError, ConfigError) as e:
        print(f'error: {e}', file=sys.stderr)
        raise SystemExit(2)


if __name__ == '__main__':
    main()
