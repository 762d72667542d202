"""The training loop (healthygan/training/loop.py): runs that never lose work: exact resume,
interruption by SIGTERM, the NaN guard, bounded state files."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import main as cli
from conftest import ROOT, tiny_args


def load(path):
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize('extra', [[], ['--holdout_fraction', '0.34']], ids=['plain', 'aucp'])
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, folder_dataset, extra):
    # 12 pairs an epoch at batch 2: 8 iterations cross an epoch boundary (reshuffle) at 6.
    # With held-out images scored at every checkpoint (AUCp) the same holds: scoring must not
    # move G's running statistics.
    common = ['--deterministic', 'true', '--use_tensorboard', 'false', '--model_save_step', '3',
              *extra]
    cli.main(tiny_args(tmp_path / 'full', folder_dataset, '--num_iters', '8', *common))
    cli.main(tiny_args(tmp_path / 'part', folder_dataset, '--num_iters', '3', *common))
    assert os.path.exists(tmp_path / 'part' / 'run' / 'models' / '3-state.pt')
    cli.main(tiny_args(tmp_path / 'part', folder_dataset, '--num_iters', '8',
                       '--resume_iters', '3', *common))
    for net in ('G', 'D'):
        a = load(tmp_path / 'full' / 'run' / 'models' / f'8-{net}.ckpt')
        b = load(tmp_path / 'part' / 'run' / 'models' / f'8-{net}.ckpt')
        assert all(torch.equal(a[k], b[k]) for k in a), net  # bit for bit


def test_resume_without_state_file_falls_back_to_the_originals_behaviour(tmp_path,
                                                                          folder_dataset, capsys):
    cli.main(tiny_args(tmp_path, folder_dataset, '--num_iters', '2', '--model_save_step', '2'))
    os.remove(tmp_path / 'run' / 'models' / '2-state.pt')  # e.g. checkpoints of the original
    cli.main(tiny_args(tmp_path, folder_dataset, '--num_iters', '3', '--resume_iters', '2'))
    assert 'resuming from the weights only' in capsys.readouterr().out
    assert os.path.exists(tmp_path / 'run' / 'models' / '3-G.ckpt')


def test_keep_last_states_bounds_the_state_files(tmp_path, folder_dataset):
    cli.main(tiny_args(tmp_path, folder_dataset, '--num_iters', '5', '--model_save_step', '1',
                       '--keep_last_states', '2'))
    files = os.listdir(tmp_path / 'run' / 'models')
    assert sorted(f for f in files if f.endswith('-state.pt')) == ['4-state.pt', '5-state.pt']
    assert sum(f.endswith('-G.ckpt') for f in files) == 5  # weights are never deleted


def test_a_nan_stops_training_before_anything_non_finite_is_saved(tmp_path, folder_dataset,
                                                                   capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(tiny_args(tmp_path, folder_dataset, '--num_iters', '6', '--lambda_gp', 'nan',
                           '--model_save_step', '1', '--log_step', '1'))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert 'non-finite' in err and 'D weights' in err and 'iteration 1' in err
    assert 'no checkpoint was saved before it' in err  # none exists: no 'iteration 0'
    assert not any(f.endswith('.ckpt') for f in os.listdir(tmp_path / 'run' / 'models'))


@pytest.mark.slow
def test_sigterm_saves_and_the_run_resumes(tmp_path, folder_dataset):
    args = tiny_args(tmp_path, folder_dataset, '--num_iters', '100000', '--model_save_step',
                     '1000', '--use_tensorboard', 'false')
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'main.py'), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    stats = tmp_path / 'run' / 'logs' / 'stats.jsonl'
    deadline = time.time() + 120
    while not (stats.exists() and stats.stat().st_size > 0):  # training is under way
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert 'Interrupted by SIGTERM' in out and '--resume_iters' in out
    models = os.listdir(tmp_path / 'run' / 'models')
    k = int(next(f for f in models if f.endswith('-state.pt')).split('-')[0])
    assert {f'{k}-G.ckpt', f'{k}-D.ckpt'} <= set(models)
    cli.main(tiny_args(tmp_path, folder_dataset, '--num_iters', str(k + 2),
                       '--resume_iters', 'latest', '--use_tensorboard', 'false'))
    assert os.path.exists(tmp_path / 'run' / 'models' / f'{k + 2}-G.ckpt')
