"""Faithful by default: with every added flag at its default the program is the original's
(its flags, training sets, modes and numbers), checked against the original's own results."""
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_curve

import data_loader
import main as cli
import metrics
from conftest import TINY, shared_path, tiny_args, tiny_flags, tiny_solver, write_image
from model import Discriminator, Generator

# The original main.py's flags, in its order, with its defaults (ORIGINAL.md, "Flags").
ORIGINAL_FLAGS = {
    'image_size': 128, 'g_conv_dim': 64, 'd_conv_dim': 64, 'g_repeat_num': 6, 'd_repeat_num': 6,
    'lambda_cls': 0, 'lambda_rec': 1, 'lambda_gp': 10, 'lambda_id': 1, 'lambda_mask': 0.1,
    'lambda_msmall': 1, 'lambda_mzerone': 1, 'mask_loss_mode': 'sum', 'dataset': 'Covid',
    'batch_size': 16, 'num_iters': 200000, 'num_iters_decay': 100000, 'g_lr': 1e-4,
    'd_lr': 1e-4, 'n_critic': 2, 'beta1': 0.5, 'beta2': 0.999, 'resume_iters': None,
    'test_iters': 200000, 'num_workers': 12, 'mode': 'train', 'use_tensorboard': True,
    'image_dir': 'datasets/covid', 'log_dir': 'covid/logs', 'model_save_dir': 'covid/models',
    'sample_dir': 'covid/samples', 'result_dir': 'covid/results', 'log_step': 10,
    'sample_step': 1000, 'model_save_step': 10000, 'lr_update_step': 1000}


def test_help_lists_the_original_flags_first_with_their_defaults():
    parser = cli.build_parser()
    flags = [a.dest for a in parser._actions if a.dest != 'help']
    assert len(ORIGINAL_FLAGS) == 36
    assert flags[:36] == list(ORIGINAL_FLAGS)
    assert {k: parser.get_default(k) for k in ORIGINAL_FLAGS} == ORIGINAL_FLAGS
    text = parser.format_help()
    assert text.index('--lr_update_step') < text.index('--list_dir')  # added flags after
    assert '(default: 128)' in text


def test_added_flags_keep_the_original_training_sets(covid_dataset):
    # Every listed image is trained on: no hold-out unless one is asked for.
    config = cli.build_parser().parse_args(tiny_args(covid_dataset, covid_dataset / 'images',
                                                     '--list_dir', str(covid_dataset / 'lists'),
                                                     dataset='Covid'))
    assert config.holdout_fraction == 0
    split = data_loader.resolve_split(config, 'train')
    assert (len(split['healthy']), len(split['mixed'])) == (5, 5)
    assert split['holdout_healthy'] == split['holdout_mixed'] == []
    script = open(os.path.join(cli.__file__.rsplit(os.sep, 1)[0], 'train_covid.sh')).read()
    assert 'HOLDOUT_FRACTION=${HOLDOUT_FRACTION:-0}' in script


# ------------------------------------------------------------------------------------------------ #
#                 The original code's own training result (../shared/reference)                     #
# ------------------------------------------------------------------------------------------------ #

def plain_original_loop(ref):
    """The original's Solver.train() iterations written out plainly from the specification,
    sharing no helper with this project (only the networks)."""
    c = ref['config']
    G = Generator(c['g_conv_dim'], 0, c['g_repeat_num'])
    D = Discriminator(c['image_size'], c['d_conv_dim'], 0, c['d_repeat_num'])
    G.load_state_dict(ref['init_G'])
    D.load_state_dict(ref['init_D'])
    g_opt = torch.optim.Adam(G.parameters(), c['g_lr'], (c['beta1'], c['beta2']))
    d_opt = torch.optim.Adam(D.parameters(), c['d_lr'], (c['beta1'], c['beta2']))

    def translate(x):
        logits, mask_logit = G(x)
        m, raw = (torch.tanh(mask_logit) + 1) / 2, torch.tanh(logits)
        return m * raw + (1 - m) * x, raw, m

    def mask_term(m):
        return (c['lambda_msmall'] * torch.mean(m) ** 2
                + c['lambda_mzerone'] * (torch.mean(1 / (torch.abs(m - 0.5) + 0.01)) - 1 / 0.51))

    torch.manual_seed(ref['seed_before_training'])
    for i in range(ref['iterations']):
        x_A, x_B = ref['batches'][i + 1]
        d_real = -torch.mean(D(x_B)[1])
        x_fake = translate(x_A)[0]
        d_fake = torch.mean(D(x_fake.detach())[1])
        alpha = torch.rand(x_B.size(0), 1, 1, 1)
        x_int = (alpha * x_B.data + (1 - alpha) * x_fake.data).requires_grad_(True)
        out = D(x_int)[1]
        grad = torch.autograd.grad(out, x_int, torch.ones(out.size()), retain_graph=True,
                                   create_graph=True, only_inputs=True)[0]
        gp = torch.mean((torch.sqrt(torch.sum(grad.view(grad.size(0), -1) ** 2, dim=1)) - 1) ** 2)
        g_opt.zero_grad()
        d_opt.zero_grad()
        (d_real + d_fake + c['lambda_gp'] * gp).backward()
        d_opt.step()
        if (i + 1) % c['n_critic'] == 0:
            x_hat_A, raw_A, m_A = translate(x_A)
            x_hat_B, raw_B, m_B = translate(x_B)
            g_loss = (-torch.mean(D(x_hat_A)[1]) - torch.mean(D(x_hat_B)[1])
                      + c['lambda_id'] * torch.mean(torch.abs(x_B - raw_B))
                      + c['lambda_rec'] * torch.mean(torch.abs(x_A - (m_A * x_A + (1 - m_A) * raw_A)))
                      + c['lambda_mask'] * (mask_term(m_A) + mask_term(m_B)) / 2)
            g_opt.zero_grad()
            d_opt.zero_grad()
            g_loss.backward()
            g_opt.step()
    return G.state_dict(), D.state_dict()


def project_default_training(ref):
    """This project's training step, every added flag at its default, from the same start."""
    from healthygan.model.losses import learning_rate
    c = ref['config']
    # The preset with the reference run's sizes and schedule, not the preset's: the comparison
    # is bit for bit against the original code run at that configuration.
    solver = tiny_solver(**{k: c[k] for k in (
        'image_size', 'g_conv_dim', 'd_conv_dim', 'g_repeat_num', 'd_repeat_num', 'batch_size',
        'num_iters', 'num_iters_decay', 'lr_update_step')})
    solver.G.load_state_dict(ref['init_G'])
    solver.D.load_state_dict(ref['init_D'])
    torch.manual_seed(ref['seed_before_training'])
    for i in range(ref['iterations']):
        x_A, x_B = ref['batches'][i + 1]
        solver.set_lr(*(learning_rate(i, lr, c['num_iters'], c['num_iters_decay'],
                                      c['lr_update_step']) for lr in (c['g_lr'], c['d_lr'])))
        solver.d_step(x_A, x_B, keep_fake=(i + 1) % c['n_critic'] == 0)
        if (i + 1) % c['n_critic'] == 0:
            solver.g_step(x_A, x_B)
    return solver.G.state_dict(), solver.D.state_dict()


def max_diff(a, b):
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in b)


@pytest.fixture(scope='module')
def original_step():
    ref = torch.load(shared_path('reference', 'original_step.pt'), weights_only=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(ref['threads'])  # the recording's thread count: the same sums
    try:
        yield ref, project_default_training(ref), plain_original_loop(ref)
    finally:
        torch.set_num_threads(threads)


def test_default_training_equals_the_plain_original_loop_bit_for_bit(original_step):
    ref, ours, plain = original_step
    for got, want in zip(ours, plain):
        assert set(got) == set(want)
        assert all(torch.equal(got[k], want[k]) for k in want), max_diff(got, want)


def test_default_training_reproduces_the_original_codes_result(original_step):
    """The original code's own Solver.train() result (original_step.pt). A wrong formula, batch
    order or random draw moves the weights by about 1e-4 after these steps; CPUs whose
    convolution kernels round differently from the recording machine's differ by < 1e-6."""
    ref, ours, plain = original_step
    for got, want in zip(ours, (ref['final_G'], ref['final_D'])):
        assert set(got) == set(want)
        assert max_diff(got, want) < 1e-6
    same_kernels = all(torch.equal(plain[j][k], want[k]) for j, want in
                       enumerate((ref['final_G'], ref['final_D'])) for k in want)
    if not same_kernels:
        pytest.skip('bit-for-bit part: this CPU rounds the plain loop differently from the '
                    f'recording machine (max |diff| {max_diff(plain[0], ref["final_G"]):.1e}); '
                    'the project equals the plain loop here bit for bit (test above)')
    for got, want in zip(ours, (ref['final_G'], ref['final_D'])):
        assert all(torch.equal(got[k], want[k]) for k in want)


# ------------------------------------------------------------------------------------------------ #
#                                 The operating point's ties                                        #
# ------------------------------------------------------------------------------------------------ #

def test_threshold_ties_are_broken_as_the_original_broke_them():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(100), np.ones(100)]
    differ_from_argmin = 0
    for _ in range(300):
        scores = rng.integers(0, 30, 200).astype(float)  # many ties
        fpr, tpr, thresholds = roc_curve(labels, scores)
        gap = np.abs(tpr - (1 - fpr))
        k = int(pd.Series(gap).argsort()[0])  # the original's own expression
        assert metrics.original_threshold(labels, scores) == \
            (float(thresholds[k]), float(tpr[k]), float(1 - fpr[k]))
        differ_from_argmin += k != int(np.argmin(gap))
    assert differ_from_argmin > 0  # the rule matters on these sets


# ------------------------------------------------------------------------------------------------ #
#                  Testing needs only the test images and G, as in the original                    #
# ------------------------------------------------------------------------------------------------ #

@pytest.fixture(scope='module')
def trained_run(tmp_path_factory):
    """A tiny run trained on a Folder layout, then the training folders removed."""
    root = tmp_path_factory.mktemp('run')
    rng = np.random.default_rng(3)
    for sub, n, bright in [('healthy', 4, 0), ('mixed', 4, 0), ('test/normal', 3, 0),
                           ('test/anomalous', 5, 100)]:
        for k in range(n):
            write_image(str(root / 'data' / sub / f'{k}.png'), rng, bright=bright)
    args = tiny_args(root, root / 'data', '--use_tensorboard', 'false')
    cli.main(args + ['--num_iters', '2', '--model_save_step', '2'])
    shutil.rmtree(root / 'data' / 'healthy')
    shutil.rmtree(root / 'data' / 'mixed')
    return root, args


def test_training_saves_the_lung_prior_with_the_run(trained_run):
    root, _ = trained_run
    saved = torch.load(root / 'run' / 'models' / 'lung_prior.pt', weights_only=True)
    assert saved['image_size'] == 32 and saved['prior'].shape == (32, 32)
    assert 0 < saved['prior'].float().mean() < 1


def test_test_mode_writes_grids_of_the_test_images_without_training_images(trained_run):
    root, args = trained_run
    out = root / 'grids'
    cli.main(args + ['--mode', 'test', '--test_iters', '2', '--result_dir', str(out)])
    # max(5 anomalous, 3 normal) pairs in batches of 2: three grids
    assert sorted(os.listdir(out)) == ['2-1-images.jpg', '2-2-images.jpg', '2-3-images.jpg']
    loader = data_loader.get_loader(cli.build_parser().parse_args(args + ['--mode', 'test']),
                                    'test', data_loader.resolve_split(
                                        cli.build_parser().parse_args(args), 'test'))
    pairs = [pair for x_A, x_B in loader for pair in zip(x_A, x_B)]
    assert len(pairs) == 5
    # A is the anomalous set in order, B the normal one wrapping round (the original's order)
    normal = data_loader.list_images(str(root / 'data' / 'test' / 'normal'))
    anomalous = data_loader.list_images(str(root / 'data' / 'test' / 'anomalous'))
    transform = data_loader.build_transform(32)
    for k, (x_A, x_B) in enumerate(pairs):
        assert torch.allclose(x_A, transform(data_loader.load_image(anomalous[k])), atol=1e-6)
        assert torch.allclose(x_B, transform(data_loader.load_image(normal[k % 3])), atol=1e-6)


def test_testAUC_without_training_images_uses_the_saved_lung_prior(trained_run):
    root, args = trained_run
    result = cli.main(args + ['--mode', 'testAUC', '--test_iters', '2', '--report', 'false',
                              '--bootstrap', '0', '--result_dir', str(root / 'auc')])
    assert result['n_normal'] == 3 and result['n_anomalous'] == 5
    assert 'lung' in result['variants'] and 'notes' not in result


def test_testAUC_leaves_the_lung_score_out_where_no_prior_was_saved(trained_run, tmp_path,
                                                                      capsys):
    root, args = trained_run
    models = tmp_path / 'models'
    models.mkdir()
    shutil.copy(root / 'run' / 'models' / '2-G.ckpt', models)  # a checkpoint alone
    run = args + ['--mode', 'testAUC', '--test_iters', '2', '--report', 'false',
                  '--bootstrap', '0', '--model_save_dir', str(models),
                  '--result_dir', str(tmp_path / 'auc')]
    result = cli.main(run)
    assert 'lung' not in result['variants'] and 'mean' in result['variants']
    assert 'lung_prior.pt not found' in result['notes']['lung']
    assert json.load(open(tmp_path / 'auc' / 'metrics.json'))['notes'] == result['notes']
    # asked for as the headline score, without a prior or training images: one clear line
    with pytest.raises(SystemExit) as e:
        cli.main(run + ['--score_variant', 'lung'])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and '--score_variant lung needs the lung prior' in err


@pytest.mark.slow
def test_pretrained_script_on_a_tree_of_test_images_lists_and_a_checkpoint(tmp_path):
    """test_covid_pretrained.sh as its users run it: the pickled lists, the test images and the
    released-format generator; no training image anywhere."""
    import pickle
    import subprocess
    from conftest import ROOT
    rng = np.random.default_rng(5)
    lists = {'train_neg': ['n0.png', 'n1.png'], 'train_pos': ['p0.png'],
             'train_neg_mixed': ['m0.png'], 'test_neg': ['tn0.png', 'tn1.png'],
             'test_pos': ['tp0.png', 'tp1.png']}
    os.makedirs(tmp_path / 'lists')
    for name, files in lists.items():
        with open(tmp_path / 'lists' / f'{name}.pickle', 'wb') as f:
            pickle.dump(files, f)
    for name in ('test_neg', 'test_pos'):
        for fname in lists[name]:
            write_image(str(tmp_path / 'images' / 'test' / fname), rng,
                        bright=100 if name == 'test_pos' else 0)
    os.makedirs(tmp_path / 'pre')
    torch.manual_seed(0)
    # the tiny preset's generator (the released one is the default 128 px network)
    torch.save(Generator(TINY['g_conv_dim'], 0, TINY['g_repeat_num']).state_dict(),
               tmp_path / 'pre' / '360000-G.ckpt')
    env = {**os.environ, 'PRETRAINED_DIR': str(tmp_path / 'pre'),
           'IMAGE_SIZE': str(TINY['image_size']),
           # the script checks the file against these before anything runs
           'G_CONV_DIM': str(TINY['g_conv_dim']), 'G_REPEAT_NUM': str(TINY['g_repeat_num']),
           'IMAGE_DIR': str(tmp_path / 'images'), 'LIST_DIR': str(tmp_path / 'lists'),
           'RESULT_DIR': str(tmp_path / 'res'), 'NUM_WORKERS': '0', 'DEVICE': 'cpu'}
    r = subprocess.run(['bash', os.path.join(ROOT, 'test_covid_pretrained.sh'),
                        *tiny_flags(batch_size=1),  # the script's BATCH_SIZE
                        '--report', 'false', '--bootstrap', '0'],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert 'Traceback' not in r.stderr
    result = json.load(open(tmp_path / 'res' / 'metrics.json'))
    assert result['n_normal'] == 2 and result['n_anomalous'] == 2
    assert 'lung' in result['notes']
