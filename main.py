"""HealthyGAN command line: train, test (translation grids) and testAUC (anomaly scores, AUROC).

Flag names and defaults are the original's; flags added by this project say so in their help.
"""
import argparse
import os
import random
import sys

import numpy as np
import torch


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
    """An iteration number, or 'latest' for the newest checkpoint in --model_save_dir."""
    if v == 'latest':
        return v
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an iteration number or 'latest', got {v!r}")
    if n < 0:
        raise argparse.ArgumentTypeError(f'expected a non-negative iteration, got {n}')
    return n


def positive_int(v):
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {v}')
    return n


def build_parser():
    """The argparse parser, grouped as the original's flags."""
    p = argparse.ArgumentParser(description='HealthyGAN: train, test and testAUC.')

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
    g.add_argument('--lr_schedule', type=str, default='original', choices=['original', 'linear'],
                   help="original: the original's decrements of lr0/num_iters_decay (ends at "
                        "99.9%% of lr0 by default); linear: a real linear decay to 0 (added)")

    g = p.add_argument_group('Test configuration')
    g.add_argument('--test_iters', type=iters_or_latest, default=200000,
                   help="test model from this step ('latest' for the newest checkpoint)")

    g = p.add_argument_group('Miscellaneous')
    g.add_argument('--num_workers', type=int, default=12, help='data loading processes')
    g.add_argument('--mode', type=str, default='train', choices=['train', 'test', 'testAUC'])
    g.add_argument('--use_tensorboard', type=str2bool, default=True, help='true or false')
    g.add_argument('--seed', type=int, default=None,
                   help='random seed for weights, data order and flips; drawn at random and '
                        'recorded in run_config.json when not given (added)')
    g.add_argument('--device', type=str, default='auto', choices=['auto', 'cpu', 'cuda', 'mps'],
                   help='auto picks cuda, then mps, then cpu (added)')
    g.add_argument('--deterministic', type=str2bool, default=False,
                   help='true: deterministic algorithms only (bit-for-bit repeatable CPU runs '
                        'with --seed), cudnn.benchmark off (added)')
    g.add_argument('--keep_last_states', type=int, default=0,
                   help='keep only the newest K <iters>-state.pt files (0: all); the '
                        'original-format G/D checkpoints are always kept (added)')

    g = p.add_argument_group('Directories')
    g.add_argument('--image_dir', type=str, default='datasets/covid')
    g.add_argument('--list_dir', type=str, default='data/covid',
                   help="folder of the Covid split lists (*.pickle), read safely (added; the "
                        "original always read data/covid)")
    g.add_argument('--log_dir', type=str, default='covid/logs')
    g.add_argument('--model_save_dir', type=str, default='covid/models')
    g.add_argument('--sample_dir', type=str, default='covid/samples')
    g.add_argument('--result_dir', type=str, default='covid/results')

    g = p.add_argument_group('Step size')
    g.add_argument('--log_step', type=positive_int, default=10)
    g.add_argument('--sample_step', type=positive_int, default=1000)
    g.add_argument('--model_save_step', type=positive_int, default=10000)
    g.add_argument('--lr_update_step', type=positive_int, default=1000)
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


def check_writable(config):
    """Fail before any work if an output folder cannot be created or written."""
    from solver import ConfigError
    flags = {'train': ('model_save_dir', 'sample_dir', 'log_dir'), 'test': ('result_dir',),
             'testAUC': ('result_dir',)}[config.mode]
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


def main(argv=None):
    """Parse flags and run the chosen mode; returns testAUC's metrics dict, else None."""
    parser = build_parser()
    config = parser.parse_args(argv)
    check_architecture(parser, config)
    if config.seed is None:
        config.seed = int.from_bytes(os.urandom(4), 'little') >> 1
    print('Options (differing from the defaults):', non_default_options(parser, config))

    import data_loader
    from solver import ConfigError, Solver
    torch.backends.cudnn.benchmark = not config.deterministic
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    seed_everything(config.seed)
    try:
        check_writable(config)
        split = data_loader.resolve_split(config)
        solver = Solver(config, split)
        if config.mode == 'train':
            solver.train()
        elif config.mode == 'test':
            solver.test()
        else:
            return solver.test_auc()
    except (data_loader.DataError, ConfigError) as e:
        # Problems the user must fix: one clear line, no traceback.
        print(f'error: {e}', file=sys.stderr)
        raise SystemExit(2)
    return None


if __name__ == '__main__':
    main()
