"""pip install . : the package and the healthygan command work from any folder, without a clone
on the path (a wheel built by the running interpreter, installed into a fresh virtual environment
that borrows that interpreter's torch and pip)."""
import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

# What a build reads; tests/ and tools/ come along to show that they are not installed.
SOURCE = ['healthygan', 'tests', 'tools', 'pyproject.toml', 'README.md']


def run(cmd, cwd, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONHOME')}
    env['OMP_NUM_THREADS'] = '1'
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def wheel_builder_or_skip():
    """Skip where the running interpreter cannot build a wheel offline: pip, and setuptools with
    bdist_wheel (its own since setuptools 70.1, else the wheel package)."""
    probe = ('import setuptools, pip\n'
             'try:\n    from setuptools.command.bdist_wheel import bdist_wheel\n'
             'except ImportError:\n    import wheel')
    r = run([sys.executable, '-c', probe], ROOT)
    if r.returncode != 0:
        pytest.skip(f'{sys.executable} has no offline wheel builder (pip and setuptools with '
                    f'bdist_wheel, or the wheel package): {r.stderr.strip().splitlines()[-1]}')


def build_wheel(src, dist):
    """The package's wheel, built by the running interpreter (the one that has torch)."""
    r = run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
             '--no-index', '--no-input', '--disable-pip-version-check', '-w', str(dist),
             str(src)], src)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    wheel, = [f for f in os.listdir(dist) if f.endswith('.whl')]
    return str(dist / wheel)


def fresh_venv(tmp_path):
    """A virtual environment that sees the running interpreter's packages (torch is not
    downloaded), or skip. --system-site-packages would give the base interpreter's where the
    tests run in a venv themselves, so a .pth file names the running interpreter's instead."""
    venv = tmp_path / 'venv'
    r = run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], tmp_path)
    if r.returncode != 0:
        pytest.skip(f'python -m venv is unavailable here: {r.stderr.strip()[-200:]}')
    python = str(venv / 'bin' / 'python')
    purelib = run([python, '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))'],
                  tmp_path).stdout.strip()
    borrowed = [p for p in sys.path if os.path.basename(p) in ('site-packages', 'dist-packages')]
    with open(os.path.join(purelib, 'borrowed.pth'), 'w') as f:
        f.write(''.join(p + '\n' for p in borrowed))  # after the venv's own: its install wins
    return venv, python


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == 'win32', reason='the venv layout checked is POSIX (bin/)')
def test_pip_install_gives_the_package_and_the_command_from_any_folder(tmp_path):
    # Built from a copy, so that the build's build/ and *.egg-info/ stay out of the repository.
    src = tmp_path / 'src'
    for name in SOURCE:
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns('__pycache__'))
        else:
            os.makedirs(src, exist_ok=True)
            shutil.copy2(path, src / name)
    wheel_builder_or_skip()
    wheel = build_wheel(src, tmp_path / 'dist')
    venv, python = fresh_venv(tmp_path)
    r = run([python, '-m', 'pip', 'install', '--no-deps', '--no-index', '--no-input',
             '--disable-pip-version-check', wheel], tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]

    away = tmp_path / 'elsewhere'  # no clone here or on the path
    os.makedirs(away)
    healthygan = str(venv / 'bin' / 'healthygan')
    r = run([healthygan, '--help'], away)
    assert r.returncode == 0, r.stderr
    assert 'testAUC' in r.stdout and 'healthygan MODE --help' in r.stdout
    r = run([healthygan, 'score', '--help'], away)  # the real parser: torch and every module
    assert r.returncode == 0, r.stderr
    assert '--score_dir' in r.stdout and '--test_iters' in r.stdout
    r = run([healthygan, 'fit'], away)
    assert r.returncode == 2 and r.stderr.count('\n') == 1, r.stderr

    site = run([python, '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))'], away)
    # the package alone: no top-level tests or tools package, no main.py
    purelib = site.stdout.strip()
    assert not {'tests', 'tools', 'main.py', 'solver.py'} & set(os.listdir(purelib))
    r = run([python, '-m', 'healthygan', '--version'], away)
    assert r.returncode == 0 and r.stdout.startswith('healthygan '), r.stderr

    # the API and the command on the shipped weights, from the installed package alone: one
    # interpreter (torch imported once) says where the package is, loads the weights' folder,
    # then the detector shipped inside the package by name, no clone needed
    weights = os.path.join(ROOT, 'pretrained', 'nih-cxr-mini')
    image = os.path.join(ROOT, 'datasets', 'nih-cxr-mini', 'test', 'normal',
                         sorted(os.listdir(os.path.join(ROOT, 'datasets', 'nih-cxr-mini', 'test',
                                                        'normal')))[0])
    with open(os.path.join(weights, 'expected_scores.csv')) as f:
        expected = list(csv.DictReader(f))
    paths = [os.path.join(ROOT, row['path']) for row in expected]
    r = run([python, '-c', 'import healthygan, os; print(os.path.realpath(healthygan.__file__))\n'
                           f'd = healthygan.load({weights!r}); r = d.score({image!r})\n'
                           'print(d.members, r.score, r.percentile)\n'
                           'd = healthygan.load("nih-cxr-mini")\n'
                           f'for p in {paths!r}:\n'
                           '    r = d.score(p); print(r.pred_score, r.healthy_percentile)'], away)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    installed = lines[0]
    assert installed.startswith(os.path.realpath(purelib) + os.sep), installed
    assert not installed.startswith(os.path.realpath(ROOT) + os.sep)
    advice = json.load(open(os.path.join(weights, 'detector.json')))
    last, n = advice['test_iters'], advice['ensemble']
    members = sorted(int(f.split('-')[0]) for f in os.listdir(weights) if f.endswith('-G.ckpt'))
    assert lines[1].startswith(f'{members[-n:]} '), r.stdout
    assert members[-1] == last
    assert len(lines) == len(expected) + 2, r.stdout
    for row, line in zip(expected, lines[2:]):
        score, percentile = map(float, line.split())
        assert score == pytest.approx(float(row['score']), abs=1e-6)
        assert percentile == pytest.approx(float(row['healthy_percentile']), abs=0.01)
    r = run([healthygan, 'score', '--model_save_dir', weights, '--test_iters', str(last),
             '--ensemble', str(n), '--score_variant', advice['score_variant'], '--score_dir', image,
             '--result_dir', str(away / 'scored'),
             '--report', 'false', '--num_workers', '0'], away)
    assert r.returncode == 0, r.stderr
    assert os.path.isfile(away / 'scored' / 'scores.csv')
