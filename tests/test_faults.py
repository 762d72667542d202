"""Faults a careful user meets, each on a tiny run through the real CLI: every one ends in one
clear line (no traceback) or is handled, and no earlier checkpoint is lost (issue 19)."""
import errno
import glob
import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch

import main as cli
from conftest import ROOT, tiny_args

QUIET = ('--use_tensorboard', 'false', '--sample_step', '1000')


def run(capsys, argv):
    """main(argv): (exit code, stdout, stderr); stderr must never hold a traceback."""
    code = 0
    try:
        cli.main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert 'Traceback' not in err
    return code, out, err


def error_line(err):
    """The one 'error: ...' line of a refused run (warnings may precede it)."""
    lines = [l for l in err.splitlines() if l.startswith('error: ')]
    assert len(lines) == 1, err
    assert err.rstrip().endswith(lines[0]), err  # nothing after it
    return lines[0]


def digests(folder):
    """{name: sha256} of the checkpoint files in a folder: what must never be lost."""
    return {os.path.basename(p): hashlib.sha256(open(p, 'rb').read()).hexdigest()
            for p in glob.glob(os.path.join(folder, '*')) if p.endswith(('.ckpt', '.pt'))}


def train(tmp_path, data, *extra):
    return tiny_args(tmp_path, data, *QUIET, *extra)


@pytest.fixture
def run2(tmp_path, folder_dataset, capsys):
    """A finished 4-iteration run with complete sets at 2 and 4; its models folder."""
    code, _, _ = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '4',
                                   '--model_save_step', '2', '--log_step', '2'))
    assert code is None or code == 0
    return tmp_path / 'run' / 'models'


# ---- 1. run folders -------------------------------------------------------------------------- #

def test_a_new_run_into_a_used_folder_is_refused_and_overwrite_moves_the_old_run_aside(
        tmp_path, folder_dataset, capsys, run2):
    before = digests(run2)
    code, _, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '2'))
    line = error_line(err)
    assert code == 2 and str(run2) in line
    assert '--resume_iters' in line and '--overwrite true' in line
    assert digests(run2) == before
    code, _, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '2',
                                     '--overwrite', 'true'))
    assert code in (None, 0)
    aside, = glob.glob(str(run2 / 'replaced-*'))
    assert digests(aside) == before  # moved, never deleted
    assert os.path.exists(os.path.join(aside, 'stats.jsonl'))  # the old run's losses too
    assert '4-G.ckpt' not in os.listdir(run2)  # 'latest' is now the new run's
    assert json.load(open(run2 / 'run_config.json'))['config']['num_iters'] == 2


def test_a_folder_with_only_samples_and_logs_is_not_a_conflict(tmp_path, folder_dataset, capsys):
    models = tmp_path / 'run' / 'models'
    os.makedirs(models)
    (models / 'notes.txt').write_text('x')
    os.makedirs(tmp_path / 'run' / 'samples')
    (tmp_path / 'run' / 'samples' / '1000-images.jpg').write_bytes(b'x')
    code, _, _ = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '1'))
    assert code in (None, 0) and (models / '1-G.ckpt').exists()


def test_a_resume_from_before_later_checkpoints_is_refused(tmp_path, folder_dataset, capsys,
                                                          run2):
    before = digests(run2)
    code, _, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '3',
                                     '--resume_iters', '2', '--model_save_step', '2'))
    line = error_line(err)
    assert code == 2 and '4-G.ckpt' in line and '--overwrite true' in line
    assert digests(run2) == before


def test_a_stale_lock_is_taken_over_and_a_live_one_refuses(tmp_path, folder_dataset, capsys):
    models = tmp_path / 'run' / 'models'
    os.makedirs(models)
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()  # its pid is no longer alive
    import socket
    (models / '.healthygan.lock').write_text(json.dumps({'pid': dead.pid,
                                                         'host': socket.gethostname()}))
    code, _, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '1'))
    assert code in (None, 0) and 'stale lock' in err
    assert not (models / '.healthygan.lock').exists()  # released at the end
    alive = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        (models / '.healthygan.lock').write_text(json.dumps({'pid': alive.pid,
                                                             'host': socket.gethostname()}))
        code, _, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '2',
                                         '--resume_iters', 'latest'))
        line = error_line(err)
        assert code == 2 and 'in use by another run' in line and str(alive.pid) in line
    finally:
        alive.kill()
        alive.wait()


@pytest.mark.slow
def test_two_runs_into_one_folder_the_second_is_refused_and_a_kill_loses_nothing(
        tmp_path, folder_dataset, capsys):
    args = train(tmp_path, folder_dataset, '--num_iters', '100000', '--model_save_step', '1',
                 '--log_step', '1')
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'main.py'), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'})
    models = tmp_path / 'run' / 'models'
    deadline = time.time() + 120
    while len(glob.glob(str(models / '*-G.ckpt'))) < 3:  # training and saving
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    code, _, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '2',
                                     '--overwrite', 'true'))
    assert code == 2 and 'in use by another run' in error_line(err)
    proc.kill()  # SIGKILL: no handler runs, a save may be cut anywhere
    proc.wait()
    assert 'Traceback' not in proc.stderr.read()
    done = sorted(int(os.path.basename(p).split('-')[0])
                  for p in glob.glob(str(models / '*-D.ckpt')))
    code, out, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', str(done[-1] + 1),
                                       '--resume_iters', 'latest'))
    assert code in (None, 0), err
    assert f'from step {done[-1]}' in out
    assert not glob.glob(str(models / '*.tmp'))


# ---- 2. checkpoint sets ---------------------------------------------------------------------- #

def test_a_full_disk_during_a_save_keeps_earlier_sets_and_says_so_in_one_line(
        tmp_path, folder_dataset, capsys, monkeypatch, run2):
    before = digests(run2)
    real_save = torch.save

    def full_disk(obj, path, *a, **k):  # a real full disk cannot be made here
        if os.path.basename(str(path)).startswith('6-D'):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, 'save', full_disk)
    code, _, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '6',
                                     '--model_save_step', '2', '--resume_iters', 'latest'))
    line = error_line(err)
    assert code == 2 and str(run2) in line and 'No space left' in line
    assert digests(run2) == before  # 6-G.ckpt never appears without its D
    assert not glob.glob(str(run2 / '*.tmp'))


def test_a_full_disk_while_writing_a_sample_is_one_line(tmp_path, folder_dataset, capsys,
                                                       monkeypatch, run2):
    from healthygan.training import loop as training
    before = digests(run2)

    def full_disk(grid, path, **k):  # a real full disk cannot be made here
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(training, 'save_image', full_disk)
    code, _, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '6',
                                     '--resume_iters', 'latest', '--sample_step', '1'))
    line = error_line(err)
    assert code == 2 and 'No space left' in line and '5-images.jpg' in line
    assert digests(run2) == before


def test_an_incomplete_set_is_never_latest_and_a_missing_critic_is_refused(
        tmp_path, folder_dataset, capsys, run2):
    os.remove(run2 / '4-D.ckpt')  # what a kill between the old separate saves left
    code, _, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '5',
                                     '--resume_iters', '4'))
    line = error_line(err)
    assert code == 2 and '4-D.ckpt' in line and 'critic' in line
    # latest skips the incomplete set, with a warning, and resumes from 2 (later files aside)
    code, out, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '3',
                                       '--resume_iters', 'latest', '--overwrite', 'true'))
    assert code in (None, 0) and 'incomplete' in err and 'from step 2' in out


def test_stale_temporaries_are_removed_and_a_complete_state_beside_one_is_found(
        tmp_path, folder_dataset, capsys, run2):
    (run2 / '4-state.pt.tmp').write_bytes(b'torn')  # an interrupted rewrite of a complete file
    (run2 / '6-G.ckpt.tmp').write_bytes(b'torn')
    code, out, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '5',
                                       '--resume_iters', 'latest'))
    assert code in (None, 0)
    assert 'from step 4' in out and 'weights only' not in out  # the state file was used
    assert not glob.glob(str(run2 / '*.tmp')) and 'temporary' in err


# ---- 3. resume consistency ------------------------------------------------------------------- #

@pytest.mark.parametrize('flag,value', [('--g_lr', '0.001'), ('--batch_size', '3'),
                                        ('--seed', '7'), ('--lambda_rec', '5')])
def test_a_resume_that_changes_the_run_is_refused_by_flag_and_values(
        tmp_path, folder_dataset, capsys, run2, flag, value):
    argv = train(tmp_path, folder_dataset, '--num_iters', '6', '--resume_iters', 'latest')
    argv += [flag, value]
    code, _, err = run(capsys, argv)
    line = error_line(err)
    assert code == 2 and flag.lstrip('-') in line and value in line and '--allow_changes' in line


def test_an_allowed_change_is_recorded(tmp_path, folder_dataset, capsys, run2):
    code, _, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '5',
                                     '--resume_iters', 'latest', '--g_lr', '0.001',
                                     '--allow_changes', 'g_lr'))
    assert code in (None, 0), err
    record = json.load(open(run2 / 'run_config-resume4.json'))
    assert record['accepted_changes'] == {'g_lr': [0.0001, 0.001]}
    assert torch.load(run2 / '5-state.pt', weights_only=True)['metadata'][
        'accepted_changes'] == {'g_lr': [0.0001, 0.001]}


def test_a_resume_without_seed_takes_the_runs_seed(tmp_path, folder_dataset, capsys, run2):
    argv = train(tmp_path, folder_dataset, '--num_iters', '5', '--resume_iters', 'latest')
    del argv[argv.index('--seed'):argv.index('--seed') + 2]
    code, _, err = run(capsys, argv)
    assert code in (None, 0), err
    assert json.load(open(run2 / 'run_config-resume4.json'))['config']['seed'] == 0


def test_a_state_file_of_another_run_or_architecture_is_refused(tmp_path, folder_dataset,
                                                                  capsys, run2):
    os.replace(run2 / '4-state.pt', run2 / '2-state.pt')  # iteration 4's state named as 2
    os.remove(run2 / '4-D.ckpt')
    code, _, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '3',
                                     '--resume_iters', '2', '--overwrite', 'true'))
    line = error_line(err)
    assert code == 2 and 'iteration 4, not 2' in line
    # a state file written by a critic of another width, beside this run's weights
    other = tmp_path / 'other'
    run(capsys, tiny_args(other, folder_dataset, *QUIET, '--num_iters', '2', '--d_conv_dim', '8'))
    os.replace(other / 'run' / 'models' / '2-state.pt', run2 / '2-state.pt')
    code, _, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '3',
                                     '--resume_iters', '2', '--overwrite', 'true'))
    line = error_line(err)
    assert code == 2 and 'd_conv_dim' in line and '8' in line


def test_num_iters_not_above_the_checkpoint_is_refused(tmp_path, folder_dataset, capsys, run2):
    code, out, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '3',
                                       '--resume_iters', 'latest'))
    assert code == 2 and '--num_iters 3' in error_line(err) and 'Training finished' not in out


# ---- 4. torn logs ---------------------------------------------------------------------------- #

def test_a_torn_aucp_log_is_read_with_a_warning_and_repaired_on_resume(tmp_path, folder_dataset,
                                                                       capsys):
    argv = train(tmp_path, folder_dataset, '--holdout_fraction', '0.34', '--model_save_step', '2')
    run(capsys, [*argv, '--num_iters', '4'])
    models = tmp_path / 'run' / 'models'
    stats = tmp_path / 'run' / 'logs' / 'stats.jsonl'
    with open(models / 'aucp.jsonl', 'a') as f:
        f.write('{"iter": 6, "AU')  # a kill in the middle of a write
    with open(stats, 'a') as f:
        f.write('{"iter": 7, "ti')
    code, _, err = run(capsys, [*argv, '--mode', 'testAUC', '--test_iters', 'best_aucp',
                                '--report', 'false', '--bootstrap', '0'])
    assert code in (None, 0) and 'torn' in err
    code, _, err = run(capsys, [*argv, '--num_iters', '6', '--resume_iters', 'latest'])
    assert code in (None, 0) and 'torn' in err
    for path in (models / 'aucp.jsonl', stats):
        [json.loads(line) for line in open(path)]  # every line whole again
    assert sorted(r['iter'] for r in map(json.loads, open(models / 'aucp.jsonl'))) == [2, 4, 6]


# ---- 5. limits ------------------------------------------------------------------------------- #

@pytest.mark.slow
def test_an_image_size_beyond_memory_is_refused_with_the_numbers(tmp_path, folder_dataset):
    # In a child whose address space is capped, so that a regression fails with a MemoryError
    # there instead of letting the kernel kill some process (perhaps another user's).
    argv = train(tmp_path, folder_dataset, '--num_iters', '1', '--image_size', '100000')
    cap = ('import resource, runpy, sys; '
           'resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30)); '
           'sys.argv = ["main.py"] + sys.argv[1:]; runpy.run_path("main.py", run_name="__main__")')
    r = subprocess.run([sys.executable, '-c', cap, *argv], capture_output=True, text=True,
                       cwd=ROOT, env={**os.environ, 'OMP_NUM_THREADS': '1'}, timeout=120)
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    line = error_line(r.stderr)
    assert line.startswith('error: --image_size 100000') and 'GiB' in line


@pytest.mark.parametrize('extra,flag', [(['--batch_size', '100'], '--batch_size'),
                                        (['--g_lr', '-1'], '--g_lr'),
                                        (['--d_lr', 'nan'], '--d_lr'),
                                        (['--beta2', '1'], '--beta2'),
                                        (['--num_workers', '-1'], '--num_workers')])
def test_limits_are_refused_by_flag_before_any_work(tmp_path, folder_dataset, capsys, extra,
                                                    flag):
    code, _, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '1', *extra))
    line = error_line(err)
    assert code == 2 and line.startswith(f'error: {flag} ') and '--adam_impl' not in line
    assert not glob.glob(str(tmp_path / 'run' / 'models' / '*.ckpt'))


def test_unwritable_output_folder_fails_before_any_work(tmp_path, folder_dataset, capsys):
    (tmp_path / 'a_file').write_text('x')
    with pytest.raises(SystemExit) as e:
        cli.main(tiny_args(tmp_path, folder_dataset, '--num_iters', '1',
                           '--model_save_dir', str(tmp_path / 'a_file' / 'models')))
    assert e.value.code == 2
    assert '--model_save_dir' in capsys.readouterr().err


# ---- 6. data integrity ----------------------------------------------------------------------- #

def test_a_cache_overwritten_with_other_pixels_is_rebuilt_not_trained_on(tmp_path, folder_dataset,
                                                                         capsys):
    import numpy as np
    run(capsys, train(tmp_path, folder_dataset, '--num_iters', '1'))
    npy, = glob.glob(str(tmp_path / 'xdg-cache' / 'healthygan' / '*.npy'))
    pixels = np.load(npy)
    np.save(npy, 255 - pixels)  # the same size and header, other pixels
    code, out, err = run(capsys, train(tmp_path / 'again', folder_dataset, '--num_iters', '1'))
    assert code in (None, 0) and 'does not match its checksum' in err
    assert np.array_equal(np.load(npy), pixels)  # rebuilt from the images


def test_covid_lists_naming_paths_outside_the_image_folder_are_refused(tmp_path, covid_dataset,
                                                                       capsys):
    for k, bad in enumerate(('../../etc/passwd', '/etc/passwd')):
        with open(covid_dataset / 'lists' / 'train_neg.pickle', 'wb') as f:
            pickle.dump(['neg_0.png', bad], f)
        code, _, err = run(capsys, tiny_args(
            tmp_path / f'run{k}', covid_dataset / 'images', *QUIET, '--num_iters', '1',
            '--list_dir', str(covid_dataset / 'lists'), dataset='Covid'))
        line = error_line(err)
        assert code == 2 and 'train_neg.pickle' in line and repr(bad) in line


def test_linked_sub_folders_are_searched_once_and_a_link_loop_ends(tmp_path):
    from data_loader import list_images
    from conftest import write_image
    import numpy as np
    rng = np.random.default_rng(0)
    write_image(str(tmp_path / 'elsewhere' / 'b.png'), rng)
    write_image(str(tmp_path / 'healthy' / 'a.png'), rng)
    os.symlink(tmp_path / 'elsewhere', tmp_path / 'healthy' / 'linked')
    os.symlink(tmp_path / 'healthy', tmp_path / 'elsewhere' / 'loop')  # back up: a loop
    found = [os.path.relpath(p, tmp_path / 'healthy')
             for p in list_images(str(tmp_path / 'healthy'))]
    assert found == ['a.png', os.path.join('linked', 'b.png')]


def test_images_far_smaller_than_image_size_are_warned_about(tmp_path, folder_dataset, capsys):
    from PIL import Image
    Image.new('L', (1, 1), 128).save(folder_dataset / 'healthy' / 'tiny.png')
    code, _, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '1'))
    assert code in (None, 0) and 'scaled up' in err and 'tiny.png: 1 px' in err


# ---- 7. foreign checkpoints ------------------------------------------------------------------ #

def test_a_crafted_pickle_as_a_checkpoint_is_refused_in_one_line(tmp_path, folder_dataset,
                                                                 capsys, run2):
    import argparse
    with open(run2 / '4-G.ckpt', 'wb') as f:
        pickle.dump(argparse.Namespace(x=1), f)  # loading it would call into Python objects
    code, _, err = run(capsys, train(tmp_path, folder_dataset, '--mode', 'testAUC',
                                     '--test_iters', '4', '--report', 'false'))
    line = error_line(err)
    assert code == 2 and '4-G.ckpt' in line and 'weights_only' not in err
    assert len(err.strip().splitlines()) == 1
