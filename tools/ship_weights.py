"""Package a trained run's generator as weights to ship (pretrained/nih-cxr-mini): the G files
of a snapshot ensemble, the run record, the lung prior and the held-out healthy scores (the
label-free reference, aucp.jsonl), detector.json naming the checkpoint, ensemble and score, the
same detector as one file (detector_<members>_<size>px_<score>.pt, healthygan.load(FILE)) and
expected_scores.csv, computed from that file: the scores of a few images that tests/test_api.py checks the shipped weights
against. D, the optimizer states and the logs stay behind.

Usage: python tools/ship_weights.py --run nih_run/models --test_iters 5500 --ensemble 4 \
    --out pretrained/nih-cxr-mini --images datasets/nih-cxr-mini/test/anomalous/a.png ...
"""
import argparse
import csv
import json
import os
import shutil
import sys
import tempfile

if not __package__:  # run as python tools/x.py: the repository root on the path
    import _path  # noqa: F401

import healthygan  # noqa: E402
from healthygan.detection.anomaly import VARIANTS  # noqa: E402
from healthygan.detection.api import DETECTOR_FILE  # noqa: E402
from healthygan.flags import positive_int  # noqa: E402
from healthygan.detection.detector import detector_file  # noqa: E402
from healthygan.detection.lung import LUNG_PRIOR_FILE  # noqa: E402
from healthygan.detection.pixel_reference import reference_file  # noqa: E402
from healthygan.detection.selection import AUCP_LOG, ensemble_members  # noqa: E402
from healthygan.errors import ConfigError, DataError  # noqa: E402
from healthygan.training import checkpoint_sets, run_record  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def portable_record(record, run):
    """The run record with this machine's absolute paths written relative to the clone (or to
    the run folder where they lie outside it), so that the shipped file names no machine."""
    def portable(value):
        if isinstance(value, str) and os.path.isabs(value):
            if value.startswith(ROOT + os.sep):
                return os.path.relpath(value, ROOT)
            if value == os.path.abspath(run):
                return '<run>'
            if value.startswith(os.path.abspath(run) + os.sep):
                return os.path.join('<run>', os.path.relpath(value, os.path.abspath(run)))
            return os.path.join('<elsewhere>', os.path.basename(value))
        if isinstance(value, dict):
            return {k: portable(v) for k, v in value.items()}
        if isinstance(value, list):
            return [portable(v) for v in value]
        return value
    out = portable(record)
    out['command'] = ' '.join(portable(record.get('command', '').split()))
    return out


def check_inputs(args):
    """One line saying what is missing or wrong before anything is written, or None."""
    if not os.path.isdir(args.run):
        return f'--run {args.run} is not a folder: give the run\'s --model_save_dir'
    if run_record.run_architecture(args.run) is None:
        return (f'--run {args.run} has no readable run_config.json (the architecture); give a '
                f'folder this program trained into')
    if not os.path.isfile(os.path.join(args.run, LUNG_PRIOR_FILE)):
        return (f'{os.path.join(args.run, LUNG_PRIOR_FILE)} not found: every run this program '
                f'trains saves it; copy it from the run')
    if not os.path.isfile(os.path.join(args.run, AUCP_LOG)):
        return (f'{os.path.join(args.run, AUCP_LOG)} not found: the healthy reference comes '
                f'from it; ship a run trained with --holdout_fraction > 0')
    for path in args.images:
        if not os.path.isfile(path):
            return f'--images: {path} is not an image file'
    return None


def write_package(args, members, pixels, out):
    """Every shipped file into the folder out."""
    for i in members:
        shutil.copy2(os.path.join(args.run, f'{i}-G.ckpt'), out)
    shutil.copy2(os.path.join(args.run, LUNG_PRIOR_FILE), out)
    if os.path.exists(pixels):
        shutil.copy2(pixels, out)
    with open(os.path.join(args.run, AUCP_LOG)) as f:  # only the shipped checkpoints' lines
        lines = [line for line in f if line.strip() and json.loads(line).get('iter') in members]
    with open(os.path.join(out, AUCP_LOG), 'w') as f:
        f.writelines(lines)
    with open(os.path.join(args.run, 'run_config.json')) as f:
        record = json.load(f)
    with open(os.path.join(out, 'run_config.json'), 'w') as f:
        json.dump(portable_record(record, args.run), f, indent=1)
    with open(os.path.join(out, DETECTOR_FILE), 'w') as f:
        json.dump({'test_iters': args.test_iters, 'ensemble': args.ensemble,
                   'score_variant': args.score_variant}, f, indent=1)
    # the same detector as one file, which the expected scores are computed from
    det = healthygan.load(out)
    one_file = os.path.join(out, detector_file(members, det.image_size, det.variant))
    det.save(one_file)
    det = healthygan.load(one_file)
    with open(os.path.join(out, 'expected_scores.csv'), 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['path', 'score', 'healthy_percentile'])
        for path in args.images:
            r = det.score(path)
            w.writerow([os.path.relpath(os.path.abspath(path), ROOT), f'{r.score:.8f}',
                        f'{r.percentile:.2f}'])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--run', required=True, help="the run's --model_save_dir")
    p.add_argument('--test_iters', type=int, required=True)
    p.add_argument('--ensemble', type=positive_int, default=1)
    p.add_argument('--score_variant', default='mean', choices=list(VARIANTS))
    p.add_argument('--out', required=True)
    p.add_argument('--images', nargs='+', required=True, help='images for expected_scores.csv')
    args = p.parse_args(argv)
    if os.path.exists(args.out) and os.listdir(args.out):
        raise SystemExit(f'error: {args.out} is not empty; remove it first')
    problem = check_inputs(args)
    if problem:
        raise SystemExit(f'error: {problem}')
    try:
        members = ensemble_members(args.run, args.test_iters, args.ensemble)
    except ConfigError as e:
        raise SystemExit(f'error: {e}') from None
    missing = [i for i in members if not os.path.isfile(os.path.join(args.run, f'{i}-G.ckpt'))]
    if missing:
        raise SystemExit(f'error: --test_iters {args.test_iters}: no {missing[0]}-G.ckpt in '
                         f'{args.run} (its checkpoints: {checkpoint_sets.available_iters(args.run)})')
    # the 'ref_z' score's reference of these checkpoints, where it was built
    pixels = os.path.join(args.run, reference_file(
        members, run_record.run_architecture(args.run)['image_size']))
    if args.score_variant == 'ref_z' and not os.path.exists(pixels):
        raise SystemExit(f'error: {pixels} not found; build it first (main.py --mode score '
                         f'--score_variant ref_z on the run)')
    # Written beside --out and renamed at the end: a failed try leaves no half-written --out.
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(out)}.', dir=os.path.dirname(out))
    try:
        write_package(args, members, pixels, staging)
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above)
        os.rename(staging, out)
    except (ConfigError, DataError, OSError, ValueError) as e:
        raise SystemExit(f'error: nothing written to {args.out}: {e}') from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already where it was renamed
    print(f'{healthygan.load(out)}\nwritten to {args.out}: '
          + ', '.join(sorted(os.listdir(out))))
    return 0


if __name__ == '__main__':
    sys.exit(main())
