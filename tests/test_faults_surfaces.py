"""Faults on the surfaces added last (issue 40), each on a tiny run through the real CLI: score
mode, tools/ship_weights.py, the ref_z reference, signals during a save, resume checks, and the
test suite itself. Every one ends in one clear line (no traceback) or is handled."""
import os
import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

import main as cli
from conftest import ROOT, eval_args, write_folder_layout, write_image
from healthygan import limits
from healthygan import cli as program
from healthygan import console
from healthygan.detection import pretrained
from test_faults import error_line, run


@pytest.fixture(scope='module')
def scored_run(tmp_path_factory):
    """A tiny run of 2 iterations on the folder layout: tmp/data, checkpoints in tmp/models."""
    tmp = tmp_path_factory.mktemp('surfaces')
    write_folder_layout(tmp / 'data', 4, 2)
    cli.main(eval_args(tmp, tmp / 'data', 'run', '--mode', 'train', '--num_iters', '2'))
    return tmp


def score(tmp, folder, out, *extra):
    """score mode on folder with the tiny run's checkpoints, results in tmp/out."""
    return eval_args(tmp, tmp / 'data', out, '--mode', 'score', '--score_dir', str(folder),
                     '--report', 'false', *extra)


def png_bytes(width, height):
    """A PNG whose header says width x height and which holds no pixels (a decompression bomb's
    header: opening it is refused before any pixel is decoded)."""
    def chunk(kind, data):
        return (struct.pack('>I', len(data)) + kind + data
                + struct.pack('>I', zlib.crc32(kind + data)))
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 0,
                                                                0, 0, 0)) + chunk(b'IEND', b''))


# ---- 2. flags no run can use ----------------------------------------------------------------- #

@pytest.mark.parametrize('flag,value', [('--seed', '-1'), ('--seed', '99999999999999'),
                                        ('--healthy_percentile', '150'),
                                        ('--healthy_percentile', 'nan')])
def test_2_a_seed_or_percentile_out_of_range_is_refused_by_flag(tmp_path, folder_dataset, capsys,
                                                                 flag, value):
    mode = 'score' if flag == '--healthy_percentile' else 'train'
    code, _, err = run(capsys, eval_args(tmp_path, folder_dataset, 'r', '--mode', mode,
                                         '--score_dir', str(folder_dataset), flag, value))
    assert code == 2 and f'argument {flag}: expected a ' in err and value in err
    assert not os.path.exists(tmp_path / 'models')


# ---- 16. the expected checksum of a released generator --------------------------------------- #

def test_16_sha256sums_line_is_taken_and_a_value_that_is_no_sha256_is_said_to_be_none(
        tmp_path, capsys):
    import torch
    from healthygan.model.networks import Generator
    path = tmp_path / '360000-G.ckpt'
    torch.save(Generator(4, 0, 1).state_dict(), path)
    digest = pretrained.sha256_of(path)
    line = f'{digest}  {path}\n'  # what "$(sha256sum 360000-G.ckpt)" gives
    args = [str(path), '--g_conv_dim', '4', '--g_repeat_num', '1', '--sha256']
    assert pretrained.main(args + [line]) == 0
    assert pretrained.main(args + ['hello']) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'is no SHA-256' in err and 'download' not in err


# ---- 17. score mode where no image can be read ----------------------------------------------- #

def test_17_score_mode_with_no_readable_image_fails_and_writes_no_scores(scored_run, capsys):
    tmp, folder = scored_run, scored_run / 'unreadable'
    os.makedirs(folder)
    (folder / 'empty.png').write_bytes(b'')
    (folder / 'text.png').write_text('not an image')
    good = tmp / 'data' / 'healthy' / 'img_0.png'
    (folder / 'truncated.png').write_bytes(good.read_bytes()[:60])
    (folder / 'bomb.png').write_bytes(png_bytes(20000, 20000))
    code, _, err = run(capsys, score(tmp, folder, 'none_read'))
    line = error_line(err)
    assert code == 2 and 'none of the 4 image(s)' in line and str(folder) in line
    assert not os.path.exists(tmp / 'none_read' / 'scores.csv')
    with pytest.raises(SystemExit) as e:  # the installed command alike
        argv = score(tmp, folder, 'none_read_cmd')
        k = argv.index('--mode', 2)  # score's own --mode, after testAUC's
        console.main(['score', *argv[2:k], *argv[k + 2:]])
    assert e.value.code == 2 and 'none of the 4' in capsys.readouterr().err
    assert not os.path.exists(tmp / 'none_read_cmd' / 'scores.csv')


# ---- 18. a FIFO among the images to score ---------------------------------------------------- #

@pytest.mark.slow
def test_18_a_fifo_named_png_in_the_score_folder_is_skipped_with_a_warning(scored_run):
    tmp, folder = scored_run, scored_run / 'with_fifo'
    write_image(str(folder / 'a.png'), np.random.default_rng(0))
    os.mkfifo(folder / 'pipe.png')
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'),
                        *score(tmp, folder, 'fifo')], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'}, timeout=120)
    assert r.returncode == 0 and 'Traceback' not in r.stderr
    assert 'pipe.png is a FIFO (named pipe)' in r.stderr and 'leaving out 1 file' in r.stderr
    assert 'Scored 1 image(s)' in r.stdout


# ---- small ----------------------------------------------------------------------------------- #

def test_score_mode_starts_no_more_loading_processes_than_cores(scored_run, capsys):
    tmp = scored_run
    argv = score(tmp, tmp / 'data' / 'test', 'workers', '--num_workers', '12')
    assert program.parse(argv)[1].num_workers == min(12, limits.usable_cpus())
    assert program.build_parser().get_default('num_workers') == 12  # the original's, for training
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        code, _, _ = run(capsys, argv)
    assert code in (None, 0)
    assert not [w for w in caught if 'worker' in str(w.message)]


def test_small_sizes_are_said_in_a_unit_that_shows_them():
    assert limits.size_text(3 * 2 ** 30) == '3.0 GiB'
    assert limits.size_text(5 * 2 ** 20) == '5.0 MiB'
    assert limits.size_text(2048) == '2.0 KiB' and limits.size_text(10) == '10 bytes'


def test_a_full_cache_disk_says_how_much_in_mib(tmp_path, folder_dataset, capsys, monkeypatch):
    monkeypatch.setattr(limits, 'free_disk', lambda path: 1000)  # a real full disk cannot be made
    code, _, err = run(capsys, eval_args(tmp_path, folder_dataset, 'r', '--mode', 'train',
                                         '--num_iters', '1'))
    line = error_line(err)
    assert code == 2 and 'but 1000 bytes is free' in line and '0.0 GiB' not in line


def test_testauc_advice_on_unreadable_images_names_no_training(scored_run, capsys):
    tmp = scored_run
    bad = tmp / 'data' / 'test' / 'normal' / 'broken.png'
    bad.write_bytes(b'not an image')
    try:
        code, _, err = run(capsys, eval_args(tmp, tmp / 'data', 'auc', '--report', 'false',
                                             '--bootstrap', '0', '--data_cache', 'off'))
    finally:
        os.remove(bad)
    line = error_line(err)
    assert code == 2 and '--bad_images skip to test without them' in line and 'train' not in line


# ---- 5. a full disk under the ref_z reference; signals during a save ------------------------- #

@pytest.fixture(scope='module')
def held_out_run(tmp_path_factory):
    """A tiny run of 2 iterations that held 3 healthy images out of training (ref_z's need)."""
    tmp = tmp_path_factory.mktemp('held_out')
    write_folder_layout(tmp / 'data', 6, 2)
    cli.main(eval_args(tmp, tmp / 'data', 'run', '--mode', 'train', '--num_iters', '2',
                       '--holdout_fraction', '0.5'))
    return tmp


def test_5_a_full_disk_while_the_ref_z_reference_is_written_is_one_line_and_blocks_nothing(
        held_out_run, capsys):
    tmp = held_out_run
    reference = tmp / 'models' / 'healthy_pixels_2_32px.pt'
    os.symlink('/dev/full', str(reference) + '.tmp')  # a real "No space left on device"
    argv = score(tmp, tmp / 'data' / 'test', 'ref_z', '--score_variant', 'ref_z')
    code, _, err = run(capsys, argv)
    line = error_line(err)
    assert code == 2 and 'No space left' in line and str(reference) in line
    assert '--model_save_dir' in line and '--sample_dir' not in line
    assert not os.path.lexists(str(reference) + '.tmp') and not reference.exists()
    code, _, err = run(capsys, argv)  # space freed: the next try builds it
    assert code in (None, 0), err
    assert reference.exists()


@pytest.mark.slow
def test_5_one_kill_that_reaches_the_process_group_twice_saves_once_without_a_traceback(
        tmp_path, folder_dataset):
    import glob
    import signal
    import time
    models = tmp_path / 'run' / 'models'
    argv = eval_args(tmp_path / 'run', folder_dataset, 'results', '--mode', 'train',
                     '--num_iters', '100000', '--model_save_step', '1')
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'main.py'), *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'}, start_new_session=True)
    deadline = time.time() + 120
    while len(glob.glob(str(models / '*-G.ckpt'))) < 2:  # training and saving
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    # what `kill -TERM` of a `timeout` parent gives: a second SIGTERM while the first one's
    # message is printed (CPython runs one handler for two that arrive before it runs)
    os.killpg(proc.pid, signal.SIGTERM)
    first = ''
    while 'received' not in first:
        first += proc.stderr.readline()
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    err = first + err
    assert proc.returncode == 128 + signal.SIGTERM and 'Traceback' not in err
    assert err.count('SIGTERM received') == 1 and 'Interrupted by SIGTERM' in out
    stopped = int(out.split('Interrupted by SIGTERM at iteration ')[1].split(';')[0])
    for name in ('G.ckpt', 'D.ckpt', 'state.pt'):  # its set whole, nothing half-written
        assert (models / f'{stopped}-{name}').exists()
    assert not glob.glob(str(models / '*.tmp'))


def test_5_a_later_second_signal_stops_at_once_in_one_line(capsys):
    import signal
    from healthygan.training.loop import StopFlag
    stop = StopFlag()
    with stop.catching(signal.SIGTERM):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # the same request, delivered twice
        assert stop.signal == signal.SIGTERM
        stop.received -= 2 * StopFlag.MOMENT  # a second request, later
        with pytest.raises(SystemExit) as e:
            os.kill(os.getpid(), signal.SIGTERM)
    assert e.value.code == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith('SIGTERM received again: stopped at once')
    assert err.count('received again') == 1 and 'Traceback' not in err


# ---- 13. testAUC of a run trained on test images --------------------------------------------- #

def test_13_testauc_of_a_run_trained_on_test_images_says_so_and_notes_it(tmp_path,
                                                                         folder_dataset, capsys):
    import json
    import shutil
    shutil.copy(folder_dataset / 'test' / 'anomalous' / 'img_0.png',
                folder_dataset / 'healthy' / 'copied.png')
    code, _, _ = run(capsys, eval_args(tmp_path, folder_dataset, 'run', '--mode', 'train',
                                       '--num_iters', '2'))
    assert code in (None, 0)
    code, _, err = run(capsys, eval_args(tmp_path, folder_dataset, 'auc', '--report', 'false',
                                         '--bootstrap', '0'))
    assert code in (None, 0)
    assert 'were also test images when it was trained' in err and 'optimistic' in err
    notes = json.load(open(tmp_path / 'auc' / 'metrics.json'))['notes']
    assert 'optimistic' in notes['data_overlap']


# ---- 15. misleading messages ----------------------------------------------------------------- #

def test_15_a_full_disk_at_the_first_checkpoint_offers_no_earlier_set(tmp_path, folder_dataset,
                                                                       capsys, monkeypatch):
    import errno
    import torch
    real_save = torch.save

    def full_disk(obj, path, *a, **k):  # a real full disk cannot be made here
        if os.path.basename(str(path)).startswith('2-D'):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, 'save', full_disk)
    code, _, err = run(capsys, eval_args(tmp_path, folder_dataset, 'r', '--mode', 'train',
                                         '--num_iters', '2'))
    line = error_line(err)
    assert code == 2 and 'nothing to resume' in line and '--overwrite true' in line
    assert 'earlier checkpoint sets' not in line and '--resume_iters' not in line


def test_15_a_full_result_dir_in_score_mode_names_only_what_it_writes(scored_run, capsys):
    tmp = scored_run
    os.makedirs(tmp / 'full')
    os.symlink('/dev/full', tmp / 'full' / 'scores.csv')  # a real "No space left on device"
    code, _, err = run(capsys, score(tmp, tmp / 'data' / 'test', 'full'))
    line = error_line(err)
    assert code == 2 and 'No space left' in line and '--result_dir' in line
    assert not any(f in line for f in ('--sample_dir', '--log_dir', '--model_save_dir'))


def test_15_a_garbage_run_record_in_score_mode_is_named_without_a_resume(scored_run, tmp_path,
                                                                         capsys):
    import shutil
    models = tmp_path / 'models'
    shutil.copytree(scored_run / 'models', models)
    (models / 'run_config.json').write_text('garbage{')
    argv = score(scored_run, scored_run / 'data' / 'test', 'garbage')
    argv[argv.index('--model_save_dir') + 1] = str(models)
    code, _, err = run(capsys, argv)
    line = error_line(err)
    assert code == 2 and str(models / 'run_config.json') in line
    assert 'resume' not in err and 'architecture' in line


# ---- 4. tools/ship_weights.py ---------------------------------------------------------------- #

@pytest.mark.slow
def test_4_ship_weights_refuses_what_it_cannot_ship_in_one_line_and_leaves_no_half_written_out(
        held_out_run, tmp_path, capsys):
    import shutil
    from tools import ship_weights
    image = str(held_out_run / 'data' / 'test' / 'anomalous' / 'img_0.png')
    (tmp_path / 'text.png').write_text('not an image')

    def run_copy(name, remove=None):
        copy = tmp_path / name
        shutil.copytree(held_out_run / 'models', copy)
        if remove:
            os.remove(copy / remove)
        return str(copy)

    out = tmp_path / 'shipped'
    cases = {  # argv changes -> what the one line names
        'no run': (['--run', str(tmp_path / 'nope')], 'is not a folder'),
        'no record': (['--run', run_copy('a', 'run_config.json')], 'run_config.json'),
        'no prior': (['--run', run_copy('b', 'lung_prior.pt')], 'lung_prior.pt not found'),
        'no log': (['--run', run_copy('c', 'aucp.jsonl')], 'aucp.jsonl not found'),
        'no checkpoint': (['--test_iters', '7'], 'no 7-G.ckpt'),
        'missing image': (['--images', str(tmp_path / 'gone.png')], 'gone.png'),
        'unreadable image': (['--images', str(tmp_path / 'text.png')], 'text.png'),
    }
    for what, (change, said) in cases.items():
        argv = {'--run': str(held_out_run / 'models'), '--test_iters': '2', '--out': str(out),
                '--images': image}
        argv.update(dict(zip(change[::2], change[1::2])))
        with pytest.raises(SystemExit) as e:
            ship_weights.main([item for pair in argv.items() for item in pair])
        line = str(e.value.code)
        assert line.startswith('error: ') and said in line and '\n' not in line, what
        assert not out.exists() and os.listdir(tmp_path).count('shipped') == 0, what
        assert not [n for n in os.listdir(tmp_path) if n.startswith('.shipped')], what
    with pytest.raises(SystemExit) as e:
        ship_weights.main(['--run', str(held_out_run / 'models'), '--test_iters', '2',
                           '--out', str(out), '--images', image, '--score_variant', 'bogus'])
    assert e.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err
    assert ship_weights.main(['--run', str(held_out_run / 'models'), '--test_iters', '2',
                              '--out', str(out), '--images', image]) == 0  # the next try
    assert 'expected_scores.csv' in os.listdir(out)


# ---- 12. resume checks ----------------------------------------------------------------------- #

def resume_refusal(capsys, tmp_path, data, change, *extra):
    """Train 2 iterations, apply change(models), resume to 3: the refusal's one line."""
    from test_faults import train
    code, _, _ = run(capsys, train(tmp_path, data, '--num_iters', '2', *extra))
    assert code in (None, 0)
    change(tmp_path / 'run' / 'models')
    code, _, err = run(capsys, train(tmp_path, data, '--num_iters', '3', '--resume_iters',
                                     'latest', *extra))
    assert code == 2
    assert not (tmp_path / 'run' / 'models' / '3-G.ckpt').exists()
    return error_line(err)


def test_12_a_generator_of_another_run_in_its_place_is_refused(tmp_path, folder_dataset, capsys):
    import shutil
    from test_faults import train
    other = tmp_path / 'other'
    run(capsys, train(other, folder_dataset, '--num_iters', '2', '--seed', '5'))
    line = resume_refusal(capsys, tmp_path, folder_dataset, lambda models: shutil.copy(
        other / 'run' / 'models' / '2-G.ckpt', models / '2-G.ckpt'))
    assert '2-G.ckpt is not the G this run saved' in line


def test_12_mixed_images_replaced_under_the_same_names_are_refused(tmp_path, folder_dataset,
                                                                    capsys):
    def replace(models):
        write_image(str(folder_dataset / 'mixed' / 'img_0.png'), np.random.default_rng(9))
    line = resume_refusal(capsys, tmp_path, folder_dataset, replace)
    assert 'training images under --image_dir' in line and 'changed' in line


def test_12_images_added_to_healthy_that_move_the_hold_out_are_refused(tmp_path, folder_dataset,
                                                                       capsys):
    def add(models):
        for k in (6, 7):
            write_image(str(folder_dataset / 'healthy' / f'img_{k}.png'),
                        np.random.default_rng(k))
    line = resume_refusal(capsys, tmp_path, folder_dataset, add, '--holdout_fraction', '0.5')
    assert 'the hold-out is not the one saved' in line and 'best_aucp' in line
