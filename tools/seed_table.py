"""The table over seeds of `bench_nih.sh` runs (added): each run's test AUROC with its interval,
its paired lead over the best global image statistic and over the best pixel reference, the
residual AUROC after the global statistics, the validation AUROC of the same score on the
labelled validation radiographs (testAUC's --val_dir) beside them, and the mean and spread over
the runs.

    python tools/seed_table.py nih_seed0 nih_seed1 nih_seed2

reads <run>/results/metrics.json and <run>/baselines/baselines.json (both written by
`bash bench_nih.sh`), prints a Markdown table and writes nothing.

    python tools/seed_table.py --validation ref_z zl_s0 zl_s1 zl_s2

gives the same table on validation data alone (where choices are made and no test set is read):
tools/score_study.py's files in <run>/models/ (validation_images.json and its per-image scores)
and the references scored on validation/ in <run>/baselines_validation/ (bench_zhanglab.sh
writes all of them).
"""
import argparse
import csv
import json
import os
import statistics

if not __package__:  # run as python tools/x.py: the repository root on the path
    import _path  # noqa: F401

GLOBAL_STATISTICS = ('global_mean', 'global_contrast', 'global_sharpness')
PIXEL_REFERENCES = ('pca', 'knn', 'autoencoder')


def read_run(out):
    """One run's numbers: {'run', 'AUROC', 'ci', 'stat', 'lead_stat', 'ref', 'lead_ref',
    'residual'}; the best reference of each kind is the one with the highest test AUROC."""
    paths = [os.path.join(out, 'results', 'metrics.json'),
             os.path.join(out, 'baselines', 'baselines.json')]
    for path in paths:
        if not os.path.isfile(path):
            raise SystemExit(f'error: {path} not found; run `OUT={out} bash bench_nih.sh` first')
    with open(paths[0]) as f:
        result = json.load(f)
    with open(paths[1]) as f:
        baselines = json.load(f)
    methods, compare = baselines['methods'], baselines.get('compare', {}).get('methods', {})
    row = {'run': out, 'AUROC': result['image_AUROC'], 'ci': result.get('image_AUROC_ci95'),
           'residual': baselines.get('explain', {}).get('residual_AUROC'),
           'score_variant': result.get('score_variant'), 'val': None, 'val_ci': None}
    validation = result.get('validation') or {}
    if row['score_variant'] in validation.get('image_AUROC', {}):
        row['val'] = validation['image_AUROC'][row['score_variant']]
        row['val_ci'] = validation.get('image_AUROC_ci95', {}).get(row['score_variant'])
    for kind, names in (('stat', GLOBAL_STATISTICS), ('ref', PIXEL_REFERENCES)):
        present = [n for n in names if n in methods and n in compare]
        if not present:
            row[kind] = row[f'lead_{kind}'] = None
            continue
        best = max(present, key=lambda n: methods[n]['image_AUROC'])
        row[kind] = (best, methods[best]['image_AUROC'])
        row[f'lead_{kind}'] = (compare[best]['AUROC_difference'], compare[best].get('ci95'))
    return row


def _read_csv(path):
    if not os.path.isfile(path):
        raise SystemExit(f'error: {path} not found; run bench_zhanglab.sh (or tools/score_study.py '
                         f'and tools/baselines.py on validation/) for this run first')
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def read_validation(out, variant):
    """One run's validation numbers, as read_run's: the variant's AUROC of the last ensemble on
    validation/ plus the held-out mixed images, its paired lead over the best global statistic,
    the residual AUROC, and its paired lead over the best of PCA/kNN on the validation/ images
    both scored."""
    import metrics  # here: the test table needs no torch, and loads in a fraction of a second
    path = os.path.join(out, 'models', 'validation_images.json')
    if not os.path.isfile(path):
        raise SystemExit(f'error: {path} not found; run tools/score_study.py for {out} first')
    with open(path) as f:
        t = json.load(f)
    cell = t['checkpoints'][-1]['ensemble'].get(variant) or t['checkpoints'][-1]['single'].get(
        variant)
    if cell is None or variant not in t['residual']:
        raise SystemExit(f'error: {path} has no score {variant!r}; it has '
                         f'{", ".join(t["residual"])}')
    lead = t['residual'][variant]['lead_over_best_statistic']
    row = {'run': out, 'AUROC': cell['AUROC'], 'ci': cell['ci95'],
           'stat': (t['best_statistic']['name'], t['best_statistic']['AUROC']),
           'lead_stat': (lead[0], lead[1:3]), 'residual': t['residual'][variant]['residual_AUROC'],
           'score_variant': variant, 'val': None, 'val_ci': None}
    ours = {os.path.basename(r['path']): float(r[variant])
            for r in _read_csv(os.path.join(out, 'models', 'validation_images_scores.csv'))}
    refs = [r for r in _read_csv(os.path.join(out, 'baselines_validation', 'baselines_scores.csv'))
            if os.path.basename(r['path']) in ours]
    row['ref'] = row['lead_ref'] = None
    if refs:
        labels = [int(r['gt_label']) for r in refs]
        score = [ours[os.path.basename(r['path'])] for r in refs]
        aurocs = {n: metrics.image_metrics(labels, [float(r[n]) for r in refs])['image_AUROC']
                  for n in PIXEL_REFERENCES if n in refs[0]}
        best = max(aurocs, key=aurocs.get)
        d, lo, hi = metrics.paired_auroc_difference(labels, score, [float(r[best]) for r in refs])
        row['ref'], row['lead_ref'] = (best, aurocs[best]), (d, (lo, hi))
    return row


def _interval(ci):
    return f' [{ci[0]:.3f}, {ci[1]:.3f}]' if ci else ''


def _lead(lead):
    if lead is None:
        return '-'
    value, ci = lead
    return f'{value:+.3f}' + (f' [{ci[0]:+.3f}, {ci[1]:+.3f}]' if ci else '')


def table(rows):
    """The Markdown lines: a row per run, then the mean and standard deviation."""
    lines = ['| run | test AUROC [95% CI] | lead over the best global statistic | lead over '
             'the best of PCA/kNN/autoencoder | residual AUROC after the global statistics | '
             'validation AUROC [95% CI] |',
             '|---|---|---|---|---|---|']
    for r in rows:
        stat = f"{r['stat'][0]} {r['stat'][1]:.3f}: " if r['stat'] else ''
        ref = f"{r['ref'][0]} {r['ref'][1]:.3f}: " if r['ref'] else ''
        residual = f"{r['residual']:.3f}" if r['residual'] is not None else '-'
        val = f"{r['val']:.3f}{_interval(r['val_ci'])}" if r['val'] is not None else '-'
        lines.append(f"| {r['run']} | {r['AUROC']:.3f}{_interval(r['ci'])} | {stat}"
                     f"{_lead(r['lead_stat'])} | {ref}{_lead(r['lead_ref'])} | {residual} | "
                     f"{val} |")
    if len(rows) > 1:
        def spread(values):
            values = [v for v in values if v is not None]
            if len(values) < 2:
                return '-'
            return f'{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}'
        lines.append(f"| mean ± sd over {len(rows)} | {spread([r['AUROC'] for r in rows])} | "
                     f"{spread([r['lead_stat'][0] if r['lead_stat'] else None for r in rows])} | "
                     f"{spread([r['lead_ref'][0] if r['lead_ref'] else None for r in rows])} | "
                     f"{spread([r['residual'] for r in rows])} | "
                     f"{spread([r['val'] for r in rows])} |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('runs', nargs='+', help="bench_nih.sh's OUT folders")
    p.add_argument('--validation', metavar='SCORE', default=None,
                   help='the table of this score on validation data instead of the test set')
    args = p.parse_args(argv)
    if args.validation:
        rows = [read_validation(out, args.validation) for out in args.runs]
        lines = table(rows)
        lines[0] = lines[0].replace(' validation AUROC [95% CI] |', ' - |').replace(
            'test AUROC', 'validation AUROC')
        print('\n'.join(lines))
        return rows
    rows = [read_run(out) for out in args.runs]
    print('\n'.join(table(rows)))
    return rows


if __name__ == '__main__':
    main()
