"""HealthyGAN command line: train, test (translation grids) and testAUC (anomaly scores, AUROC).

Flag names and defaults are the original's; flags added by this project say so in their help.
"""
import argparse
import errno
import json
import os
import random
import sys

import numpy as np
import torch

from healthygan import limits
from healthygan.data.splits import resolve_split
from healthygan.detection import anomaly
from healthygan.detection.api import DETECTOR_FILE, read_detector_file
from healthygan.detection.selection import resolve_iters
from healthygan.device import resolve_device
from healthygan.errors import ConfigError, DataError
from healthygan.flags import (DefaultsFormatter, iters_or_latest, percentile,  # noqa: F401
                              positive_int, seed, str2bool)
from healthygan.solver import Solver
from healthygan.training import checkpoint_sets, run_folder, run_record
from healthygan.training.distributed import broadcast_object, init_distributed, is_main
from healthygan.training.fast import add_speed_flags

DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


# The flags other tools take too (tools/baselines.py), declared once: add_shared_flag.
SHARED_FLAGS = {
    '--image_size': dict(
        type=positive_int, default=128, help='image resolution'),
    '--dataset': dict(
        type=str, default='Covid', choices=['Covid', 'Folder'],
        help="Covid: the original's pickled lists; Folder: healthy/, mixed/, "
             "test/normal/, test/anomalous/ under --image_dir (added)"),
    '--image_dir': dict(
        type=str, default='datasets/covid',
        help='images (Covid: train/ and test/ below it)'),
    '--list_dir': dict(
        type=str, default='data/covid',
        help="folder of the Covid split lists (*.pickle), read safely (added; the "
             "original always read data/covid)"),
    '--holdout_fraction': dict(
        type=float, default=0.0,
        help='fraction of the healthy and of the mixed images held out of training and '
             'scored at every checkpoint for the label-free AUCp (healthy = 0, mixed = '
             '1); 0 trains on everything, as the original (added)'),
    '--holdout_labels': dict(
        type=str, default=None,
        help="a CSV (file,label) of the mixed images' true labels, e.g. a dataset's "
             'mixed_truth.csv: with a hold-out, every checkpoint also gets a '
             'validation AUROC of the held-out images by these labels (val_AUROC in '
             'aucp.jsonl; --test_iters best_val tests the best). Only held-out '
             'images are looked up: no label reaches training (added)'),
    '--holdout_stratify': dict(
        type=str2bool, default=False,
        help='true: hold out --holdout_fraction of each label of --holdout_labels '
             'among the mixed images, so that the validation set holds its share of '
             'diseased images and training keeps the folder\'s mixture; the labels '
             'choose which images are held out, no label reaches training (added)'),
    '--beta1': dict(
        type=float, default=0.5, help='beta1 for Adam optimizer'),
    '--beta2': dict(
        type=float, default=0.999, help='beta2 for Adam optimizer'),
    '--device': dict(
        type=str, default='auto', choices=['auto', 'cpu', 'cuda', 'mps'],
        help='auto picks cuda, then mps, then cpu (added)'),
}


def add_shared_flag(group, name, help=None):
    """Add one of SHARED_FLAGS to an argument group; a tool may say in help what it means there
    (the type, choices and default stay main.py's)."""
    spec = dict(SHARED_FLAGS[name])
    if help is not None:
        spec['help'] = help
    group.add_argument(name, **spec)


def build_parser():
    """The argparse parser: the original's 36 flags first, in its groups and with its defaults,
    then the flags this project added, grouped by what they change; every added flag's default
    keeps the original's behaviour."""
    p = argparse.ArgumentParser(description='HealthyGAN: train, test, testAUC and score.',
                                formatter_class=DefaultsFormatter)
    for add in (add_model_flags, add_training_flags, add_test_flags, add_misc_flags,
                add_directories_flags, add_step_flags,
                # added by this project; at their defaults the program does what the
                # original does
                add_data_flags, add_added_training_flags, add_evaluation_flags,
                add_speed_flags):
        add(p)
    return p


def add_model_flags(p):
    """The original's model configuration: sizes and loss weights."""
    g = p.add_argument_group('Model configuration')
    add_shared_flag(g, '--image_size')
    g.add_argument('--g_conv_dim', type=positive_int, default=64,
                   help='number of conv filters in the first layer of G')
    g.add_argument('--d_conv_dim', type=positive_int, default=64,
                   help='number of conv filters in the first layer of D')
    g.add_argument('--g_repeat_num', type=int, default=6, help='number of residual blocks in G')
    g.add_argument('--d_repeat_num', type=positive_int, default=6,
                   help='number of strided conv layers in D')
    g.add_argument('--lambda_cls', type=float, default=0, help='unused (kept from the original)')
    g.add_argument('--lambda_rec', type=float, default=1, help='weight for reconstruction loss')
    g.add_argument('--lambda_gp', type=float, default=10, help='weight for gradient penalty')
    g.add_argument('--lambda_id', type=float, default=1, help='weight for identity loss')
    g.add_argument('--lambda_mask', type=float, default=0.1, help='weight for mask loss')
    g.add_argument('--lambda_msmall', type=float, default=1,
                   help='weight of the mask-smallness term (mean m)^2')
    g.add_argument('--lambda_mzerone', type=float, default=1,
                   help='weight of the mask zero-one term')
    g.add_argument('--mask_loss_mode', type=str, default='sum', help='unused (kept from the original)')


def add_training_flags(p):
    """The original's training configuration."""
    g = p.add_argument_group('Training configuration')
    add_shared_flag(g, '--dataset')
    g.add_argument('--batch_size', type=positive_int, default=16, help='mini-batch size')
    g.add_argument('--num_iters', type=positive_int, default=200000,
                   help='number of total iterations for training D')
    g.add_argument('--num_iters_decay', type=positive_int, default=100000,
                   help='number of iterations for decaying lr')
    g.add_argument('--g_lr', type=float, default=0.0001, help='learning rate for G')
    g.add_argument('--d_lr', type=float, default=0.0001, help='learning rate for D')
    g.add_argument('--n_critic', type=positive_int, default=2,
                   help='number of D updates per each G update')
    add_shared_flag(g, '--beta1')
    add_shared_flag(g, '--beta2')
    g.add_argument('--resume_iters', type=iters_or_latest, default=None,
                   help="resume training from this step ('latest' for the newest checkpoint)")


def add_test_flags(p):
    """The original's test configuration."""
    g = p.add_argument_group('Test configuration')
    g.add_argument('--test_iters', type=iters_or_latest, default=200000,
                   help="test model from this step ('latest' for the newest checkpoint, 'best_aucp' for "
                        "the one with the highest AUCp logged in training, 'best_val' for the "
                        "highest validation AUROC, with --holdout_labels)")


def add_misc_flags(p):
    """The original's miscellaneous flags."""
    g = p.add_argument_group('Miscellaneous')
    g.add_argument('--num_workers', type=int, default=12, help='data loading processes')
    g.add_argument('--mode', type=str, default='train',
                   choices=['train', 'test', 'testAUC', 'score'],
                   help="train, test (translation grids of the test images) or testAUC (the "
                        "original's); score: anomaly scores and maps of every image under "
                        "--score_dir, no labels needed (added)")
    g.add_argument('--use_tensorboard', type=str2bool, default=True, help='true or false')


def add_directories_flags(p):
    """The original's folders."""
    g = p.add_argument_group('Directories')
    add_shared_flag(g, '--image_dir')
    g.add_argument('--log_dir', type=str, default='covid/logs',
                   help='training logs (TensorBoard, stats.jsonl)')
    g.add_argument('--model_save_dir', type=str, default='covid/models',
                   help='checkpoints <iters>-G.ckpt, <iters>-D.ckpt')
    g.add_argument('--sample_dir', type=str, default='covid/samples',
                   help='translation grids written during training')
    g.add_argument('--result_dir', type=str, default='covid/results',
                   help='outputs of test and testAUC')


def add_step_flags(p):
    """The original's step sizes."""
    g = p.add_argument_group('Step size')
    g.add_argument('--log_step', type=positive_int, default=10,
                   help='log the losses every N iterations')
    g.add_argument('--sample_step', type=positive_int, default=1000,
                   help='write a translation grid every N iterations')
    g.add_argument('--model_save_step', type=positive_int, default=10000,
                   help='save checkpoints every N iterations')
    g.add_argument('--lr_update_step', type=positive_int, default=1000,
                   help='lower the learning rates every N iterations (see --lr_schedule)')


def add_data_flags(p):
    """Added: where the data comes from, its cache, unreadable images, the hold-out."""
    g = p.add_argument_group('Data (added)')
    add_shared_flag(g, '--list_dir')
    g.add_argument('--cache_dir', type=str, default='',
                   help='folder of the data cache (--data_cache on); default '
                        '$XDG_CACHE_HOME/healthygan, i.e. ~/.cache/healthygan (added)')
    g.add_argument('--data_cache', type=str, default='on', choices=['on', 'off'],
                   help='on: decode, crop and resize every image once into a uint8 cache (see '
                        '--cache_dir) and draw batches from it, on the GPU when it fits: the same '
                        "pixels, many times faster; off: decode every image at every step, as "
                        'the original (added)')
    g.add_argument('--bad_images', type=str, default='refuse', choices=['refuse', 'skip'],
                   help='unreadable or corrupt images, all found before training starts: refuse '
                        'lists them and stops; skip lists them and trains without them (added; '
                        'the original crashed when it reached the first one)')
    add_shared_flag(g, '--holdout_fraction')
    add_shared_flag(g, '--holdout_labels')
    add_shared_flag(g, '--holdout_stratify')


def add_added_training_flags(p):
    """Added: run folders, resume, seed, device, the schedule."""
    g = p.add_argument_group('Training (added)')
    g.add_argument('--overwrite', type=str2bool, default=False,
                   help="true: a new run into a --model_save_dir holding another run's "
                        'checkpoints (or a resume from before its later ones) moves those files '
                        '(a new run: and the old stats.jsonl) into <model_save_dir>/replaced-'
                        '<time>/ instead of refusing; nothing is deleted (added)')
    g.add_argument('--allow_changes', type=str, default=None,
                   help='resume: comma-separated flags (e.g. g_lr,batch_size) whose change '
                        'from the saved run is wanted; recorded in the run config. Without it a '
                        'change to a flag that alters the run is refused (added)')
    g.add_argument('--seed', type=seed, default=None,
                   help='random seed for weights, data order and flips; drawn at random and '
                        'recorded in run_config.json when not given (added)')
    add_shared_flag(g, '--device')
    g.add_argument('--deterministic', type=str2bool, default=False,
                   help='true: deterministic algorithms only (bit-for-bit repeatable CPU runs '
                        'with --seed), cudnn.benchmark off (added)')
    g.add_argument('--lr_schedule', type=str, default='original', choices=['original', 'linear'],
                   help="original: the original's decrements of lr0/num_iters_decay (ends at "
                        "99.9%% of lr0 by default); linear: a real linear decay to 0 (added)")
    g.add_argument('--keep_last_states', type=int, default=0,
                   help='keep only the newest K <iters>-state.pt files (0: all); the '
                        'original-format G/D checkpoints are always kept (added)')


def add_evaluation_flags(p):
    """Added: scores, thresholds, reports, the snapshot ensemble."""
    g = p.add_argument_group('Evaluation (added)')
    g.add_argument('--score_variant', type=str, default='mean',
                   choices=list(anomaly.SCORE_VARIANTS),
                   help="image score behind the headline metrics: mean |x - x_hat| / 2 (the "
                        "original's), p99 (99th percentile of the map), top1pct (mean of its top "
                        "1%%), masked (the map weighted by G's mask), lung (the map's mean over "
                        "the darker half of the mean healthy training image) or ref_z (the map's "
                        "excess over the held-out healthy images' at each pixel, in their "
                        "spread; needs a run trained with --holdout_fraction > 0); all but ref_z "
                        "are reported side by side in metrics.json (added)")
    g.add_argument('--bootstrap', type=int, default=1000,
                   help='bootstrap resamples for the 95%% confidence interval of the AUROC; 0: '
                        'none (added)')
    g.add_argument('--bootstrap_seed', type=int, default=0,
                   help='seed of the bootstrap resamples (added)')
    g.add_argument('--val_dir', type=str, default=None,
                   help='folder with normal/ and anomalous/ on which the threshold is chosen '
                        "(the original's rule); default <image_dir>/val when it exists, else "
                        'the test set itself, as the original (labelled optimistic) (added)')
    g.add_argument('--report', type=str2bool, default=True,
                   help='true: per-image panels, ROC curve, score histograms and report.html in '
                        '--result_dir (needs matplotlib); false: scores, maps and metrics '
                        'only (added)')
    g.add_argument('--num_maps', type=int, default=-1,
                   help='draw panels (input, translation, mask, map) for the first N images; '
                        '-1: all (added; the raw maps are always written to maps/)')
    g.add_argument('--score_dir', type=str, default=None,
                   help='--mode score: one image, or a folder of images searched recursively; '
                        "the architecture flags are read from the run's run_config.json "
                        '(added)')
    g.add_argument('--healthy_percentile', type=percentile, default=95.0,
                   help='score / API: mark the images whose score exceeds this percentile of '
                        'the scores of the healthy images held out of training (a label-free '
                        'threshold; needs a run trained with --holdout_fraction > 0) (added)')
    g.add_argument('--ensemble', type=positive_int, default=1,
                   help='testAUC / score: average the anomaly maps and scores of the N most '
                        'recent checkpoints up to --test_iters (a snapshot ensemble); 1: that '
                        'checkpoint alone, as the original (added)')
    g.add_argument('--boxes', type=str, default=None,
                   help="testAUC / score: a CSV of a reader's lesion boxes (file, x, y, w, h in "
                        "the image file's pixels; several rows per image; a finding column "
                        'kept): the pointing game, the top-5%% share and the pixel AUROC of the '
                        "score's map and of G's mask inside the boxes, beside chance, in "
                        'metrics.json, scores.csv, the printout and the report (added)')

    g.add_argument('--save_detector', type=str2bool, default=False,
                   help="testAUC: true writes what was tested (--test_iters resolved, "
                        "--ensemble, --score_variant) into <model_save_dir>/detector.json, the "
                        "run's recommendation that --mode score and healthygan.load follow "
                        'where their own flags or arguments are not given (added)')


def seed_everything(seed):
    """Seed Python, numpy and torch (CPU and all GPUs)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def non_default_options(parser, config):
    """Flags whose value differs from the default, for a short summary line."""
    return {k: v for k, v in vars(config).items() if parser.get_default(k) != v}


def start_distributed(config):
    """Under torchrun (WORLD_SIZE > 1) join the process group and take rank 0's seed (added).

    Ranks other than 0 print nothing (their stdout goes to os.devnull); errors still reach stderr.
    """
    try:
        init_distributed(config)
    except ConfigError as e:
        fail(e)
    config.seed = broadcast_object(config.seed)  # a seed drawn at random differs per rank
    if not is_main():
        sys.stdout = open(os.devnull, 'w')


# Flags that were removed because this project's measurements showed they did not help
# (docs/results.md); a command line that still names one gets this line.
REMOVED_FLAGS = {
    '--augment': 'training flips images as the original; the added augmentation did not help',
    '--aug_strength': 'training flips images as the original; the added augmentation did not '
                      'help',
    '--diff_augment': 'DiffAugment did not help; train without it',
    '--g_ema_decay': 'the weight average did not help; --ensemble N (the last N checkpoints) '
                     'replaces it',
    '--test_ema': 'the weight average did not help; --ensemble N (the last N checkpoints) '
                  'replaces it',
}


def fail(message):
    """A problem the user must fix: one line on stderr, exit status 2, no traceback."""
    print(f'error: {message}', file=sys.stderr)
    raise SystemExit(2)


def resumed_seed(config):
    """--resume_iters without --seed: the seed of the run being resumed (its data order and
    flips follow it), or None when no record holds one."""
    iters = resolve_iters(config.resume_iters, config.model_save_dir, '--resume_iters')
    path = os.path.join(config.model_save_dir, f'{iters}-state.pt')
    saved = None
    if os.path.exists(path):
        state = checkpoint_sets.load_weights_only(path, 'training state')
        saved = ((state.get('metadata') or {}).get('config') or {}) if isinstance(state, dict) \
            else {}
    if not saved:
        saved = run_record.saved_run_config(config.model_save_dir, iters)[0] or {}
    return saved.get('seed')


def parse(argv):
    """The config from the command line, checked before any work."""
    args = sys.argv[1:] if argv is None else list(argv)
    for arg in args:
        name = arg.split('=', 1)[0]
        if name in REMOVED_FLAGS:
            fail(f'{name} was removed: {REMOVED_FLAGS[name]} (docs/results.md)')
    parser = build_parser()
    config = parser.parse_args(args)
    if config.mode == 'score':
        given = given_flags(args)
        try:
            adopt_run_architecture(config, given)
            adopt_recommendation(config, given)
        except ConfigError as e:
            fail(e)
        if 'result_dir' not in given:
            config.result_dir = score_result_dir(config.model_save_dir)
        # Scoring a folder gains nothing from more loading processes than cores (torch warns
        # of them); the flag's default stays the original's for training.
        config.num_workers = min(config.num_workers, limits.usable_cpus())
    if config.boxes and config.mode not in ('testAUC', 'score'):
        fail(f'--boxes measures the maps of --mode testAUC or score, not --mode {config.mode}; '
             f'leave it out or change the mode')
    problem = limits.check_architecture(config) or limits.check_limits(config)
    if problem:
        fail(problem)
    if config.seed is None and config.mode == 'train' and config.resume_iters is not None:
        try:
            config.seed = resumed_seed(config)
        except ConfigError as e:
            fail(e)
    if config.seed is None:
        config.seed = int.from_bytes(os.urandom(4), 'little') >> 1
    return parser, config


def given_flags(args):
    """The destinations of the flags a command line names (whatever their values)."""
    parser = build_parser()
    for action in parser._actions:  # parse again with every default left out
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_known_args(args)[0]))


def adopt_run_architecture(config, given):
    """--mode score (added): the architecture flags from the run's run_config.json, so that
    they need not be typed again; one typed otherwise is refused with both values. Without a run
    record (the released checkpoint) the flags stay as given, as in the original."""
    record = os.path.join(config.model_save_dir, 'run_config.json')
    if os.path.exists(record) and not readable_record(record):
        raise ConfigError(f'{record} is not a run record this program wrote (unreadable or '
                          f'not JSON), so the architecture of the checkpoints beside it cannot '
                          f'be read from it; restore it from the run, or remove it and pass the '
                          f'architecture flags the run was trained with')
    saved = run_record.run_architecture(config.model_save_dir)
    if saved is None:
        return
    for name, value in saved.items():
        if name in given and getattr(config, name) != value:
            raise ConfigError(f'--{name} {getattr(config, name)} disagrees with {record}, '
                              f'which trained these checkpoints with --{name} {value}; leave '
                              f'--{name} out (it is read from there) or pass {value}')
        setattr(config, name, value)
    print('Architecture from ' + record + ': ' + ', '.join(f'--{k} {v}' for k, v in saved.items()))


RECOMMENDED = ('test_iters', 'ensemble', 'score_variant')


def adopt_recommendation(config, given):
    """--mode score (added): the checkpoint, ensemble and score the run folder's detector.json
    recommends, for each of them not given as a flag, as healthygan.load does; without one,
    the newest checkpoint (as load: a run's last checkpoint is rarely the original's 200000).
    Prints what is used and where each value came from."""
    path = os.path.join(config.model_save_dir, DETECTOR_FILE)
    advice = read_detector_file(config.model_save_dir)
    parsers = {'test_iters': iters_or_latest, 'ensemble': positive_int, 'score_variant': str}
    sources = {}
    for name in RECOMMENDED:
        if name in given:
            sources[name] = 'given'
        elif name in advice:
            try:
                value = parsers[name](str(advice[name]))
            except (argparse.ArgumentTypeError, ValueError) as e:
                raise ConfigError(f'{path}: {name} {advice[name]!r} is not usable ({e}); fix '
                                  f'it or pass --{name}') from None
            if name == 'score_variant' and value not in anomaly.SCORE_VARIANTS:
                raise ConfigError(f'{path}: score_variant {value!r} is none of '
                                  f'{", ".join(anomaly.SCORE_VARIANTS)}; fix it or pass '
                                  f'--score_variant')
            setattr(config, name, value)
            sources[name] = path
        elif name == 'test_iters':
            config.test_iters, sources[name] = 'latest', 'no detector.json: the newest checkpoint'
        else:
            sources[name] = 'default'
    print('Scoring with ' + ', '.join(f'--{n} {getattr(config, n)} ({sources[n]})'
                                      for n in RECOMMENDED))


def readable_record(path):
    """Whether path holds a run record: JSON of an object with a 'config' object."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and isinstance(record.get('config'), dict)


def score_result_dir(model_save_dir):
    """--mode score without --result_dir (added): scores/ beside the run's checkpoint folder
    (my_run/models -> my_run/scores), so that scoring new images never overwrites the scores.csv
    testAUC writes into the original's default, covid/results."""
    return os.path.normpath(os.path.join(model_save_dir, os.pardir, 'scores'))


OUTPUT_FLAGS = ('model_save_dir', 'log_dir', 'sample_dir', 'result_dir')


def written_flags(config):
    """The folder flags a mode writes into: training its three, the test modes --result_dir
    (and, for ref_z, the reference saved beside the checkpoints)."""
    if config.mode == 'train':
        return OUTPUT_FLAGS[:3]
    return (('model_save_dir',) if config.score_variant == 'ref_z' else ()) + ('result_dir',)


def disk_full_line(e, config):
    """A full disk's one line: the file and the folder flag it was written under, and what to
    do next (resume only where a complete checkpoint set exists to resume from)."""
    filename = e.filename if isinstance(e.filename, str) else None
    # the folder the file was written into (the file itself may be a link elsewhere)
    parent = os.path.realpath(os.path.dirname(os.path.abspath(filename))) if filename else None
    flags = [f for f in OUTPUT_FLAGS if parent and (parent + os.sep).startswith(
        os.path.realpath(getattr(config, f)) + os.sep)]
    if filename:
        where = f' writing {e.filename}'
        if flags:
            where += f' (under --{flags[0]} {getattr(config, flags[0])})'
    else:
        where = ' writing into ' + ', '.join(f'--{f} {getattr(config, f)}'
                                             for f in written_flags(config))
    fix = f'free space on it (or choose another --{flags[0]})' if flags else \
        'free space (or choose other output folders)'
    if config.mode != 'train':
        return f'{e.strerror}{where}; {fix}, then run the command again'
    done = checkpoint_sets.complete_iters(config.model_save_dir)
    if done:
        return (f'{e.strerror}{where}; {fix}, then resume with --resume_iters latest (the last '
                f'complete checkpoint set is {done[-1]} in {config.model_save_dir})')
    return (f'{e.strerror}{where}; {fix}, then start the run again with --overwrite true: no '
            f'checkpoint was saved yet, so there is nothing to resume')


def main(argv=None):
    """Parse flags and run the chosen mode; returns testAUC's metrics dict, else None."""
    parser, config = parse(argv)
    start_distributed(config)  # torchrun; nothing happens on one process
    print('Options (differing from the defaults):', non_default_options(parser, config))

    torch.backends.cudnn.benchmark = not config.deterministic
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    seed_everything(config.seed)
    lock = None
    try:
        if config.mode != 'train' and not is_main():
            return None  # under torchrun, test and testAUC run on rank 0 alone (same result)
        if is_main():  # one probe file, not one per rank
            limits.check_writable(config)
        if config.mode == 'train':
            lock = run_folder.prepare_run_folder(config)
        # score needs no dataset layout, only the images under --score_dir
        split = (resolve_split(config, config.mode) if config.mode != 'score'
                 else None)
        if config.mode == 'train':
            limits.check_memory(config, split, resolve_device(config.device))
        solver = Solver(config, split)
        if config.mode == 'train':
            solver.train()
        elif config.mode == 'test':
            solver.test()
        elif config.mode == 'score':
            return solver.score_folder()
        else:
            return solver.test_auc()
    except (DataError, ConfigError) as e:
        fail(e)
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        # A full disk or quota while writing a log, sample or record: one line; the checkpoint
        # sets written before are whole (checkpoint_sets.save_checkpoint_set).
        fail(disk_full_line(e, config))
    finally:
        if lock is not None:
            lock.release()
        if torch.distributed.is_initialized():  # torchrun: leave the process group
            torch.distributed.destroy_process_group()
    return None


if __name__ == '__main__':
    main()
