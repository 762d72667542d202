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
from healthygan import console, pretrained
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
    from healthygan.networks import Generator
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

def test_18_a_fifo_named_png_in_the_score_folder_is_skipped_with_a_warning(scored_run):
    tmp, folder = scored_run, scored_run / 'with_fifo'
    write_image(str(folder / 'a.png'), np.random.default_rng(0))
    os.mkfifo(folder / 'pipe.png')
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'),
                        *score(tmp, folder, 'fifo')], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'}, timeout=120)
    assert r.returncode == 0 and 'Traceback' not in r.stderr
    assert 'pipe.png is a FIFO (named pipe)' in r.stderr and 'leaving out 1 file' in r.stderr
    assert 'Scored 1 images' in r.stdout


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
