"""The Solver's parts, each built on its own from what it uses (healthygan/solver.py composes
them): the networks, the training step, the checkpoint store, the scorer, the lung prior, the
checkpoint choice and the training loop."""
import pytest
import torch

from conftest import tiny_args, tiny_config
from healthygan.detection import anomaly
from healthygan.detection.aucp import AUCpLog
from healthygan.detection.lung import LungPrior
from healthygan.detection.detector import Detector
from healthygan.detection.selection import resolve_iters
from healthygan.errors import CheckpointError
from healthygan.model.losses import generate, loss_weights
from healthygan.training.build import Networks
from healthygan.training.checkpoints import CheckpointStore
from healthygan.training.loop import Trainer
from healthygan.training.loop import TrainStep

CPU = torch.device('cpu')


def networks(seed=0, *extra):
    torch.manual_seed(seed)
    config = tiny_config(*extra)
    return config, Networks(config, CPU)


def batch(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 3, 32, 32, generator=g) * 2 - 1 for _ in range(2)]


def test_a_train_step_updates_the_networks_it_is_given():
    config, nets = networks()
    step = TrainStep(nets, config.lambda_gp, loss_weights(config, 'G'))
    before = [p.clone() for p in nets.G.parameters()]
    d_terms = step.d_step(*batch(), keep_fake=True)
    g_terms = step.g_step(*batch())
    assert list(d_terms) == ['D/loss_real', 'D/loss_fake', 'D/loss_gp']
    assert list(g_terms)[:5] == ['G/loss_fake', 'G/loss_rec', 'G/loss_fake_id', 'G/loss_id',
                                 'G/loss_mask']
    assert 'Mask/OT_min' in g_terms and 'Mask/OO_zo' in g_terms
    assert any(not torch.equal(a, b) for a, b in zip(before, nets.G.parameters()))


def test_a_checkpoint_store_writes_and_restores_a_set(tmp_path):
    config, nets = networks(0, '--model_save_dir', str(tmp_path))
    store = CheckpointStore(config, nets)
    sampler = type('Sampler', (), {'epoch': 0})()
    store.save_checkpoint(3, sampler, 0, {'run_id': store.run_id})
    assert sorted(p.name for p in tmp_path.iterdir()) == ['3-D.ckpt', '3-G.ckpt', '3-state.pt']
    _, other = networks(1, '--model_save_dir', str(tmp_path))
    CheckpointStore(config, other).restore_model(3)
    for a, b in zip(nets.G.state_dict().values(), other.G.state_dict().values()):
        assert torch.equal(a, b)
    assert resolve_iters('latest', str(tmp_path), '--test_iters') == 3
    with pytest.raises(CheckpointError):
        resolve_iters('7', str(tmp_path), '--test_iters')


def watcher(config, nets):
    """The Detector around the training G that AUCp scores with (as the Solver builds it)."""
    return Detector(config.g_conv_dim, config.g_repeat_num, config.image_size, [],
                    generators=[nets.G])


def test_the_detector_with_the_fast_paths_off_is_the_plain_translation_bit_for_bit():
    # The one scoring pass (inference_mode, generate_amp without autocast) gives the
    # original's no_grad generate() exactly.
    config, nets = networks()
    x = batch(3)[0]
    with torch.no_grad():
        x_hat, _, mask = generate(nets.G, x)
    expected = anomaly.score_variants(x, x_hat, mask)
    out = watcher(config, nets)(x)
    assert torch.equal(out['map'], anomaly.anomaly_map(x, x_hat))
    assert torch.equal(out['score'], expected['mean'])
    assert all(torch.equal(out['variants'][v], expected[v]) for v in expected)
    scores = watcher(config, nets).score_images(x, len(x))
    assert all(torch.equal(scores[v], expected[v]) for v in expected)


def test_scoring_images_leaves_the_running_statistics_as_they_were():
    config, nets = networks()
    before = [b.clone() for b in nets.G.buffers()]
    watcher(config, nets).score_images(batch(4)[0], 2)
    assert all(torch.equal(a, b) for a, b in zip(before, nets.G.buffers()))


def test_a_lung_prior_without_a_saved_file_is_left_out_with_a_note(tmp_path):
    config = tiny_config('--model_save_dir', str(tmp_path))
    lung = LungPrior(config, None, CPU)
    assert lung.region() is None and 'not found' in lung.note


def test_a_trainer_built_from_the_parts_trains_and_saves(tmp_path, folder_dataset):
    from healthygan.cli import build_parser
    from healthygan.data.splits import resolve_split
    config = build_parser().parse_args(tiny_args(tmp_path, folder_dataset, '--num_iters', '2',
                                                 '--use_tensorboard', 'false', '--seed', '0'))
    split = resolve_split(config, 'train')
    torch.manual_seed(0)
    nets = Networks(config, CPU)
    lung = LungPrior(config, split, CPU)
    trainer = Trainer(config, split, CPU, nets,
                      TrainStep(nets, config.lambda_gp, loss_weights(config, 'G')),
                      CheckpointStore(config, nets), lung,
                      AUCpLog(config, split, watcher(config, nets), lung, CPU))
    trainer.train()
    models = tmp_path / 'run' / 'models'
    assert {'2-G.ckpt', '2-D.ckpt', '2-state.pt', 'run_config.json', 'lung_prior.pt'} <= \
        {p.name for p in models.iterdir()}


@pytest.mark.parametrize('mode', ['test', 'testAUC', 'score'])
def test_a_solver_outside_training_builds_g_alone(mode):
    from solver import Solver
    solver = Solver(tiny_config('--mode', mode))
    assert solver.G is not None and solver.nets.G_run is solver.G
    assert (solver.D, solver.g_optimizer, solver.d_optimizer, solver.nets.scaler) == (None,) * 4
    assert not any(hasattr(solver, part) for part in ('step', 'trainer'))
    trained = Solver(tiny_config('--mode', 'train'))
    assert trained.D is not None and hasattr(trained, 'trainer')
    assert not hasattr(trained, 'evaluator')
