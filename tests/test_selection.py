"""Choosing checkpoints (healthygan/selection.py): label-free selection (held-out split, AUCp
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
from healthygan.errors import CheckpointError
from healthygan.selection import best_aucp_iters, read_aucp_log


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
        assert set(rec['AUCp_by_variant']) == set(metrics.SCORE_VARIANTS)
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
