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


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each default, except where a flag has none (None: decided at run time)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)
