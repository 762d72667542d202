"""The command line's argument types and help format, shared by the parser's groups (cli.py,
fast.py's speed switches) and the tools that take the same flags."""
import argparse


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
    """An iteration number, 'latest' (the newest checkpoint in --model_save_dir), 'best_aucp'
    (the highest label-free AUCp logged during training) or 'best_val' (the highest validation
    AUROC, with --holdout_labels)."""
    if v in ('latest', 'best_aucp', 'best_val'):
        return v
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an iteration number, 'latest', 'best_aucp' or 'best_val', got {v!r}")
    if n < 0:
        raise argparse.ArgumentTypeError(f'expected a non-negative iteration, got {n}')
    return n


def positive_int(v):
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {v}')
    return n


SEED_LIMIT = 2 ** 32  # numpy's seeds; the data order multiplies the seed, so it must stay small


def seed(v):
    """A random seed: an integer from 0 to 2**32 - 1."""
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected an integer seed, got {v!r}')
    if not 0 <= n < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f'expected a seed from 0 to {SEED_LIMIT - 1}, got {v}')
    return n


def percentile(v):
    """A percentile: a number from 0 to 100."""
    try:
        x = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a percentile from 0 to 100, got {v!r}')
    if not 0 <= x <= 100:  # NaN fails this too
        raise argparse.ArgumentTypeError(f'expected a percentile from 0 to 100, got {v}')
    return x


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each default, except where a flag has none (None: decided at run time)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)
