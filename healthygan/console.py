"""The ``healthygan`` command: ``healthygan MODE [flags]`` runs main.py's program in that mode
(``python main.py --mode MODE [flags]``), so that an installed package needs no clone."""
import difflib
import sys

from healthygan.version import __version__

# The modes of cli.main, in the order a user meets them.
MODES = {
    'train': 'train G and D on DIR/healthy/ and DIR/mixed/ (or the COVIDx lists)',
    'test': 'translation grids of anomalous and normal test images',
    'testAUC': 'score the labelled test set: AUROC, metrics.json, scores.csv, maps, report',
    'score': 'score unlabelled images (--score_dir DIR): scores.csv, maps, report',
}
HELP = ('-h', '--help', 'help')


def usage():
    """The short usage: the modes, and where each mode's flags are listed."""
    width = max(map(len, MODES))
    return '\n'.join(
        [f'usage: healthygan {{{",".join(MODES)}}} [flags]', '',
         'HealthyGAN: anomaly detection in radiographs learned from healthy and unannotated '
         'images.', '', 'modes:']
        + [f'  {mode:<{width}}  {text}' for mode, text in MODES.items()]
        + ['', 'The flags of a mode (those of main.py): healthygan MODE --help',
           f'healthygan --version: {__version__}'])


def unknown_mode(word):
    """One line for a first word that is no mode, with the nearest mode when there is one."""
    if word.startswith('-'):
        return (f'error: the mode comes first: healthygan MODE {word} ..., MODE one of '
                f'{", ".join(MODES)} (healthygan --help)')
    close = [m for m in MODES if m.lower() == word.lower()] or \
        difflib.get_close_matches(word, MODES, n=1)
    hint = f'; did you mean {close[0]}?' if close else ''
    return (f'error: unknown mode {word!r}: choose one of {", ".join(MODES)} '
            f'(healthygan --help){hint}')


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
