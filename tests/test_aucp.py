"""Label-free checkpoint selection: held-out split, AUCp logged at checkpoints, best_aucp."""
import json
import os

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
