"""The shell scripts users run, with tiny settings from the environment."""
import json
import os
import shutil
import subprocess

import pytest
import torch

from conftest import ROOT, read_csv, tiny_env
from model import Generator

pytestmark = pytest.mark.skipif(shutil.which('bash') is None, reason='needs bash')

TINY = tiny_env()  # IMAGE_SIZE=32, G_CONV_DIM=4, ...: the preset as the scripts read it


def run_script(name, env, *args):
    full_env = {**os.environ, **env}
    return subprocess.run(['bash', os.path.join(ROOT, name), *args], env=full_env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_train_then_test_covid_scripts(tmp_path, covid_dataset):
    env = {**TINY, 'IMAGE_DIR': str(covid_dataset / 'images'),
           'LIST_DIR': str(covid_dataset / 'lists'), 'OUT': str(tmp_path / 'out')}
    r = run_script('train_covid.sh', {**env, 'NUM_ITERS': '3', 'MODEL_SAVE_STEP': '2'},
                   '--use_tensorboard', 'false')
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / 'out' / 'models'))[:2] == ['2-D.ckpt', '2-G.ckpt']
    # test_covid.sh takes the checkpoint training wrote last (3, the final one), not a fixed 100
    r = run_script('test_covid.sh', env)
    assert r.returncode == 0, r.stderr
    metrics = json.load(open(tmp_path / 'out' / 'results' / 'metrics.json'))
    assert metrics['iteration'] == 3 and metrics['n_normal'] == 3


def test_pretrained_script_explains_a_missing_checkpoint(tmp_path):
    r = run_script('test_covid_pretrained.sh', {'PRETRAINED_DIR': str(tmp_path / 'none')})
    assert r.returncode == 1
    assert '360000-G.ckpt not found' in r.stderr and 'pretrained/README.md' in r.stderr


@pytest.mark.slow
def test_pretrained_script_scores_with_a_released_style_checkpoint(tmp_path, covid_dataset):
    # A checkpoint in the released format: torch.save(G.state_dict()) of the default generator.
    os.makedirs(tmp_path / 'pre')
    torch.manual_seed(0)
    torch.save(Generator().state_dict(), tmp_path / 'pre' / '360000-G.ckpt')
    r = run_script('test_covid_pretrained.sh',
                   {'PRETRAINED_DIR': str(tmp_path / 'pre'), 'IMAGE_SIZE': '32',
                    'IMAGE_DIR': str(covid_dataset / 'images'),
                    'LIST_DIR': str(covid_dataset / 'lists'),
                    'RESULT_DIR': str(tmp_path / 'res'), 'NUM_WORKERS': '0', 'DEVICE': 'cpu'},
                   '--d_repeat_num', '3')
    assert r.returncode == 0, r.stderr
    assert json.load(open(tmp_path / 'res' / 'metrics.json'))['iteration'] == 360000


@pytest.mark.slow
def test_demo_script_end_to_end_tiny(tmp_path):
    env = {**TINY, 'DATA': str(tmp_path / 'syn'), 'OUT': str(tmp_path / 'demo'),
           'DATA_SIZE': '64', 'N_HEALTHY': '6', 'N_MIXED': '6', 'N_TEST': '3',
           'NUM_ITERS': '2', 'MODEL_SAVE_STEP': '2', 'SAMPLE_STEP': '2'}
    r = run_script('demo.sh', env)
    assert r.returncode == 0, r.stderr
    assert 'AUC:' in r.stdout and 'Outputs:' in r.stdout
    assert 'Expected with these defaults' in r.stdout  # what range a user should see
    assert os.path.exists(tmp_path / 'demo' / 'results' / 'scores.csv')
    # the recipe chosen on the synthetic validation sets reaches main.py
    config = json.load(open(tmp_path / 'demo' / 'models' / 'run_config.json'))['config']
    assert (config['lambda_msmall'], config['lr_schedule'], config['num_iters_decay'],
            config['lr_update_step']) == (20, 'linear', 3000, 100)
    # a second run re-tests the finished run instead of training it again from scratch
    r = run_script('demo.sh', env)
    assert r.returncode == 0, r.stderr
    assert 'Loading the trained models from step 2' in r.stdout


@pytest.mark.slow
def test_bench_nih_script_end_to_end_tiny(tmp_path):
    # Ten images per training set so that HOLDOUT 0.3 holds out three of each: AUCp, and the
    # healthy pixel reference of the ref_z score (at least 3); ten test images, so that
    # --explain's 5-fold cross-fit leaves each fit more images than coefficients.
    from conftest import write_folder_layout
    data = write_folder_layout(tmp_path / 'nih', 10, 5)
    env = {**TINY, 'DATA': str(data), 'OUT': str(tmp_path / 'run'), 'NUM_ITERS': '4',
           'MODEL_SAVE_STEP': '2', 'PCA_COMPONENTS': '4', 'KNN_K': '2', 'AE_ITERS': '2',
           'ENSEMBLE': '2', 'HOLDOUT': '0.3'}
    r = run_script('bench_nih.sh', env, '--use_tensorboard', 'false', '--bootstrap', '0')
    assert r.returncode == 0, r.stderr
    assert 'AUCp at iteration 4' in r.stdout and 'knn' in r.stdout
    metrics = json.load(open(tmp_path / 'run' / 'results' / 'metrics.json'))
    # the defaults: the recipe chosen on validation (docs/results.md, "An honest protocol")
    assert metrics['iteration'] == 4 and metrics['score_variant'] == 'ref_z'
    assert metrics['healthy_pixel_reference'].startswith('3 healthy images held out')
    run_config = json.load(open(tmp_path / 'run' / 'models' / 'run_config.json'))['config']
    assert run_config['lambda_msmall'] == 30  # (stratification needs labels: the next test)
    # the snapshot ensemble: the last ENSEMBLE checkpoints
    assert [p.rsplit('/', 1)[-1] for p in metrics['ensemble']] == ['2-G.ckpt', '4-G.ckpt']
    baselines = json.load(open(tmp_path / 'run' / 'baselines' / 'baselines.json'))
    assert baselines['n_fit'] == 7  # fitted on the healthy images HealthyGAN trained on
    assert baselines['methods']['autoencoder']['parameters']['iters'] == 2
    assert 'trained' not in baselines['methods']['autoencoder']['parameters']
    # the global statistics' direction comes from all 20 training-folder images, held out or not
    assert baselines['methods']['global_contrast']['fit_set'] == \
        'direction: healthy 10 vs mixed 10'
    assert baselines['explain']['fit'].startswith('cross-fitted on the test images')
    # the table over seeds reads the run's two files
    from tools import seed_table
    row, = seed_table.main([str(tmp_path / 'run')])
    assert row['AUROC'] == metrics['image_AUROC'] and row['stat'][0].startswith('global_')
    assert row['val'] is None  # no --val_dir: no validation AUROC, a dash in its column
    assert row['lead_ref'][0] == baselines['compare']['methods'][row['ref'][0]][
        'AUROC_difference']
    with pytest.raises(SystemExit, match='bench_nih.sh'):
        seed_table.main([str(tmp_path / 'none')])
    # run again on the same OUT: training is done, the autoencoder is reused, the numbers stay
    r = run_script('bench_nih.sh', env, '--use_tensorboard', 'false', '--bootstrap', '0')
    assert r.returncode == 0, r.stderr
    again = json.load(open(tmp_path / 'run' / 'baselines' / 'baselines.json'))
    assert again['methods']['autoencoder']['parameters']['trained'].startswith('loaded from')
    assert again['methods']['autoencoder']['image_AUROC'] == \
        baselines['methods']['autoencoder']['image_AUROC']
    assert json.load(open(tmp_path / 'run' / 'results' / 'metrics.json'))['image_AUROC'] == \
        metrics['image_AUROC']
    r = run_script('bench_nih.sh', {**env, 'DATA': str(tmp_path / 'none')})
    assert r.returncode == 2 and 'healthy' in r.stderr


@pytest.mark.slow
def test_bench_nih_script_defaults_to_the_shipped_images(tmp_path):
    # No DATA: a fresh clone runs on datasets/nih-cxr-mini, nothing outside the repository.
    env = {**TINY, 'OUT': str(tmp_path / 'run'), 'NUM_ITERS': '2', 'MODEL_SAVE_STEP': '2',
           'ENSEMBLE': '1', 'PCA_COMPONENTS': '4', 'KNN_K': '2', 'AE_ITERS': '0'}
    full_env = {k: v for k, v in os.environ.items() if k != 'DATA'}

    def bench(**more):
        return subprocess.run(['bash', os.path.join(ROOT, 'bench_nih.sh'), '--use_tensorboard',
                               'false', '--bootstrap', '0'], env={**full_env, **env, **more},
                              capture_output=True, text=True, timeout=300)
    # TEST=0: train and print the validation table; the test set is not scored.
    r = bench(TEST='0')
    assert r.returncode == 0, r.stderr
    # the shipped validation/ radiographs and the held-out mixed images, by their labels
    assert 'Validation AUROC' in r.stdout and 'residual AUROC' in r.stdout
    table = json.load(open(tmp_path / 'run' / 'models' / 'validation_images.json'))
    assert (table['n_normal'], table['n_anomalous']) == (27 + 28, 240 + 12)
    assert not os.path.exists(tmp_path / 'run' / 'results')
    r = bench()  # then test the trained run once
    assert r.returncode == 0, r.stderr
    metrics = json.load(open(tmp_path / 'run' / 'results' / 'metrics.json'))
    assert (metrics['n_normal'], metrics['n_anomalous']) == (50, 50)
    assert metrics['threshold_source'].startswith('validation set datasets/nih-cxr-mini/validation')
    baselines = json.load(open(tmp_path / 'run' / 'baselines' / 'baselines.json'))
    assert baselines['image_dir'] == 'datasets/nih-cxr-mini'
    assert baselines['n_fit'] == 160  # the 200 shipped healthy images less HOLDOUT's 40
    # the shipped mixed_truth.csv labels the held-out mixed images: a validation AUROC
    record = json.loads(open(tmp_path / 'run' / 'models' / 'aucp.jsonl').readline())
    # stratified by default: a fifth of mixed/'s 60 diseased images (the plain hold-out drew 5)
    assert 0 <= record['val_AUROC'] <= 1 and record['n_mixed_anomalous'] == 12
    assert 'validation AUROC' in r.stdout
    assert metrics['healthy_pixel_reference'].startswith('40 healthy images held out')
    # ends with the seed's row of the headline table, the validation AUROC beside the test's
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith(f"| {tmp_path / 'run'} | {metrics['image_AUROC']:.3f}")
    assert last.endswith(f"| {metrics['validation']['image_AUROC']['ref_z']:.3f} |")


@pytest.mark.slow
def test_check_resume_gpu_script_on_the_cpu(tmp_path):
    """tools/check_resume_gpu.sh (run on GPUs) compares a resumed run with the uninterrupted one;
    on the CPU they must agree exactly, and the script must say so."""
    out = tmp_path / 'resume'
    r = subprocess.run(['bash', os.path.join(ROOT, 'tools', 'check_resume_gpu.sh'), str(out)],
                       env={**os.environ, 'DEVICE': 'cpu', 'ONLY': 'default',
                            'OMP_NUM_THREADS': '1'},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1] == \
        'default            losses identical to 20; max |weight diff| at 20: 0', r.stdout


def _fresh_clone(dest):
    """The project's files as a clone has them (git's tracked and not-ignored files, as they are
    in the working tree): no data/covid/, no ../shared beside it, no run outputs."""
    listed = subprocess.run(['git', '-C', ROOT, 'ls-files', '-z', '--cached', '--others',
                             '--exclude-standard'], capture_output=True)
    if listed.returncode != 0:
        pytest.skip('needs a git checkout to tell which files are the project')
    for rel in filter(None, listed.stdout.decode().split('\0')):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src) or os.path.islink(src):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel), follow_symlinks=False)
    return dest


def _covidx_stand_in(root, labels_dir):
    """A COVIDx-shaped tree: train/ and test/ hold every image the label files in labels_dir
    name, each a link to one tiny PNG (images are only decoded, and cheaply so)."""
    import numpy as np
    from PIL import Image
    from tools import prepare_covidx as pc
    os.makedirs(root)
    tiny = root / 'tiny.png'
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(tiny)
    for sub in ('train', 'test'):
        os.makedirs(root / sub)
        for r in pc.parse_label_file(os.path.join(labels_dir, f'{sub}_COVIDx7B.txt')):
            os.symlink(tiny, root / sub / r.filename)
    return root


@pytest.mark.slow
def test_covid_scripts_build_the_missing_split_lists(tmp_path):
    # A fresh clone (a copy of the project's files, nothing beside it) plus the README's dataset
    # step (COVIDx train/ and test/ under datasets/covid): bash train_covid.sh and bash
    # test_covid.sh with their default folders, nothing else fetched.
    clone = _fresh_clone(tmp_path / 'clone')
    assert not os.path.exists(clone / 'data' / 'covid')
    assert not os.path.exists(tmp_path / 'shared')  # the development workspace's ../shared
    _covidx_stand_in(clone / 'datasets' / 'covid', clone / 'data' / 'covidnet_labels')
    unset = ('IMAGE_DIR', 'LIST_DIR', 'OUT', 'COVIDX_TRAIN_LABELS', 'COVIDX_TEST_LABELS')
    env = {**{k: v for k, v in os.environ.items() if k not in unset}, **TINY,
           'NUM_ITERS': '2', 'MODEL_SAVE_STEP': '2', 'SAMPLE_STEP': '2'}  # default folders
    r = subprocess.run(['bash', 'train_covid.sh', '--use_tensorboard', 'false'], cwd=clone,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    built = [line for line in r.stdout.splitlines() if 'built them' in line]
    assert len(built) == 1, r.stdout
    assert 'healthy 10031, mixed 5233 (1570 COVID-positive), test 100 + 100' in built[0]
    assert os.path.exists(clone / 'covid' / 'models' / '2-G.ckpt')
    import data_loader
    lists = clone / 'data' / 'covid'
    sizes = {n: len(data_loader.safe_load_list(str(lists / f'{n}.pickle')))
             for n in ('train_neg', 'train_pos', 'train_neg_mixed', 'test_neg', 'test_pos')}
    assert sizes == {'train_neg': 10031, 'train_pos': 1570, 'train_neg_mixed': 3663,
                     'test_neg': 100, 'test_pos': 100}  # the original's counts
    # the lists now exist: testing uses them as they are, without building them again
    r = subprocess.run(['bash', 'test_covid.sh'], cwd=clone, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert 'built them' not in r.stdout
    metrics = json.load(open(clone / 'covid' / 'results' / 'metrics.json'))
    assert metrics['iteration'] == 2 and metrics['n_normal'] == 100


def test_covid_scripts_stop_in_one_line_on_bad_label_files(tmp_path):
    # Other label files (another COVIDx version) are named by variables; one that is absent
    # stops the script before training, in one line, and leaves no lists behind.
    env = {'LIST_DIR': str(tmp_path / 'lists'), 'OUT': str(tmp_path / 'out'),
           'COVIDX_TRAIN_LABELS': str(tmp_path / 'train_COVIDx9.txt')}
    r = run_script('train_covid.sh', env)
    assert r.returncode == 2
    assert r.stderr.strip().count('\n') == 0 and 'train_COVIDx9.txt' in r.stderr, r.stderr
    assert not (tmp_path / 'lists').exists() and not (tmp_path / 'out').exists()


@pytest.fixture(scope='module')
def folder_run(tmp_path_factory):
    """train_folder.sh on own radiographs, without test/ and then with it."""
    # A Folder layout given relative to where the script is run from: first train only, then
    # the finished run is tested, not retrained. The tests below share these runs, and what the
    # first run left is kept before the second changes it.
    import synthetic
    tmp = tmp_path_factory.mktemp('folder_run')
    synthetic.make_synthetic_dataset(tmp / 'cxr', n_healthy=10, n_mixed=10,
                                     n_test_normal=3, n_test_anomalous=3, size=32, seed=0)
    os.replace(tmp / 'cxr' / 'test', tmp / 'test_later')
    env = {**os.environ, **TINY, 'DATA': 'cxr', 'OUT': 'run', 'NUM_ITERS': '4',
           'MODEL_SAVE_STEP': '2', 'ENSEMBLE': '2', 'SCORE_VARIANT': 'p99',
           'OMP_NUM_THREADS': '1'}

    def train_folder():
        return subprocess.run(['bash', os.path.join(ROOT, 'train_folder.sh'), '--use_tensorboard',
                               'false', '--bootstrap', '0', '--report', 'false'], cwd=tmp,
                              env=env, capture_output=True, text=True, timeout=300)
    models = tmp / 'run' / 'models'
    first = train_folder()
    kept = dict(first=first, detector=None, run_config=None, aucp=None, checkpoints=None)
    if first.returncode == 0:
        kept.update(detector=json.load(open(models / 'detector.json')),
                    run_config=json.load(open(models / 'run_config.json'))['config'],
                    aucp=json.loads(open(models / 'aucp.jsonl').readline()),
                    checkpoints={f: os.stat(models / f).st_mtime_ns for f in os.listdir(models)
                                 if f.endswith('.ckpt')})
        os.replace(tmp / 'test_later', tmp / 'cxr' / 'test')
    second = train_folder() if first.returncode == 0 else None
    return dict(kept, tmp=tmp, env=env, second=second)


@pytest.mark.slow
def test_train_folder_script_on_own_images_tiny(folder_run):
    tmp, r = folder_run['tmp'], folder_run['first']
    assert r.returncode == 0, r.stderr
    assert 'the test set was not scored' in r.stdout
    run_config = folder_run['run_config']
    assert run_config['holdout_fraction'] == 0.2 and run_config['lambda_msmall'] == 30
    assert run_config['image_dir'] == 'cxr' and run_config['image_size'] == 32
    # the hold-out of 2 healthy + 2 mixed images: AUCp at the checkpoint
    record = folder_run['aucp']
    assert record['iter'] == 2 and (record['n_healthy'], record['n_mixed']) == (2, 2)
    assert 0 <= record['AUCp'] <= 1

    r = folder_run['second']
    assert r.returncode == 0, r.stderr
    assert 'Loading the trained models from step 4' in r.stdout
    metrics = json.load(open(tmp / 'run' / 'results' / 'metrics.json'))
    assert metrics['iteration'] == 4 and metrics['n_normal'] == 3
    models = tmp / 'run' / 'models'
    assert {f: os.stat(models / f).st_mtime_ns for f in os.listdir(models)
            if f.endswith('.ckpt')} == folder_run['checkpoints']  # not trained again
    # the score command it prints runs as printed, on new images
    lines = r.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('Score new images:'))
    command = ' '.join(line.rstrip('\\').strip() for line in lines[start:start + 2])
    command = command.split(':', 1)[1].replace('DIR', 'cxr/test/normal', 1)
    r = subprocess.run(command + ' --device cpu --num_workers 0 --report false', shell=True,
                       cwd=tmp, env=folder_run['env'], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(read_csv(tmp / 'run' / 'scores' / 'scores.csv')) == 3


@pytest.mark.slow
def test_train_folder_run_scores_alike_in_testauc_score_mode_and_the_api(folder_run, capsys,
                                                                           monkeypatch):
    # The run's recommendation (detector.json, written by the script) is what score mode and
    # the API use without flags: the same images get the same scores from all three.
    import healthygan
    import main as cli
    tmp = folder_run['tmp']
    for r in (folder_run['first'], folder_run['second']):
        assert r.returncode == 0, r.stderr
    # no test/: the recommendation is the recipe's
    assert folder_run['detector'] == {'test_iters': 'latest', 'ensemble': 2, 'score_variant': 'p99'}
    # testAUC: the recommendation is what it tested
    advice = json.load(open(tmp / 'run' / 'models' / 'detector.json'))
    assert advice == {'test_iters': 4, 'ensemble': 2, 'score_variant': 'p99'}
    tested = {os.path.basename(r['path']): float(r['pred_score'])
              for r in read_csv(tmp / 'run' / 'results' / 'scores.csv')}
    monkeypatch.chdir(tmp)  # score mode as a user runs it there, with relative paths
    score = ['--mode', 'score', '--model_save_dir', 'run/models', '--score_dir', 'cxr/test',
             '--num_workers', '0', '--report', 'false']
    capsys.readouterr()
    cli.main(score)
    out = capsys.readouterr().out
    assert '--test_iters 4 (run/models/detector.json)' in out
    assert '--score_variant p99 (run/models/detector.json)' in out
    scored = {os.path.basename(r['path']): float(r['pred_score'])
              for r in read_csv(tmp / 'run' / 'scores' / 'scores.csv')}
    det = healthygan.load(tmp / 'run' / 'models')
    assert (det.members, det.variant) == ([2, 4], 'p99')
    folder = tmp / 'cxr' / 'test'
    api = {os.path.basename(p): det.score(str(p)).pred_score for p in sorted(folder.rglob('*.png'))}
    assert len(tested) == 6 and scored.keys() == tested.keys() == api.keys()
    for name, value in tested.items():
        assert scored[name] == pytest.approx(value, abs=1e-6)
        assert api[name] == pytest.approx(value, abs=1e-6)
    # a flag given still wins, and says so
    cli.main(score + ['--ensemble', '1', '--result_dir', 'one'])
    out = capsys.readouterr().out
    assert '--ensemble 1 (given)' in out and '--test_iters 4 (run/models/detector.json)' in out


def test_train_folder_script_needs_healthy_and_mixed(tmp_path):
    os.makedirs(tmp_path / 'cxr' / 'healthy')
    r = run_script('train_folder.sh', {'DATA': str(tmp_path / 'cxr'), 'OUT': str(tmp_path / 'o')})
    assert r.returncode == 2 and r.stderr.count('\n') == 1, r.stderr
    assert f'{tmp_path}/cxr/mixed not found' in r.stderr
    r = run_script('train_folder.sh', {'DATA': ''})
    assert r.returncode == 2 and 'set DATA' in r.stderr and r.stderr.count('\n') == 1, r.stderr
    assert not (tmp_path / 'o').exists()


@pytest.mark.slow
def test_bench_zhanglab_prints_the_validation_table_with_references_and_leaves_test_alone(
        tmp_path):
    import numpy as np
    from conftest import write_image
    from test_selection import labelled_layout
    data, _ = labelled_layout(tmp_path / 'zl')
    shutil.rmtree(data / 'test')  # as in development: no official test split
    rng = np.random.default_rng(5)
    for sub, bright in (('normal', 0), ('anomalous', 100)):
        for k in range(3):
            write_image(str(data / 'validation' / sub / f'{sub}_{k}.png'), rng, bright=bright)
    env = {**TINY, 'DATA': str(data), 'OUT': str(tmp_path / 'run'), 'NUM_ITERS': '4',
           'MODEL_SAVE_STEP': '2', 'PCA_COMPONENTS': '2', 'KNN_K': '2', 'ENSEMBLE': '2',
           'HOLDOUT': '0.34'}
    r = run_script('bench_zhanglab.sh', env, '--use_tensorboard', 'false')
    assert r.returncode == 0, r.stderr
    assert 'Lead over the best of them' in r.stdout and 'TEST=0' in r.stdout
    assert not os.path.exists(tmp_path / 'run' / 'results' / 'metrics.json')  # test/ untouched
    refs = json.load(open(tmp_path / 'run' / 'baselines_validation' / 'baselines.json'))
    assert (refs['n_normal'], refs['n_anomalous']) == (3, 3) and 'knn' in refs['methods']
    table = r.stdout[r.stdout.index('| run | validation AUROC'):]
    assert str(tmp_path / 'run') in table and ('knn' in table or 'pca' in table)

    r = run_script('bench_zhanglab.sh', {**env, 'DATA': str(tmp_path / 'none')})
    assert r.returncode == 2 and 'prepare_zhanglab.py' in r.stderr
