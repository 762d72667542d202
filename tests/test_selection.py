"""Choosing checkpoints (healthygan/detection/selection.py): label-free selection (held-out split, AUCp
logged at checkpoints, best_aucp) and --ensemble N, a snapshot ensemble of the last N
checkpoints in testAUC and score modes."""
import csv
import json
import os

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import data_loader
import main as cli
import metrics
from conftest import tiny_args
from healthygan.detection.selection import best_aucp_iters, ensemble_val_auroc, read_aucp_log
from healthygan.errors import CheckpointError


def test_hold_out_depends_on_names_only():
    paths = [f'/a/img_{k}.png' for k in range(20)]
    kept, out = data_loader.hold_out(paths, 0.25)
    assert len(out) == 5 and len(kept) == 15 and not set(kept) & set(out)
    # Same names elsewhere and in another order: the same images are held out.
    moved = [p.replace('/a/', '/b/') for p in reversed(paths)]
    assert sorted(os.path.basename(p) for p in data_loader.hold_out(moved, 0.25)[1]) == \
        sorted(os.path.basename(p) for p in out)
    assert data_loader.hold_out(paths, 0) == (paths, [])
    assert len(data_loader.hold_out(paths[:1], 0.9)[0]) == 1  # never everything
    with pytest.raises(data_loader.DataError, match='holdout_fraction'):
        data_loader.hold_out(paths, 1.0)


def test_stratified_hold_out_takes_the_fraction_of_each_label():
    paths = [f'/a/img_{k}.png' for k in range(40)]
    labels = [1 if k % 4 == 0 else 0 for k in range(40)]  # 10 diseased, 30 normal
    kept, out = data_loader.hold_out(paths, 0.2, labels)
    held = [labels[paths.index(p)] for p in out]
    assert held.count(1) == 2 and held.count(0) == 6 and len(kept) == 32
    assert not set(kept) & set(out) and set(kept) | set(out) == set(paths)
    # Within a label the same name-based order as the plain hold-out.
    normals = [p for p, y in zip(paths, labels) if y == 0]
    assert sorted(p for p in out if labels[paths.index(p)] == 0) == \
        sorted(data_loader.hold_out(normals, 0.2)[1])
    # Each label keeps at least one image for training.
    assert len(data_loader.hold_out(paths[:3], 0.9, [0, 0, 1])[0]) == 2


def test_stratify_holds_out_diseased_mixed_images_and_needs_labels(tmp_path):
    root, truth = labelled_layout(tmp_path / 'data')
    parser = cli.build_parser()
    split = data_loader.resolve_split(parser.parse_args(tiny_args(
        tmp_path, root, '--holdout_fraction', '0.34', '--holdout_stratify', 'true',
        '--holdout_labels', str(root / 'mixed_truth.csv'))), 'train')
    held = [truth[os.path.basename(p)] for p in split['holdout_mixed']]
    assert held.count('anomalous') == 1 and held.count('normal') == 2  # 0.34 of 3 and of 6
    assert len(split['holdout_healthy']) == 3 and len(split['mixed']) == 6
    with pytest.raises(data_loader.DataError, match='--holdout_stratify true needs '
                                                    '--holdout_labels'):
        data_loader.resolve_split(parser.parse_args(tiny_args(
            tmp_path, root, '--holdout_fraction', '0.34', '--holdout_stratify', 'true')), 'train')


def test_aucp_matches_sklearn():
    labels, scores = [0, 0, 1, 1, 1], [0.1, 0.4, 0.35, 0.8, 0.9]
    assert metrics.aucp(labels, scores) == pytest.approx(roc_auc_score(labels, scores))


@pytest.mark.slow
def test_training_logs_aucp_and_testauc_takes_the_best(tmp_path, folder_dataset):
    args = tiny_args(tmp_path, folder_dataset, '--holdout_fraction', '0.34')
    parser = cli.build_parser()
    split = data_loader.resolve_split(parser.parse_args(args))
    assert len(split['holdout_healthy']) == 2 and len(split['holdout_mixed']) == 2
    assert not set(split['healthy']) & set(split['holdout_healthy'])
    assert not set(split['mixed']) & set(split['holdout_mixed'])

    cli.main(['--mode', 'train', *args, '--num_iters', '6', '--model_save_step', '2',
              '--sample_step', '100', '--log_step', '1', '--use_tensorboard', 'false'])
    models = tmp_path / 'run' / 'models'
    records = read_aucp_log(str(models))
    assert sorted(records) == [2, 4, 6]
    for rec in records.values():
        assert 0 <= rec['AUCp'] <= 1 and rec['n_healthy'] == 2 and rec['n_mixed'] == 2
        assert set(rec['AUCp_by_variant']) == set(metrics.SCORE_VARIANTS) - {'ref_z'}
        assert rec['AUCp'] == rec['AUCp_by_variant']['mean']
    # Make the middle checkpoint the best, then let testAUC pick it.
    with open(models / 'aucp.jsonl', 'a') as f:
        f.write(json.dumps({'iter': 4, 'AUCp': 2.0}) + '\n')
    assert best_aucp_iters(str(models)) == 4
    result = cli.main(['--mode', 'testAUC', *args, '--test_iters', 'best_aucp'])
    assert result['iteration'] == 4
    # Another score variant is ranked by its own AUCp.
    with open(models / 'aucp.jsonl', 'a') as f:
        f.write(json.dumps({'iter': 2, 'AUCp': 0.1,
                            'AUCp_by_variant': {'mean': 0.1, 'top1pct': 3.0}}) + '\n')
    assert best_aucp_iters(str(models)) == 4
    assert best_aucp_iters(str(models), variant='top1pct') == 2
    result = cli.main(['--mode', 'testAUC', *args, '--test_iters', 'best_aucp',
                       '--score_variant', 'top1pct'])
    assert result['iteration'] == 2


def test_best_aucp_without_records_is_a_clear_error(tmp_path, folder_dataset, capsys):
    args = tiny_args(tmp_path, folder_dataset, '--holdout_fraction', '0')
    cli.main(['--mode', 'train', *args, '--num_iters', '2', '--model_save_step', '2',
              '--use_tensorboard', 'false'])
    assert not (tmp_path / 'run' / 'models' / 'aucp.jsonl').exists()
    with pytest.raises(CheckpointError):
        best_aucp_iters(str(tmp_path / 'run' / 'models'))
    with pytest.raises(SystemExit) as e:
        cli.main(['--mode', 'testAUC', *args, '--test_iters', 'best_aucp'])
    assert e.value.code == 2
    assert 'holdout_fraction' in capsys.readouterr().err


# --ensemble N

def read_scores(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {r['path']: {k[len('score_'):]: float(v) for k, v in r.items() if k.startswith('score_')}
            for r in rows}


@pytest.mark.slow
def test_ensemble_scores_are_the_mean_of_the_members(tmp_path, folder_dataset):
    cli.main(tiny_args(tmp_path, folder_dataset, '--num_iters', '6', '--model_save_step', '2',
                       '--use_tensorboard', 'false'))
    single = {}
    for it in (2, 4, 6):
        out = tmp_path / f'single{it}'
        cli.main(tiny_args(tmp_path, folder_dataset, '--mode', 'testAUC', '--test_iters', str(it),
                           '--result_dir', str(out), '--report', 'false'))
        single[it] = read_scores(out / 'scores.csv')
    out = tmp_path / 'ens'
    result = cli.main(tiny_args(tmp_path, folder_dataset, '--mode', 'testAUC', '--test_iters',
                                'latest', '--ensemble', '3', '--result_dir', str(out),
                                '--report', 'false'))
    ens = read_scores(out / 'scores.csv')
    assert set(ens) == set(single[6]) and len(ens) == 8
    for path, variants in ens.items():
        assert set(variants) == set(single[6][path])
        for v, value in variants.items():
            expected = np.mean([single[it][path][v] for it in (2, 4, 6)])
            assert value == pytest.approx(expected, rel=1e-5, abs=1e-7), (path, v)
    # the members differ, so the mean is not any one of them (the test is not vacuous)
    first = next(iter(ens))
    assert single[2][first]['mean'] != pytest.approx(single[6][first]['mean'], rel=1e-4)
    saved = json.load(open(out / 'metrics.json'))
    assert saved['iteration'] == 6 and result['iteration'] == 6
    assert [p.rsplit('/', 1)[-1] for p in saved['ensemble']] == ['2-G.ckpt', '4-G.ckpt', '6-G.ckpt']
    # without --ensemble the result has no such entry: the original's single checkpoint
    assert 'ensemble' not in json.load(open(tmp_path / 'single6' / 'metrics.json'))

    # --test_iters 4 --ensemble 2: the members are 2 and 4, never a later checkpoint
    cli.main(tiny_args(tmp_path, folder_dataset, '--mode', 'testAUC', '--test_iters', '4',
                       '--ensemble', '2', '--result_dir', str(tmp_path / 'ens4'),
                       '--report', 'false'))
    ens4 = read_scores(tmp_path / 'ens4' / 'scores.csv')
    assert ens4[first]['mean'] == pytest.approx(
        (single[2][first]['mean'] + single[4][first]['mean']) / 2, rel=1e-5)

    # score mode (a folder of images) averages the same way
    cli.main(tiny_args(tmp_path, folder_dataset, '--mode', 'score', '--test_iters', 'latest',
                       '--ensemble', '3', '--score_dir', str(folder_dataset / 'test'),
                       '--result_dir', str(tmp_path / 'score'), '--report', 'false'))
    summary = json.load(open(tmp_path / 'score' / 'summary.json'))
    assert len(summary['ensemble']) == 3
    with open(tmp_path / 'score' / 'scores.csv') as f:
        scored = {r['path']: float(r['pred_score']) for r in csv.DictReader(f)}
    for path, value in scored.items():
        assert value == pytest.approx(ens[path]['mean'], rel=1e-5)


def test_ensemble_larger_than_the_checkpoints_is_a_clear_error(tmp_path, folder_dataset, capsys):
    cli.main(tiny_args(tmp_path, folder_dataset, '--num_iters', '4', '--model_save_step', '2',
                       '--use_tensorboard', 'false'))
    with pytest.raises(SystemExit) as e:
        cli.main(tiny_args(tmp_path, folder_dataset, '--mode', 'testAUC', '--test_iters', '4',
                           '--ensemble', '3'))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert '--ensemble 3: only 2 checkpoint(s)' in err and '--model_save_step' in err
    with pytest.raises(SystemExit):
        cli.main(tiny_args(tmp_path, folder_dataset, '--mode', 'testAUC', '--ensemble', '0'))
    assert '--ensemble' in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ #
#      Validation carved from the training folders: held-out images by their true labels           #
# ------------------------------------------------------------------------------------------------ #

def labelled_layout(root):
    """healthy/ (9), mixed/ (9, a third with a bright square), test/; mixed_truth.csv."""
    from conftest import write_image
    rng = np.random.default_rng(7)
    truth = {}
    for sub, n in (('healthy', 9), ('mixed', 9), ('test/normal', 2), ('test/anomalous', 2)):
        for k in range(n):
            bright = 100 if sub == 'test/anomalous' or (sub == 'mixed' and k % 3 == 0) else 0
            write_image(str(root / sub / f'{sub.replace("/", "_")}_{k}.png'), rng, bright=bright)
            if sub == 'mixed':
                truth[f'mixed_{k}.png'] = 'anomalous' if bright else 'normal'
    with open(root / 'mixed_truth.csv', 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['file', 'label'])
        w.writerows(truth.items())
    return root, truth


def test_truth_labels_are_read_by_relative_path_or_name_and_refused_when_missing(tmp_path):
    root, truth = labelled_layout(tmp_path / 'data')
    paths = [str(root / 'mixed' / 'mixed_0.png'), str(root / 'mixed' / 'mixed_1.png')]
    assert data_loader.read_truth_labels(str(root / 'mixed_truth.csv'), paths,
                                         str(root / 'mixed')) == [1, 0]
    with pytest.raises(data_loader.DataError, match='no label for the image'):
        data_loader.read_truth_labels(str(root / 'mixed_truth.csv'),
                                      [str(root / 'mixed' / 'other.png')], str(root / 'mixed'))
    (tmp_path / 'bad.csv').write_text('file,label\nmixed_0.png,maybe\n')
    with pytest.raises(data_loader.DataError, match="label 'maybe'"):
        data_loader.read_truth_labels(str(tmp_path / 'bad.csv'), paths[:1], str(root / 'mixed'))


@pytest.mark.slow
def test_validation_auroc_is_logged_and_best_val_tested_and_training_never_sees_labels(tmp_path):
    root, truth = labelled_layout(tmp_path / 'data')
    common = ['--holdout_fraction', '0.34', '--deterministic', 'true', '--use_tensorboard',
              'false', '--num_iters', '4', '--model_save_step', '2', '--sample_step', '100']
    cli.main(['--mode', 'train', *tiny_args(tmp_path / 'plain', root, *common)])
    # Labels that disagree with the images: training must not change at all.
    flipped = tmp_path / 'flipped.csv'
    flipped.write_text('file,label\n' + ''.join(
        f'{name},{"normal" if label == "anomalous" else "anomalous"}\n'
        for name, label in truth.items()))
    for name, labels in (('val', root / 'mixed_truth.csv'), ('flipped', flipped)):
        cli.main(['--mode', 'train', *tiny_args(tmp_path / name, root, *common,
                                                '--holdout_labels', str(labels))])
    import torch
    weights = {name: torch.load(tmp_path / name / 'run' / 'models' / '4-G.ckpt',
                                weights_only=True) for name in ('plain', 'val', 'flipped')}
    for name in ('val', 'flipped'):
        assert all(torch.equal(weights[name][k], weights['plain'][k]) for k in weights['plain'])

    models = tmp_path / 'val' / 'run' / 'models'
    records = read_aucp_log(str(models))
    split = data_loader.resolve_split(cli.build_parser().parse_args(
        tiny_args(tmp_path, root, '--holdout_fraction', '0.34')), 'train')
    held_anomalous = sum(truth[os.path.basename(p)] == 'anomalous'
                         for p in split['holdout_mixed'])
    assert held_anomalous > 0
    for rec in records.values():
        assert rec['n_mixed_anomalous'] == held_anomalous
        assert 0 <= rec['val_AUROC'] <= 1 and rec['val_AUROC'] == rec['val_AUROC_by_variant']['mean']
    flipped_records = read_aucp_log(str(tmp_path / 'flipped' / 'run' / 'models'))
    assert all(flipped_records[i]['AUCp'] == records[i]['AUCp'] for i in records)
    # The per-image validation scores give each checkpoint's AUROC again, and the ensemble's.
    for i, rec in records.items():
        assert rec['val_truth'] == [0] * rec['n_healthy'] + [
            int(truth[os.path.basename(p)] == 'anomalous') for p in split['holdout_mixed']]
        for v, auroc in rec['val_AUROC_by_variant'].items():
            assert ensemble_val_auroc(str(models), i, 1, v) == pytest.approx(auroc, abs=1e-6)
    pair = [np.mean([records[i]['val_scores']['lung'][k] for i in (2, 4)])
            for k in range(len(records[4]['val_truth']))]
    assert ensemble_val_auroc(str(models), 4, 2, 'lung') == pytest.approx(
        roc_auc_score(records[4]['val_truth'], pair))
    from tools import validation
    table = validation.main(['--model_save_dir', str(models), '--ensemble', '2'])
    assert [r['iter'] for r in table['checkpoints']] == [2, 4]
    assert table['checkpoints'][0]['ensemble'] == {}  # one checkpoint up to 2: no pair
    assert table['checkpoints'][1]['ensemble']['lung'] == pytest.approx(
        roc_auc_score(records[4]['val_truth'], pair))
    assert os.path.isfile(models / 'validation.json')
    # Make iteration 2 the best by validation AUROC, then let testAUC pick it.
    with open(models / 'aucp.jsonl', 'a') as f:
        f.write(json.dumps({'iter': 2, 'AUCp': 0.0, 'val_AUROC': 2.0}) + '\n')
    assert best_aucp_iters(str(models), key='val_AUROC') == 2
    result = cli.main(['--mode', 'testAUC', *tiny_args(tmp_path / 'val', root),
                       '--test_iters', 'best_val', '--report', 'false', '--bootstrap', '0'])
    assert result['iteration'] == 2
    # A run without labels has no validation records: one clear line.
    with pytest.raises(CheckpointError, match='--holdout_labels'):
        best_aucp_iters(str(tmp_path / 'plain' / 'run' / 'models'), key='val_AUROC')
