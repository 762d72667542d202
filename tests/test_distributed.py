"""Several processes (torchrun, gloo on the CPU): the same training as one process on the
concatenated batch, ranks that stay identical, rank-0-only files, resume across rank counts."""
import json
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest
import torch
import torch.multiprocessing as mp
from torch.optim.optimizer import register_optimizer_step_post_hook

import main as cli
from conftest import ROOT, tiny_args as preset_args

# The preset at 16 px, 8 channels (a few seconds), on purpose: the float tolerances (TOL) of the
# 2-rank vs 1-process comparisons were measured at these sizes. 12 pairs an epoch
# (folder_dataset): 3 global batches of 4, so 4 iterations cross an epoch boundary (reshuffle)
# at iteration 3.
SIZES = dict(image_size=16, g_conv_dim=8, d_conv_dim=8)
TINY = ['--deterministic', 'true', '--use_tensorboard', 'false',
        '--log_step', '1', '--sample_step', '1000', '--model_save_step', '2', '--num_iters', '4']
TEST = ['--mode', 'testAUC', '--test_iters', '4', '--report', 'false', '--bootstrap', '0']
WORLD = 2
TOL = dict(rtol=1e-5, atol=1e-6)


def tiny_args(run, data, *extra):
    """The preset's argv at SIZES."""
    return preset_args(run, data, *extra, **SIZES)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def record_steps():
    """Every optimizer step's parameters, flattened, through PyTorch's global step hook."""
    steps = []

    def hook(optimizer, args, kwargs):
        params = [p for group in optimizer.param_groups for p in group['params']]
        steps.append(torch.cat([p.detach().reshape(-1) for p in params]).clone())
    handle = register_optimizer_step_post_hook(hook)
    return steps, handle


@pytest.fixture(autouse=True)
def one_thread():
    """The one-process reference runs use one thread like the forked ranks: a different thread
    count sums in another order, and bit-for-bit comparisons would fail on that alone."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _worker(rank, runs, out_dir, world=WORLD):
    """One rank as torchrun would start it: its environment, then main.main(argv) per run."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR='127.0.0.1')
    torch.set_num_threads(1)
    results = []
    for port, argv in runs:
        os.environ['MASTER_PORT'] = str(port)  # a fresh rendezvous for each run
        steps, handle = record_steps()
        result = cli.main(argv)
        handle.remove()
        results.append({'steps': steps, 'result': result})
    torch.save(results, os.path.join(out_dir, f'rank{rank}.pt'))


def ckpt(run, iters, net):
    return torch.load(os.path.join(run, 'run', 'models', f'{iters}-{net}.ckpt'), weights_only=True)


def assert_close_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), **TOL), k


def parameters(state):
    return {k: v for k, v in state.items() if 'running_' not in k}


def stats(run):
    with open(os.path.join(run, 'run', 'logs', 'stats.jsonl')) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process_on_the_concatenated_batch(tmp_path, folder_dataset):
    one, ddp = tmp_path / 'one', tmp_path / 'ddp'

    # One process, batch 4: the reference, with its parameters after every optimizer step.
    steps_one, handle = record_steps()
    cli.main(tiny_args(one, folder_dataset, *TINY, '--batch_size', '4'))
    handle.remove()

    # The 1-process run's iteration-2 checkpoint, to be resumed by the two ranks.
    resumed2 = tmp_path / 'resumed_by_2'
    os.makedirs(os.path.join(resumed2, 'run', 'models'))
    for name in ('2-G.ckpt', '2-D.ckpt', '2-state.pt'):
        shutil.copy(os.path.join(one, 'run', 'models', name),
                    os.path.join(resumed2, 'run', 'models', name))

    # Two gloo ranks, batch 2 each: train; resume the 1-process run; testAUC.
    runs = [tiny_args(ddp, folder_dataset, *TINY, '--batch_size', '2'),
            tiny_args(resumed2, folder_dataset, *TINY, '--batch_size', '2',
                      '--resume_iters', '2', '--sample_step', '4'),
            tiny_args(ddp, folder_dataset, *TINY, *TEST)]
    runs = [(free_port(), argv) for argv in runs]
    # fork: the ranks inherit the imported modules (spawn would import torch twice more).
    mp.start_processes(_worker, args=(runs, str(tmp_path)), nprocs=WORLD, join=True,
                       start_method='fork')
    ranks = [torch.load(tmp_path / f'rank{r}.pt', weights_only=False) for r in range(WORLD)]

    # The ranks stay identical to each other after every step (D and G steps alternate).
    steps = [ranks[r][0]['steps'] for r in range(WORLD)]
    assert len(steps[0]) == len(steps[1]) == len(steps_one) == 6  # 4 D steps, 2 G steps
    for a, b in zip(*steps):
        assert torch.equal(a, b)
    # ... and equal, within float tolerance, one process trained on the concatenated batch.
    for k, (a, b) in enumerate(zip(steps[0], steps_one)):
        assert torch.allclose(a, b, **TOL), f'optimizer step {k}'
    assert not torch.allclose(steps_one[0], steps_one[3])  # D's weights did move

    # Checkpoints: bare state dicts from rank 0 (the InstanceNorm statistics averaged).
    for iters in (2, 4):
        for net in ('G', 'D'):
            assert_close_state(ckpt(ddp, iters, net), ckpt(one, iters, net))
    # Logs from rank 0 only: one line per iteration, the loss means over the global batch.
    lines = stats(ddp)
    assert [r['iter'] for r in lines] == [1, 2, 3, 4]
    for r, s in zip(lines, stats(one)):
        for tag in ('D/loss_real', 'D/loss_fake', 'D/loss_gp', 'G/loss_rec', 'G/loss_id'):
            if tag in s:
                assert r[tag] == pytest.approx(s[tag], rel=1e-4, abs=1e-6), (r['iter'], tag)
    with open(os.path.join(ddp, 'run', 'models', 'run_config.json')) as f:
        assert json.load(f)['world_size'] == WORLD
    assert torch.load(os.path.join(ddp, 'run', 'models', '4-state.pt'),
                      weights_only=True)['data_pairs_done'] == 4  # iteration 4: 1st batch of 2nd epoch

    # 1 -> 2 ranks: the two ranks resume the 1-process run where it stood.
    # (Its sample grid at iteration 4 ran G on rank 0 only, which moves rank 0's InstanceNorm
    # running statistics, unused in training and testing: the parameters are compared.)
    for net in ('G', 'D'):
        assert_close_state(parameters(ckpt(resumed2, 4, net)), parameters(ckpt(one, 4, net)))
    assert os.listdir(os.path.join(resumed2, 'run', 'samples')) == ['4-images.jpg']
    # 2 -> 1 rank: one process at batch 4 resumes the 2-rank run where it stood.
    resumed1 = tmp_path / 'resumed_by_1'
    shutil.copytree(os.path.join(ddp, 'run', 'models'), os.path.join(resumed1, 'run', 'models'))
    for name in ('4-G.ckpt', '4-D.ckpt', '4-state.pt'):
        os.remove(os.path.join(resumed1, 'run', 'models', name))
    cli.main(tiny_args(resumed1, folder_dataset, *TINY, '--batch_size', '4',
                       '--resume_iters', '2'))
    for net in ('G', 'D'):
        assert_close_state(ckpt(resumed1, 4, net), ckpt(ddp, 4, net))

    # testAUC under torchrun: rank 0 scores every image, as one process does.
    assert ranks[1][2]['result'] is None
    alone = cli.main(tiny_args(tmp_path / 'alone', folder_dataset, *TINY, *TEST,
                               '--model_save_dir', os.path.join(ddp, 'run', 'models')))
    assert ranks[0][2]['result']['image_AUROC'] == alone['image_AUROC']



def _train_worker(rank, port, argv):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_WORLD_SIZE=str(WORLD), MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cli.main(argv)


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_iteration(tmp_path, folder_dataset):
    """SIGTERM (a pre-empted job) reaching rank 1 only: the ranks agree on one log step, rank 0
    saves there, both exit, and one process resumes the run."""
    args = tiny_args(tmp_path, folder_dataset, *TINY[:-2], '--num_iters', '100000',
                     '--log_step', '5', '--model_save_step', '100000')
    ctx = mp.start_processes(_train_worker, args=(free_port(), args), nprocs=WORLD, join=False,
                             start_method='fork')
    stats_path = tmp_path / 'run' / 'logs' / 'stats.jsonl'
    deadline = time.time() + 120
    while not (stats_path.exists() and stats_path.stat().st_size > 0):  # training under way
        assert all(p.is_alive() for p in ctx.processes) and time.time() < deadline
        time.sleep(0.1)
    os.kill(ctx.processes[1].pid, signal.SIGTERM)
    for p in ctx.processes:
        p.join(60)
    assert [p.exitcode for p in ctx.processes] == [128 + signal.SIGTERM] * WORLD
    models = os.listdir(tmp_path / 'run' / 'models')
    saved = [int(f.split('-')[0]) for f in models if f.endswith('-state.pt')]
    assert len(saved) == 1 and saved[0] % 5 == 0, models  # one agreed log step
    k = saved[0]
    lines = [json.loads(line) for line in open(stats_path)]
    assert [r['iter'] for r in lines] == list(range(5, k + 1, 5))  # one writer, no duplicates
    state = torch.load(tmp_path / 'run' / 'models' / f'{k}-state.pt', weights_only=True)
    assert state['world_size'] == WORLD and state['data_pairs_done'] == 4 * ((k - 1) % 3 + 1)
    # One process resumes it (2 ranks x batch 2 = batch 4).
    cli.main(tiny_args(tmp_path, folder_dataset, *TINY[:-2], '--num_iters', str(k + 1),
                       '--batch_size', '4', '--resume_iters', 'latest'))
    assert os.path.exists(tmp_path / 'run' / 'models' / f'{k + 1}-G.ckpt')


def test_torchrun_with_one_process_is_the_plain_run_bit_for_bit(tmp_path, folder_dataset):
    """torchrun --nproc_per_node 1 joins a group of one and runs every collective (the GPU check
    does this on NCCL); on the CPU it must change nothing at all."""
    plain, group = tmp_path / 'plain', tmp_path / 'group'
    cli.main(tiny_args(plain, folder_dataset, *TINY, '--batch_size', '4'))
    runs = [(free_port(), tiny_args(group, folder_dataset, *TINY, '--batch_size', '4'))]
    mp.start_processes(_worker, args=(runs, str(tmp_path), 1), nprocs=1, join=True,
                       start_method='fork')
    for iters in (2, 4):
        for net in ('G', 'D'):
            a, b = ckpt(plain, iters, net), ckpt(group, iters, net)
            assert all(torch.equal(a[k], b[k]) for k in a), (iters, net)
    assert stats(plain) == [dict(r, time=s['time']) for r, s in zip(stats(group), stats(plain))]


@pytest.mark.parametrize('env, message', [
    ({'NPROC_PER_NODE': '3'}, 'GLOBAL_BATCH 16 cannot be shared by 3 processes'),
    ({'NNODES': '2', 'NPROC_PER_NODE': '2'}, 'NNODES=2 needs RDZV_ENDPOINT')])
def test_ddp_script_refuses_a_batch_it_cannot_share_and_a_missing_endpoint(env, message):
    r = subprocess.run(['bash', os.path.join(ROOT, 'train_covid_ddp.sh')], capture_output=True,
                       text=True, env={**os.environ, **env}, timeout=60)
    assert r.returncode == 2 and message in r.stderr
