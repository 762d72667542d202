"""HealthyGAN command line: train, test (translation grids) and testAUC (anomaly scores, AUROC).

Flag names and defaults are the original's; flags added by this project say so in their help.
"""
import argparse
import errno
import os
import random
import shutil
import sys

import numpy as np
import torch


DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def str2bool(v):
    """Accept only true/false (any case); the original took any substring of 'true' as true."""
    if isinstance(v, bool):
        return v
    if v.lower() == 'true':
        return True
    if v.lower() == 'false':
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def iters_or_latest(v):
    """An iteration number, 'latest' (the newest checkpoint in --model_save_dir) or 'best_aucp'
    (the checkpoint with the highest label-free AUCp logged during training)."""
    if v in ('latest', 'best_aucp'):
        return v
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an iteration number, 'latest' or 'best_aucp', got {v!r}")
    if n < 0:
        raise argparse.ArgumentTypeError(f'expected a non-negative iteration, got {n}')
    return n


def positive_int(v):
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {v}')
    return n


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each default, except where a flag has none (None: decided at run time)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser():
    """The argparse parser: the original's 36 flags first, in its groups and with its defaults,
    then the flags this project added, grouped by what they change; every added flag's default
    keeps the original's behaviour."""
    p = argparse.ArgumentParser(description='HealthyGAN: train, test and testAUC.',
                                formatter_class=DefaultsFormatter)

    g = p.add_argument_group('Model configuration')
    g.add_argument('--image_size', type=positive_int, default=128, help='image resolution')
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

    g = p.add_argument_group('Training configuration')
    g.add_argument('--dataset', type=str, default='Covid', choices=['Covid', 'Folder'],
                   help="Covid: the original's pickled lists; Folder: healthy/, mixed/, "
                        "test/normal/, test/anomalous/ under --image_dir (added)")
    g.add_argument('--batch_size', type=positive_int, default=16, help='mini-batch size')
    g.add_argument('--num_iters', type=positive_int, default=200000,
                   help='number of total iterations for training D')
    g.add_argument('--num_iters_decay', type=positive_int, default=100000,
                   help='number of iterations for decaying lr')
    g.add_argument('--g_lr', type=float, default=0.0001, help='learning rate for G')
    g.add_argument('--d_lr', type=float, default=0.0001, help='learning rate for D')
    g.add_argument('--n_critic', type=positive_int, default=2,
                   help='number of D updates per each G update')
    g.add_argument('--beta1', type=float, default=0.5, help='beta1 for Adam optimizer')
    g.add_argument('--beta2', type=float, default=0.999, help='beta2 for Adam optimizer')
    g.add_argument('--resume_iters', type=iters_or_latest, default=None,
                   help="resume training from this step ('latest' for the newest checkpoint)")

    g = p.add_argument_group('Test configuration')
    g.add_argument('--test_iters', type=iters_or_latest, default=200000,
                   help="test model from this step ('latest' for the newest checkpoint, 'best_aucp' for "
                        "the one with the highest AUCp logged in training)")

    g = p.add_argument_group('Miscellaneous')
    g.add_argument('--num_workers', type=int, default=12, help='data loading processes')
    g.add_argument('--mode', type=str, default='train',
                   choices=['train', 'test', 'testAUC', 'score'],
                   help="train, test (translation grids of the test images) or testAUC (the "
                        "original's); score: anomaly scores and maps of every image under "
                        "--score_dir, no labels needed (added)")
    g.add_argument('--use_tensorboard', type=str2bool, default=True, help='true or false')

    g = p.add_argument_group('Directories')
    g.add_argument('--image_dir', type=str, default='datasets/covid',
                   help='images (Covid: train/ and test/ below it)')
    g.add_argument('--log_dir', type=str, default='covid/logs',
                   help='training logs (TensorBoard, stats.jsonl)')
    g.add_argument('--model_save_dir', type=str, default='covid/models',
                   help='checkpoints <iters>-G.ckpt, <iters>-D.ckpt')
    g.add_argument('--sample_dir', type=str, default='covid/samples',
                   help='translation grids written during training')
    g.add_argument('--result_dir', type=str, default='covid/results',
                   help='outputs of test and testAUC')

    g = p.add_argument_group('Step size')
    g.add_argument('--log_step', type=positive_int, default=10,
                   help='log the losses every N iterations')
    g.add_argument('--sample_step', type=positive_int, default=1000,
                   help='write a translation grid every N iterations')
    g.add_argument('--model_save_step', type=positive_int, default=10000,
                   help='save checkpoints every N iterations')
    g.add_argument('--lr_update_step', type=positive_int, default=1000,
                   help='lower the learning rates every N iterations (see --lr_schedule)')

    # Flags added by this project; at their defaults the program does what the original does.
    g = p.add_argument_group('Data (added)')
    g.add_argument('--list_dir', type=str, default='data/covid',
                   help="folder of the Covid split lists (*.pickle), read safely (added; the "
                        "original always read data/covid)")
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
    g.add_argument('--holdout_fraction', type=float, default=0.0,
                   help='fraction of the healthy and of the mixed images held out of training and '
                        'scored at every checkpoint for the label-free AUCp (healthy = 0, mixed = '
                        '1); 0 trains on everything, as the original (added)')
    g.add_argument('--augment', type=str, default='flip', choices=['flip', 'affine'],
                   help="training augmentation. flip: a random horizontal flip, as the original; "
                        "affine: also a small random rotation, zoom, shift, contrast and "
                        "brightness change per image (ranges in data_loader.AFFINE_RANGES) (added)")
    g.add_argument('--aug_strength', type=float, default=1.0,
                   help='--augment affine: multiplies every range (0.5 halves them) (added)')
    g.add_argument('--diff_augment', type=str, default='off',
                   help="DiffAugment (Zhao et al. 2020) of every image the critic sees, real or "
                        "translated: a comma-separated list of color, translation, cutout; off: "
                        "none, as the original (added)")

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
    g.add_argument('--seed', type=int, default=None,
                   help='random seed for weights, data order and flips; drawn at random and '
                        'recorded in run_config.json when not given (added)')
    g.add_argument('--device', type=str, default='auto', choices=['auto', 'cpu', 'cuda', 'mps'],
                   help='auto picks cuda, then mps, then cpu (added)')
    g.add_argument('--deterministic', type=str2bool, default=False,
                   help='true: deterministic algorithms only (bit-for-bit repeatable CPU runs '
                        'with --seed), cudnn.benchmark off (added)')
    g.add_argument('--lr_schedule', type=str, default='original', choices=['original', 'linear'],
                   help="original: the original's decrements of lr0/num_iters_decay (ends at "
                        "99.9%% of lr0 by default); linear: a real linear decay to 0 (added)")
    g.add_argument('--g_ema_decay', type=float, default=0.0,
                   help='keep an exponential moving average of G with this decay per generator '
                        'update (e.g. 0.999), saved as <iters>-G_ema.ckpt; 0: none, as the '
                        'original (added)')
    g.add_argument('--keep_last_states', type=int, default=0,
                   help='keep only the newest K <iters>-state.pt files (0: all); the '
                        'original-format G/D checkpoints are always kept (added)')

    g = p.add_argument_group('Evaluation (added)')
    g.add_argument('--score_variant', type=str, default='mean',
                   choices=['mean', 'p99', 'top1pct', 'masked', 'lung'],
                   help="image score behind the headline metrics: mean |x - x_hat| / 2 (the "
                        "original's), p99 (99th percentile of the map), top1pct (mean of its top "
                        "1%%), masked (the map weighted by G's mask) or lung (the map's mean over "
                        "the darker half of the mean healthy training image); all are reported "
                        "side by side in metrics.json (added)")
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
                   help='--mode score: folder of images to score, searched recursively '
                        '(added)')
    g.add_argument('--test_ema', type=str2bool, default=False,
                   help='test the averaged generator <iters>-G_ema.ckpt (true/false) (added)')
    g.add_argument('--ensemble', type=positive_int, default=1,
                   help='testAUC / score: average the anomaly maps and scores of the N most '
                        'recent checkpoints up to --test_iters (a snapshot ensemble); 1: that '
                        'checkpoint alone, as the original (added)')

    g = p.add_argument_group('Speed (added)')
    g.add_argument('--fast', type=str2bool, default=False,
                   help='true: turn on the fast paths measured to help on this device (CUDA: '
                        'all of them; CPU: see README, Speed); flags given explicitly win (added)')

    # Fast paths (solver.resolve_speed): each flag left unset takes the original's behaviour, or
    # the --fast preset's value; an explicit value always wins.
    g = p.add_argument_group("Advanced speed switches (added; each left unset takes --fast's choice)")
    g.add_argument('--amp', type=str, default=None, choices=['off', 'bf16', 'fp16'],
                   help='mixed precision for G and the critic passes: bf16 autocast, or fp16 '
                        'with loss scaling; the gradient penalty stays fp32 (default off) (added)')
    g.add_argument('--channels_last', type=str2bool, default=None,
                   help='channels-last memory format for G, D and the batches (default false) '
                        '(added)')
    g.add_argument('--compile', type=str2bool, default=None,
                   help='torch.compile G and the critic passes outside the gradient penalty '
                        "(on the CPU the compiled critic's LeakyReLU in place: the same "
                        'gradients); falls back to eager with a warning if compiling fails '
                        '(default false) (added)')
    g.add_argument('--adam_impl', type=str, default=None, choices=['default', 'foreach', 'fused'],
                   help="Adam implementation (default: torch's choice, as the original) (added)")
    g.add_argument('--reuse_fake', type=str2bool, default=None,
                   help="true: the G step reuses the critic step's translation of the mixed "
                        "batch (G is unchanged in between) instead of running G on it again "
                        "(default false) (added)")
    g.add_argument('--merge_critic', type=str2bool, default=None,
                   help='true: one critic pass on real and fake together (D has no batch-'
                        'dependent layers, so the outputs are the same) (default false) (added)')
    g.add_argument('--critic_matmul', type=str2bool, default=None,
                   help="true: the critic's convolutions on maps of 4x4 and smaller run as "
                        'unfold + one matrix multiply, the same sums in another order; faster '
                        "on the CPU, where oneDNN's kernels for them are slow (default false) "
                        '(added)')
    g.add_argument('--gp_explicit', type=str2bool, default=None,
                   help="true: the gradient penalty's input gradient as an explicit backward "
                        "pass of D (transposed convolutions) with one first-order backward, "
                        "instead of autograd's double backward; the same sums in another order "
                        '(default false) (added)')
    g.add_argument('--cudnn_benchmark', type=str2bool, default=None,
                   help='cudnn.benchmark (default true, as the original; --deterministic true '
                        'turns it off) (added)')
    g.add_argument('--tf32', type=str2bool, default=None,
                   help="TF32 matmuls and convolutions on Ampere+ GPUs (default: torch's "
                        "defaults, i.e. convolutions TF32, matmuls fp32) (added)")
    return p


def check_architecture(parser, config):
    """Refuse sizes the networks cannot handle, before any work is done."""
    if config.image_size % 4 != 0:
        parser.error(f'--image_size {config.image_size}: the generator downsamples twice, so it '
                     f'must be a multiple of 4')
    if config.image_size // 2 ** config.d_repeat_num < 1:
        parser.error(f'--image_size {config.image_size} is too small for --d_repeat_num '
                     f'{config.d_repeat_num}: the critic halves the image {config.d_repeat_num} '
                     f'times; use --d_repeat_num <= {int(np.log2(config.image_size))}')
    if config.g_repeat_num < 0:
        parser.error('--g_repeat_num must be >= 0')
    if not 0 < config.aug_strength <= 4:
        parser.error(f'--aug_strength {config.aug_strength}: expected a value in (0, 4] '
                     f'(1 = the ranges in data_loader.AFFINE_RANGES)')


def check_limits(config):
    """Values no run can use, as one line naming the flag, before any work."""
    import math
    for flag in ('g_lr', 'd_lr'):
        v = getattr(config, flag)
        if not math.isfinite(v) or v < 0:
            return f'--{flag} {v}: expected a finite learning rate >= 0'
    for flag in ('beta1', 'beta2'):
        v = getattr(config, flag)
        if not 0 <= v < 1:
            return f'--{flag} {v}: expected a value in [0, 1)'
    if config.num_workers < 0:
        return (f'--num_workers {config.num_workers}: expected 0 (load in the main process) or '
                f'more')
    return None


def memory_needed(config, n_images):
    """Rough bytes a training run needs: (data cache on disk, RAM to decode, one batch's
    activations). The cache is a uint8 memory map of every image at --image_size (grayscale);
    each decoding process holds an RGB image at that size twice (PIL's and numpy's copies)."""
    pixels = config.image_size ** 2
    cache = n_images * pixels if config.data_cache == 'on' else 0
    workers = max(1, min(config.num_workers, os.cpu_count() or 1))
    decode = workers * 2 * 3 * pixels
    # G's full-resolution maps (about 4 of --g_conv_dim channels) and D's first layer dominate;
    # x4 for the two batches and what the backward keeps. Kept low on purpose: only a run that
    # surely cannot fit is refused, never one that might.
    channels = config.g_conv_dim * 4 + config.d_conv_dim
    activations = config.batch_size * pixels * 4 * channels * 4
    return cache, decode, activations


def available_memory():
    """Bytes of memory available now (MemAvailable), or None where it cannot be read."""
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (ValueError, OSError, AttributeError):
        return None


def free_disk(path):
    """Free bytes on the file system of path (or of its nearest existing parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def check_memory(config, split, device):
    """Refuse, with the numbers, a run whose data cache, decoding or batch cannot fit, before
    anything is allocated (an allocation that large gets some process killed, maybe another's)."""
    import glob
    import data_loader
    from solver import ConfigError
    n = len({p for k in ('healthy', 'mixed', 'holdout_healthy', 'holdout_mixed')
             for p in split.get(k, [])})
    cache, decode, activations = memory_needed(config, n)
    gib = 2 ** 30
    fix = 'lower --image_size' + (' or --batch_size' if activations > decode else '')
    if device.type == 'cuda':
        free_gpu = torch.cuda.mem_get_info(device)[0]
        if activations > free_gpu:
            raise ConfigError(
                f'--image_size {config.image_size} with --batch_size {config.batch_size}: one '
                f'batch needs about {activations / gib:.1f} GiB of GPU memory but '
                f'{free_gpu / gib:.1f} GiB is free; {fix}')
        activations = 0
    ram = decode + activations
    free = available_memory()
    if free is not None and ram > free:
        raise ConfigError(
            f'--image_size {config.image_size} with --batch_size {config.batch_size}: about '
            f'{ram / gib:.1f} GiB of memory needed (decoding {decode / gib:.1f} GiB, one batch '
            f'{activations / gib:.1f} GiB) but {free / gib:.1f} GiB is available; {fix}')
    cache_dir = data_loader.default_cache_dir(config)
    built = glob.glob(os.path.join(cache_dir, f'images-{config.image_size}px-*.npy'))
    disk = free_disk(cache_dir)
    if cache and not built and disk is not None and cache > disk:
        raise ConfigError(
            f'--image_size {config.image_size}: the data cache of {n} images needs about '
            f'{cache / gib:.1f} GiB but {disk / gib:.1f} GiB is free in {cache_dir}; lower '
            f'--image_size, pass --cache_dir on a larger disk, or --data_cache off')


def prepare_run_folder(config):
    """Train mode: lock --model_save_dir, clear temporaries of a killed save, and refuse (or,
    --overwrite true, move aside) another run's files. Returns the lock, or None."""
    from healthygan import runfiles
    from solver import is_main
    lock = None
    if is_main():
        lock = runfiles.RunLock(config.model_save_dir).acquire()
    try:
        if is_main():
            runfiles.remove_stale_temporaries(config.model_save_dir)
        runfiles.parse_allowed(config.allow_changes)  # a typo fails now, not at resume time
        if config.resume_iters is None:
            dest = runfiles.check_new_run(config.model_save_dir, config.overwrite,
                                          move=is_main())
            stats = os.path.join(config.log_dir, 'stats.jsonl')
            if dest and os.path.exists(stats):  # the old run's losses, not the new one's
                shutil.move(stats, os.path.join(dest, 'stats.jsonl'))
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock


def resumed_seed(config):
    """--resume_iters without --seed: the seed of the run being resumed (its data order and
    flips follow it), or None when no record holds one."""
    from healthygan import runfiles
    from solver import resolve_iters
    iters = resolve_iters(config.resume_iters, config.model_save_dir, '--resume_iters')
    path = os.path.join(config.model_save_dir, f'{iters}-state.pt')
    saved = None
    if os.path.exists(path):
        state = runfiles.load_weights_only(path, 'training state')
        saved = ((state.get('metadata') or {}).get('config') or {}) if isinstance(state, dict) \
            else {}
    if not saved:
        saved = runfiles.saved_run_config(config.model_save_dir, iters)[0] or {}
    return saved.get('seed')


def check_writable(config):
    """Fail before any work if an output folder cannot be created or written."""
    from solver import ConfigError
    flags = {'train': ('model_save_dir', 'sample_dir', 'log_dir'), 'test': ('result_dir',),
             'testAUC': ('result_dir',), 'score': ('result_dir',)}[config.mode]
    for flag in flags:
        path = getattr(config, flag)
        try:
            os.makedirs(path, exist_ok=True)
            probe = os.path.join(path, '.write_test')
            with open(probe, 'w'):
                pass
            os.remove(probe)
        except OSError as e:
            raise ConfigError(f'--{flag} {path} is not writable ({e.strerror}); choose another '
                              f'folder') from None


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
    from solver import ConfigError, broadcast_object, init_distributed, is_main
    try:
        init_distributed(config)
    except ConfigError as e:
        print(f'error: {e}', file=sys.stderr)
        raise SystemExit(2)
    config.seed = broadcast_object(config.seed)  # a seed drawn at random differs per rank
    if not is_main():
        sys.stdout = open(os.devnull, 'w')


def main(argv=None):
    """Parse flags and run the chosen mode; returns testAUC's metrics dict, else None."""
    parser = build_parser()
    config = parser.parse_args(argv)
    check_architecture(parser, config)
    problem = check_limits(config)
    if problem:
        print(f'error: {problem}', file=sys.stderr)
        raise SystemExit(2)
    if config.seed is None and config.mode == 'train' and config.resume_iters is not None:
        from solver import ConfigError
        try:
            config.seed = resumed_seed(config)
        except ConfigError as e:
            print(f'error: {e}', file=sys.stderr)
            raise SystemExit(2)
    if config.seed is None:
        config.seed = int.from_bytes(os.urandom(4), 'little') >> 1
    start_distributed(config)  # torchrun; nothing happens on one process
    print('Options (differing from the defaults):', non_default_options(parser, config))

    import data_loader
    from solver import ConfigError, Solver, is_main
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
            check_writable(config)
        if config.mode == 'train':
            lock = prepare_run_folder(config)
        # score needs no dataset layout, only the images under --score_dir
        split = (data_loader.resolve_split(config, config.mode) if config.mode != 'score'
                 else None)
        if config.mode == 'train':
            from solver import resolve_device
            check_memory(config, split, resolve_device(config.device))
        solver = Solver(config, split)
        if config.mode == 'train':
            solver.train()
        elif config.mode == 'test':
            solver.test()
        elif config.mode == 'score':
            return solver.score_folder()
        else:
            return solver.test_auc()
    except (data_loader.DataError, ConfigError) as e:
        # Problems the user must fix: one clear line, no traceback.
        print(f'error: {e}', file=sys.stderr)
        raise SystemExit(2)
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        # A full disk or quota while writing a log, sample or record: one line; the checkpoint
        # sets written before are whole (runfiles.save_checkpoint_set).
        where = f' writing {e.filename}' if e.filename else ''
        print(f'error: {e.strerror}{where}; free space (or choose other output folders), then '
              f'resume with --resume_iters latest', file=sys.stderr)
        raise SystemExit(2)
    finally:
        if lock is not None:
            lock.release()
        if torch.distributed.is_initialized():  # torchrun: leave the process group
            torch.distributed.destroy_process_group()
    return None


if __name__ == '__main__':
    main()
