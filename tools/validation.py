"""The validation table of a run trained with --holdout_labels (added): for every checkpoint and
score variant, the validation AUROC of that checkpoint alone and of the snapshot ensemble of the
last --ensemble checkpoints up to it, read from <model_save_dir>/aucp.jsonl. No image is read and
the test set is never touched: choices made with this table are made on validation data.

    python tools/validation.py --model_save_dir nih_run/models --ensemble 4

prints the table and the best (checkpoint, variant) of each, and writes validation.json beside
the log.
"""
import argparse
import json
import os
import sys

if not __package__:  # run as python tools/x.py: the repository root on the path
    import _path  # noqa: F401

from healthygan.detection.selection import (AUCP_LOG, aucp_of, ensemble_members,  # noqa: E402
                                            ensemble_val_auroc, read_aucp_log)
from healthygan.errors import ConfigError  # noqa: E402


def validation_table(model_save_dir, ensemble):
    """{'checkpoints': [{'iter', 'single': {variant: AUROC}, 'ensemble': {variant: AUROC}}],
    'best_single': (iter, variant, AUROC), 'best_ensemble': (...)} from the log alone."""
    records = read_aucp_log(model_save_dir)
    rows = []
    for i in sorted(records):
        variants = sorted(records[i].get('val_AUROC_by_variant', {}))
        if not variants:
            continue
        row = {'iter': i, 'n_mixed_anomalous': records[i].get('n_mixed_anomalous'),
               'single': {v: aucp_of(records[i], v, 'val_AUROC') for v in variants}}
        if ensemble > 1:
            try:
                ensemble_members(model_save_dir, i, ensemble)
            except ConfigError:
                row['ensemble'] = {}  # fewer than `ensemble` checkpoints up to i
            else:
                row['ensemble'] = {v: ensemble_val_auroc(model_save_dir, i, ensemble, v)
                                   for v in variants}
        rows.append(row)
    if not rows:
        raise ConfigError(f'{os.path.join(model_save_dir, AUCP_LOG)} holds no validation '
                              f'AUROC: train with --holdout_fraction > 0 and --holdout_labels')
    table = {'model_save_dir': model_save_dir, 'ensemble': ensemble, 'checkpoints': rows}
    for kind in ('single', 'ensemble'):
        cells = [(r['iter'], v, a) for r in rows for v, a in r.get(kind, {}).items()
                 if a is not None]
        if cells:  # ties: the later checkpoint
            table[f'best_{kind}'] = max(cells, key=lambda c: (c[2], c[0]))
    return table


def print_table(table):
    rows = table['checkpoints']
    variants = sorted({v for r in rows for v in r['single']})
    n = table['ensemble']
    print(f"Validation AUROC (held-out healthy + mixed by their true labels), "
          f"{table['model_save_dir']}; 'ens': the last {n} checkpoints' scores averaged")
    head = ''.join(f'{v:>10}' + (f'{"ens":>7}' if n > 1 else '') for v in variants)
    print(f'{"iter":>7}{head}')
    for r in rows:
        cells = ''
        for v in variants:
            cells += f"{r['single'].get(v, float('nan')):>10.3f}"
            if n > 1:
                e = r.get('ensemble', {}).get(v)
                cells += f'{e:>7.3f}' if e is not None else f'{"-":>7}'
        print(f"{r['iter']:>7}{cells}")
    for kind in ('single', 'ensemble'):
        if f'best_{kind}' in table:
            i, v, a = table[f'best_{kind}']
            print(f'best {kind}: iteration {i}, {v}: {a:.4f}')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model_save_dir', required=True, help="a run's checkpoint folder")
    p.add_argument('--ensemble', type=int, default=4,
                   help="the snapshot ensemble's size, as testAUC's --ensemble (1: none)")
    args = p.parse_args(argv)
    try:
        table = validation_table(args.model_save_dir, args.ensemble)
    except ConfigError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    print_table(table)
    with open(os.path.join(args.model_save_dir, 'validation.json'), 'w') as f:
        json.dump(table, f, indent=1)
    return table


if __name__ == '__main__':
    main()
