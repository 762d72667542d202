"""The ``healthygan`` command: ``healthygan MODE [flags]`` runs main.py's program in that mode
(``python main.py --mode MODE [flags]``), so that an installed package needs no clone.
``healthygan export`` (added, not one of main.py's modes) writes a trained detector as a file
another program runs without this package."""
import argparse
import difflib
import os
import sys

from healthygan.version import __version__

# The modes of cli.main, in the order a user meets them.
MODES = {
    'train': 'train G and D on DIR/healthy/ and DIR/mixed/ (or the COVIDx lists)',
    'test': 'translation grids of anomalous and normal test images',
    'testAUC': 'score the labelled test set: AUROC, metrics.json, scores.csv, maps, report',
    'score': 'score unlabelled images (--score_dir DIR): scores.csv, maps, report',
}
# The command's own modes, beside main.py's.
OWN_MODES = {
    'export': 'write a run folder or detector file as TorchScript (and ONNX with onnx installed)',
}
HELP = ('-h', '--help', 'help')


def usage():
    """The short usage: the modes, and where each mode's flags are listed."""
    modes = {**MODES, **OWN_MODES}
    width = max(map(len, modes))
    return '\n'.join(
        [f'usage: healthygan {{{",".join(modes)}}} [flags]', '',
         'HealthyGAN: anomaly detection in radiographs learned from healthy and unannotated '
         'images.', '', 'modes:']
        + [f'  {mode:<{width}}  {text}' for mode, text in modes.items()]
        + ['', 'The flags of a mode (those of main.py): healthygan MODE --help',
           f'healthygan --version: {__version__}'])


def unknown_mode(word):
    """One line for a first word that is no mode, with the nearest mode when there is one."""
    if word.startswith('-'):
        return (f'error: the mode comes first: healthygan MODE {word} ..., MODE one of '
                f'{", ".join(MODES)} (healthygan --help)')
    modes = [*MODES, *OWN_MODES]
    close = [m for m in modes if m.lower() == word.lower()] or \
        difflib.get_close_matches(word, modes, n=1)
    hint = f'; did you mean {close[0]}?' if close else ''
    return (f'error: unknown mode {word!r}: choose one of {", ".join(modes)} '
            f'(healthygan --help){hint}')


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, as main.py's problems are."""

    def error(self, message):
        print(f'error: {self.prog}: {message} ({self.prog} --help)', file=sys.stderr)
        raise SystemExit(2)


def export_parser():
    p = OneLineParser(prog='healthygan export', description=(
        'Write a trained detector (a run folder, shipped weights or a detector file, read as '
        'healthygan.load reads them) as TorchScript: forward(x) takes a batch [N, 3, S, S] in '
        '[-1, 1] and returns (score [N], map [N, 1, S, S]); and as ONNX beside it (.onnx) '
        'where the onnx package is installed.'))
    p.add_argument('detector', help='run folder (--model_save_dir), shipped weights or a '
                                    'detector file')
    p.add_argument('--out', required=True, help='the TorchScript file to write (FILE.pt)')
    p.add_argument('--test_iters', default=None, help="checkpoint: a number, 'latest', "
                   "'best_aucp' or 'best_val' (default: the folder's detector.json, else latest)")
    p.add_argument('--ensemble', type=int, default=None,
                   help="snapshot ensemble of the N checkpoints up to it (default: detector.json's, "
                        "else 1)")
    p.add_argument('--score_variant', default=None,
                   help="the exported score (default: detector.json's, else mean)")
    p.add_argument('--onnx', choices=['auto', 'true', 'false'], default='auto',
                   help='also write FILE.onnx: auto (where onnx is installed), true, false')
    return p


def export(argv):
    """healthygan export DETECTOR --out FILE.pt: 0, or 2 with one line."""
    from healthygan.detection import api, export as exporting
    from healthygan.errors import ConfigError, DataError
    try:
        args = export_parser().parse_args(argv)
    except SystemExit as e:  # a usage error (its one line printed) or --help
        return e.code
    if args.onnx == 'true' and not exporting.onnx_available():
        print("error: --onnx true needs the onnx package: pip install 'healthygan[onnx]' (or "
              "--onnx false)", file=sys.stderr)
        return 2
    onnx_path = os.path.splitext(args.out)[0] + '.onnx'
    try:
        det = api.load(args.detector, args.test_iters, args.ensemble, args.score_variant,
                       device='cpu')
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        exporting.to_torchscript(det, args.out)
        written = [args.out]
        if args.onnx != 'false' and exporting.onnx_available():
            exporting.to_onnx(det, onnx_path)
            written.append(onnx_path)
    except (ConfigError, DataError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except OSError as e:
        print(f'error: {e.filename or args.out}: {e.strerror}; choose another --out',
              file=sys.stderr)
        return 2
    print(f'Exported {det.extra_repr()} to {", ".join(written)}')
    return 0


def main(argv=None):
    """Run ``healthygan MODE [flags]``; returns the exit status (0, or 2 for a usage error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    if argv[0] in HELP:
        print(usage())
        return 0
    if argv[0] == '--version':
        print(f'healthygan {__version__}')
        return 0
    mode, flags = argv[0], argv[1:]
    if mode == 'export':
        return export(flags)
    if mode == '--mode' or mode.startswith('--mode='):
        # main.py's own form (its --help prints it): taken as it is
        mode, flags = None, argv
    elif mode not in MODES:
        print(unknown_mode(mode), file=sys.stderr)
        return 2
    elif any(f == '--mode' or f.startswith('--mode=') for f in flags):
        print(f'error: --mode given after the mode {mode!r}: name the mode once, as the first '
              f'word (healthygan {mode} [flags])', file=sys.stderr)
        return 2
    from healthygan import cli  # the program and its parser load only when a mode runs
    cli.main(flags if mode is None else ['--mode', mode, *flags])
    return 0


if __name__ == '__main__':
    sys.exit(main())
