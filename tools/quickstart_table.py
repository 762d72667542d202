"""The table of tools/bench_quickstart.sh's runs: for each demo run below a folder, its image
AUROC, the pixel AUROC of its anomaly map and of G's mask alone, and its wall time; then the
mean and range of each column.

Usage: python tools/quickstart_table.py quickstart_runs
"""
import argparse
import json
import os
import sys

COLUMNS = [('image_AUROC', 'image AUROC'), ('pixel_AUROC', 'pixel AUROC (map)'),
           ('mask_pixel_AUROC', "pixel AUROC (G's mask)")]


def read_run(folder):
    """{column: value} of one demo run folder, or None where it has no results yet."""
    path = os.path.join(folder, 'results', 'metrics.json')
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        metrics = json.load(f)
    row = {key: metrics.get(key) for key, _ in COLUMNS}
    wall = os.path.join(folder, 'wall_seconds')
    row['wall'] = int(open(wall).read()) if os.path.isfile(wall) else None
    return row


def table(root):
    """Markdown lines: one row per run, then mean and range."""
    runs = {name: read_run(os.path.join(root, name)) for name in sorted(os.listdir(root))
            if os.path.isdir(os.path.join(root, name, 'results'))}
    runs = {name: row for name, row in runs.items() if row}
    if not runs:
        raise SystemExit(f'error: no finished demo run (results/metrics.json) below {root}')
    head = ['run'] + [title for _, title in COLUMNS] + ['wall time']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]

    def fmt(v):
        return '-' if v is None else f'{v:.3f}'

    for name, row in runs.items():
        wall = '-' if row['wall'] is None else f"{row['wall'] // 60} min {row['wall'] % 60} s"
        lines.append('| ' + ' | '.join([name] + [fmt(row[k]) for k, _ in COLUMNS] + [wall])
                     + ' |')
    summary = []
    for key, _ in COLUMNS:
        values = [row[key] for row in runs.values() if row[key] is not None]
        summary.append(f'{sum(values) / len(values):.3f} ({min(values):.3f} to {max(values):.3f})'
                       if values else '-')
    walls = [row['wall'] for row in runs.values() if row['wall'] is not None]
    lines.append('| mean (range) | ' + ' | '.join(summary) + ' | '
                 + (f'at most {max(walls) // 60} min {max(walls) % 60} s' if walls else '-')
                 + ' |')
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('root', help="tools/bench_quickstart.sh's OUT folder")
    args = p.parse_args(argv)
    if not os.path.isdir(args.root):
        raise SystemExit(f'error: {args.root} is not a folder')
    print('\n'.join(table(args.root)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
