"""Shared fixtures: tiny image datasets written to disk, and the tiny model flags."""
import os
import pickle
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.path.join(os.path.dirname(ROOT), 'shared')
# The real NIH radiographs shipped with the project (datasets/nih-cxr-mini/README.md): every
# clone has them, so the tests that read them never skip.
NIH_MINI = os.path.join(ROOT, 'datasets', 'nih-cxr-mini')


def shared_path(*parts):
    """A path under ../shared, or skip the test (a user's clone has no ../shared)."""
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f'{path} is absent: ../shared exists only in the development workspace')
    return path


def write_image(path, rng, size=(40, 44), bright=0):
    """A random grayscale PNG with an optional bright square (an 'anomaly')."""
    arr = rng.integers(60, 140, size=size[::-1], dtype=np.uint8)
    if bright:
        arr[15:25, 12:22] = np.clip(arr[15:25, 12:22].astype(int) + bright, 0, 255)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture(scope='session', autouse=True)
def session_cache(tmp_path_factory):
    """Module- and session-scoped fixtures, set up before any test's own folder, write their
    data caches here, never to the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('XDG_CACHE_HOME', str(tmp_path_factory.mktemp('xdg-cache')))
        yield


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test's data cache goes to its own folder, never to the user's ~/.cache."""
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg-cache'))


def write_folder_layout(root, n_train, n_test, seed=0):
    """healthy/ and mixed/ with n_train images each, test/normal/ and test/anomalous/ with n_test
    (the anomalous ones carry a bright square)."""
    rng = np.random.default_rng(seed)
    for sub, n, bright in [('healthy', n_train, 0), ('mixed', n_train, 0),
                           ('test/normal', n_test, 0), ('test/anomalous', n_test, 100)]:
        for k in range(n):
            write_image(str(root / sub / f'img_{k}.png'), rng, bright=bright)
    return root


@pytest.fixture
def folder_dataset(tmp_path):
    """healthy/ mixed/ test/normal/ test/anomalous/ with a few 40x44 images each."""
    return write_folder_layout(tmp_path / 'data', 6, 4)


@pytest.fixture
def covid_dataset(tmp_path):
    """The original's list-based layout: pickled lists in lists/, images in images/train|test."""
    rng = np.random.default_rng(1)
    lists = {'train_neg': [f'neg_{k}.png' for k in range(5)],
             'train_pos': [f'pos_{k}.jpg' for k in range(2)],
             'train_neg_mixed': [f'negm_{k}.png' for k in range(3)],
             'test_neg': [f'tneg_{k}.png' for k in range(3)],
             'test_pos': [f'tpos_{k}.jpg' for k in range(3)]}
    os.makedirs(tmp_path / 'lists')
    for name, files in lists.items():
        with open(tmp_path / 'lists' / f'{name}.pickle', 'wb') as f:
            pickle.dump(files, f)
        sub = 'test' if name.startswith('test') else 'train'
        for fname in files:
            write_image(str(tmp_path / 'images' / sub / fname), rng,
                        bright=100 if name == 'test_pos' else 0)
    return tmp_path


# The one tiny model every test uses when it needs "a tiny model": 32 px, 4 channels, one
# residual block, a 3-layer critic (32 -> 4 px), batches of 2 on the CPU, seed 0. A test that
# needs other sizes on purpose passes them as overrides (tiny_flags(image_size=16)) and says why.
TINY = dict(image_size=32, g_conv_dim=4, d_conv_dim=4, g_repeat_num=1, d_repeat_num=3,
            batch_size=2, num_workers=0, seed=0, device='cpu')


def tiny_flags(**overrides):
    """The preset as command-line flags, with overrides (same keys, or new flags) applied."""
    flags = {**TINY, **overrides}
    return [item for k, v in flags.items() for item in (f'--{k}', str(v))]


def tiny_env(**overrides):
    """The preset as the shell scripts' environment variables (IMAGE_SIZE=32, ...)."""
    return {k.upper(): str(v) for k, v in {**TINY, **overrides}.items()}


def tiny_config(*extra, **overrides):
    """A parsed configuration of the tiny model; extra: more argv."""
    import main as cli
    return cli.build_parser().parse_args(tiny_flags(**overrides) + list(extra))


def tiny_solver(*extra, seed=None, **overrides):
    """A Solver of the tiny model (weights drawn after torch.manual_seed(seed) if given)."""
    import torch
    from solver import Solver
    config = tiny_config(*extra, **overrides)
    if seed is not None:
        torch.manual_seed(seed)
    return Solver(config)


def tiny_args(tmp_path, image_dir, *extra, dataset='Folder', **overrides):
    """argv for the tiny model writing everything under tmp_path/run."""
    return ['--dataset', dataset, '--image_dir', str(image_dir), *tiny_flags(**overrides),
            '--log_dir', str(tmp_path / 'run' / 'logs'),
            '--model_save_dir', str(tmp_path / 'run' / 'models'),
            '--sample_dir', str(tmp_path / 'run' / 'samples'),
            '--result_dir', str(tmp_path / 'run' / 'results'), *extra]


def eval_args(tmp, image_dir, out, *extra):
    """testAUC (extra may give another --mode) with the tiny model; the checkpoints always in
    tmp/models, results in tmp/<out>."""
    return ['--mode', 'testAUC', '--dataset', 'Folder', '--image_dir', str(image_dir),
            *tiny_flags(), '--use_tensorboard', 'false', '--test_iters', '2',
            '--model_save_dir', str(tmp / 'models'), '--log_dir', str(tmp / 'logs'),
            '--sample_dir', str(tmp / 'samples'), '--result_dir', str(tmp / out), *extra]


@pytest.fixture(scope='session')
def tested(tmp_path_factory):
    """A tiny synthetic set with lesion masks, a tiny generator trained for 2 iterations, and
    testAUC's result with the defaults (in <tmp>/results); shared by test_report.py and
    test_evaluation.py, each writing to its own result folders."""
    import main as cli
    import synthetic
    tmp = tmp_path_factory.mktemp('eval')
    synthetic.make_synthetic_dataset(tmp / 'syn', n_healthy=4, n_mixed=4, n_test_normal=8,
                                     n_test_anomalous=8, size=32, seed=0)
    cli.main(eval_args(tmp, tmp / 'syn', 'run', '--mode', 'train', '--num_iters', '2'))
    result = cli.main(eval_args(tmp, tmp / 'syn', 'results', '--bootstrap', '200'))
    return tmp, result


@pytest.fixture
def trained(tested):
    return tested[0]


def read_csv(path):
    import csv
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def referenced_files(html_path):
    """Every src / href of an HTML file that is not a link to the web or an anchor."""
    from html.parser import HTMLParser

    class Refs(HTMLParser):
        def __init__(self):
            super().__init__()
            self.refs = []

        def handle_starttag(self, tag, attrs):
            self.refs += [v for k, v in attrs if k in ('src', 'href') and v]

    parser = Refs()
    with open(html_path, encoding='utf-8') as f:
        parser.feed(f.read())
    return [r for r in parser.refs if not r.startswith('#')]


def assert_report_references_only_existing_files(folder):
    refs = referenced_files(os.path.join(folder, 'report.html'))
    assert refs, 'the report references no pictures'
    for ref in refs:
        assert not os.path.isabs(ref) and '://' not in ref, ref  # offline, movable folder
        assert os.path.isfile(os.path.join(folder, ref)), ref
