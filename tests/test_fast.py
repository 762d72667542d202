"""Fast paths of the training step: off, the step is the original loop's; on, the same losses."""
import copy
import json
import os

import pytest
import torch

import main as cli
from healthygan.model import losses
from healthygan.training import fast  # noqa: E402
from conftest import tiny_args, tiny_flags, tiny_solver
from tools import benchmark

# The preset at 16 px, 8 channels, batches of 4, on purpose: the bit-for-bit and tolerance
# comparisons below were measured at these sizes, batches() draws 4 images of 16 px, and at
# 16 px the critic's inputs are 16, 8, 4 px (test_critic_matmul_runs_only_the_small_maps...).
SIZES = dict(image_size=16, g_conv_dim=8, d_conv_dim=8, batch_size=4)
# Largest allowed |fast - plain| per loss term, as atol + rtol * |plain|, over two cycles
# (four iterations) from the same weights and batches. fp32 paths differ only by the order of
# floating-point sums; 16-bit autocast by its rounding of G's and the critic's convolutions.
FP32_TOL, AMP_TOL = 1e-4, 5e-2


def make(*flags, seed=0):
    return tiny_solver(*flags, seed=seed, **SIZES)


def batches(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(4, 3, 16, 16, generator=g) * 2 - 1,
             torch.rand(4, 3, 16, 16, generator=g) * 2 - 1) for _ in range(n)]


def run(solver, data, original=False):
    """Losses (floats) of each cycle; the RNG (gradient-penalty weights) seeded alike."""
    torch.manual_seed(123)
    cycle = benchmark.original_cycle if original else benchmark.solver_cycle
    return [{k: float(v) for k, v in cycle(solver, x_A, x_B).items()} for x_A, x_B in data]


def assert_close(fast, plain, tol):
    for cycle_fast, cycle_plain in zip(fast, plain):
        assert cycle_fast.keys() == cycle_plain.keys()
        for k, v in cycle_plain.items():
            assert abs(cycle_fast[k] - v) <= tol + tol * abs(v), (k, cycle_fast[k], v)


def test_default_step_is_the_original_loop_bit_for_bit():
    # The original: G with autograd on in the critic step, fresh G passes in the G step, .item()
    # every iteration. The project's step with every fast path off: same numbers, same weights.
    data = batches()
    original, default = make(), make()
    assert run(original, data, original=True) == run(default, data)
    for a, b in ((original.G, default.G), (original.D, default.D)):
        for (k, t), u in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(t, u), k


@pytest.mark.parametrize('flags,tol', [
    (['--reuse_fake', 'true'], 0.0),  # the very same pass of G: no difference at all
    (['--merge_critic', 'true'], FP32_TOL),
    (['--channels_last', 'true'], FP32_TOL),
    (['--critic_matmul', 'true'], FP32_TOL),
    (['--critic_matmul', 'true', '--channels_last', 'true'], FP32_TOL),
    (['--gp_explicit', 'true'], FP32_TOL),
    (['--gp_explicit', 'true', '--critic_matmul', 'true', '--channels_last', 'true'], FP32_TOL),
    (['--adam_impl', 'foreach'], FP32_TOL),
    (['--adam_impl', 'fused'], FP32_TOL),
    (['--amp', 'bf16'], AMP_TOL),
    (['--amp', 'fp16'], AMP_TOL),
    (['--fast', 'true'], FP32_TOL),
    (['--fast', 'true', '--channels_last', 'true', '--amp', 'bf16'], AMP_TOL),
])
def test_fast_paths_keep_the_losses(flags, tol):
    data = batches()
    assert_close(run(make(*flags), data), run(make(), data), tol)


def test_reuse_fake_saves_a_pass_and_keeps_the_running_statistics():
    data = batches(3)
    plain, fast = make(), make('--reuse_fake', 'true')
    calls = {'plain': 0, 'fast': 0}
    plain.G.register_forward_hook(lambda *a: calls.__setitem__('plain', calls['plain'] + 1))
    fast.G.register_forward_hook(lambda *a: calls.__setitem__('fast', calls['fast'] + 1))
    run(plain, data), run(fast, data)
    assert calls == {'plain': 4 * 3, 'fast': 3 * 3}  # per cycle: 2 critic + 2 G passes vs 1 + 2
    # The (unused) InstanceNorm running statistics get the original's two updates for x_A.
    for (k, a), b in zip(plain.G.state_dict().items(), fast.G.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6), k
    # Without a G step after it (keep_fake False) nothing is kept.
    fast.d_step(*data[0])
    assert fast.step.kept_fake is None


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('shape,out_channels,bias', [((5, 16, 8, 8), 32, True),
                                                     ((3, 7, 4, 6), 5, True),
                                                     ((2, 32, 2, 2), 1, False)])
def test_conv2d_as_matmul_is_the_convolution_and_its_double_backward(shape, out_channels, bias,
                                                                     channels_last):
    # Values, input and weight gradients, and the gradient penalty's second-order gradient
    # with respect to the weights: what the critic step needs of each of D's layers.
    from healthygan.training.fast_critic import conv2d_as_matmul
    torch.manual_seed(0)
    k, stride = (4, 2) if out_channels > 1 else (3, 1)
    conv = torch.nn.Conv2d(shape[1], out_channels, k, stride, 1, bias=bias).double()
    x = torch.randn(*shape, dtype=torch.float64)
    if channels_last:
        conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def grads(f):
        xi = x.clone().requires_grad_(True)
        out = f(xi)
        g, = torch.autograd.grad(out.sum(), xi, create_graph=True)
        penalty = ((g.flatten(1).norm(dim=1) - 1) ** 2).mean() + out.square().mean()
        return [out, g] + list(torch.autograd.grad(penalty, list(conv.parameters())))

    for got, expected in zip(grads(lambda t: conv2d_as_matmul(t, conv)), grads(conv)):
        assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-10)


@pytest.mark.parametrize('image_size,repeat_num,matmul_side,channels_last', [
    (16, 3, 0, False),
    (16, 3, 4, True),   # 4 px map: a matmul forward, a matmul and F.fold backward
    (20, 3, 8, False),  # maps 20, 10, 5 -> 2: the strided convolution of 5 px drops a row
    (32, 4, 8, True),   # 8 and 4 px maps as matmuls
])
def test_input_gradient_is_autograds_and_so_is_the_penalty_gradient(image_size, repeat_num,
                                                                    matmul_side, channels_last):
    # --gp_explicit: D.input_gradient against autograd's gradient of D's summed patch logits,
    # and the gradient penalty's weight gradients (one first-order backward) against autograd's
    # double backward, in float64 so that only the order of the sums differs.
    from healthygan.training.fast_critic import FastCritic as Discriminator
    torch.manual_seed(0)
    D = Discriminator(image_size, 4, 0, repeat_num).double()
    D.matmul_side = matmul_side
    x = torch.randn(3, 3, image_size, image_size, dtype=torch.float64)
    if channels_last:
        D.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def penalty_and_grads(explicit):
        D.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        if explicit:
            grad = D.input_gradient(xi)
            penalty = losses.penalty_of_gradient(grad)
        else:
            out = D(xi)[1]
            grad, = torch.autograd.grad(out.sum(), xi, create_graph=True)
            penalty = losses.gradient_penalty(out, xi)
        penalty.backward()
        # The biases get no gradient from the penalty: explicitly none, from autograd zeros.
        return grad.detach(), penalty.detach(), [
            torch.zeros_like(p) if p.grad is None else p.grad for p in D.parameters()]

    grad, penalty, weight_grads = penalty_and_grads(True)
    grad_ag, penalty_ag, weight_grads_ag = penalty_and_grads(False)
    assert grad.shape == x.shape and torch.allclose(grad, grad_ag, rtol=0, atol=1e-12)
    assert torch.allclose(penalty, penalty_ag, rtol=1e-12, atol=0) and penalty > 0
    assert any(g.abs().max() > 0 for g in weight_grads)
    for (name, _), got, expected in zip(D.named_parameters(), weight_grads, weight_grads_ag):
        assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12), name


@pytest.mark.parametrize('explicit', [False, True])
def test_inplace_critic_activations_change_no_gradient(explicit):
    # --compile turns the critic's LeakyReLU in place; the critic step's gradients, through
    # the real/fake passes and either form of the gradient penalty, stay the same bit for bit.
    from healthygan.training.fast_critic import FastCritic as Discriminator
    x_real, x_fake = torch.randn(2, 4, 3, 16, 16).unbind()

    def critic_step_grads(inplace):
        torch.manual_seed(0)
        D = Discriminator(16, 4, 0, 3)
        D.set_inplace_activations(inplace)
        x_int = losses.interpolate(x_real, x_fake, torch.full((4, 1, 1, 1), 0.3))
        gp = losses.penalty_of_gradient(D.input_gradient(x_int)) if explicit else \
            losses.gradient_penalty(D(x_int)[1], x_int)
        loss = -D(x_real)[1].mean() + D(x_fake)[1].mean() + 10 * gp
        loss.backward()
        return [loss.detach()] + [p.grad for p in D.parameters()]

    plain, inplace = critic_step_grads(False), critic_step_grads(True)
    assert all(torch.equal(a, b) for a, b in zip(plain, inplace))
    # Where it is used: compiled, on the CPU (compiling is lazy, so this compiles nothing).
    relus = lambda s: [m.inplace for m in s.D.main if isinstance(m, torch.nn.LeakyReLU)]
    assert all(relus(make('--compile', 'true'))) and not any(relus(make()))


def test_gp_explicit_skips_the_double_backward(monkeypatch):
    # The penalty's pass builds no graph through D's forward (no create_graph anywhere).
    solver = make('--gp_explicit', 'true')
    seen = []
    real_grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, 'grad',
                        lambda *a, **k: seen.append(k.get('create_graph')) or real_grad(*a, **k))
    losses = solver.d_step(*batches(1)[0])
    assert seen == [] and float(losses['D/loss_gp']) > 0
    assert fast.fast_preset(torch.device('cpu'))['gp_explicit']  # measured faster on the CPU
    # off by default: the original's double backward
    assert not make().nets.speed['gp_explicit']


def test_critic_matmul_runs_only_the_small_maps_as_matmuls(monkeypatch):
    from healthygan.training import fast_critic
    solver = make('--critic_matmul', 'true')  # 16 px, d_repeat_num 3: inputs 16, 8, 4 px
    sides = []
    real = fast_critic.conv2d_as_matmul
    monkeypatch.setattr(fast_critic, 'conv2d_as_matmul',
                        lambda x, conv: sides.append(x.shape[-1]) or real(x, conv))
    x = torch.randn(2, 3, 16, 16)
    plain = make()
    with torch.no_grad():
        assert torch.allclose(solver.D(x)[1], plain.D(x)[1], atol=1e-6)
    assert sides == [4]
    assert make().D.matmul_side == 0  # off by default: the original's nn.Conv2d path


def test_generator_step_takes_no_gradient_for_the_critic():
    # The original computed D's weight gradients in the G step and zeroed them unused; the
    # weights after the G step are the original's bit for bit (the test above on whole cycles).
    solver = make()
    x_A, x_B = batches(1)[0]
    solver.d_step(x_A, x_B)
    solver.g_step(x_A, x_B)
    assert all(p.grad is None for p in solver.D.parameters())
    assert all(p.requires_grad for p in solver.D.parameters())
    assert any(p.grad is not None for p in solver.G.parameters())


def test_merged_critic_pass_gives_each_batch_its_own_outputs():
    D = make().D
    a, b = torch.randn(3, 3, 16, 16), torch.randn(5, 3, 16, 16)
    merged = fast.critic(D, [a, b], merge=True)
    separate = fast.critic(D, [a, b], merge=False)
    for m, s in zip(merged, separate):
        assert m.shape == s.shape and torch.allclose(m, s, atol=1e-6)


def test_translate_under_fast_paths():
    x = batches(1)[0][0]
    plain = make()
    with torch.no_grad():
        expected = losses.generate(plain.G, x)
    got = plain.translate(x)  # inference_mode: the same values as the original's no_grad
    assert all(torch.equal(g, e) for g, e in zip(got, expected))
    for flags, tol in ((['--channels_last', 'true'], 1e-5), (['--amp', 'bf16'], 5e-2)):
        fast = make(*flags)
        for g, e in zip(fast.translate(x), expected):
            assert g.dtype == torch.float32 and torch.allclose(g, e, atol=tol), flags


def test_resume_keeps_the_adam_implementation():
    fast, default = make('--adam_impl', 'fused'), make()
    fast.d_optimizer.load_state_dict(default.d_optimizer.state_dict())  # saved by a plain run
    assert fast.d_optimizer.param_groups[0]['fused'] is True


@pytest.mark.parametrize('saved_layout,resumed_layout', [('true', 'false'), ('false', 'true')])
def test_resume_across_memory_layouts_keeps_fused_adam_right(saved_layout, resumed_layout):
    # A run saved with channels-last weights resumed without (or the reverse): the Adam moments
    # are loaded in the saved layout; torch's fused CPU Adam, handed moments whose strides differ
    # from the parameter's, updated with the wrong elements (1e-4-sized errors, found in review).
    data = batches(3)
    saved = make('--channels_last', saved_layout, '--adam_impl', 'fused')
    run(saved, data[:2])
    state = {k: copy.deepcopy(getattr(saved, k).state_dict())
             for k in ('G', 'D', 'g_optimizer', 'd_optimizer')}
    after = {}
    for layout in (saved_layout, resumed_layout):
        resumed = make('--channels_last', layout, '--adam_impl', 'fused')
        for k, v in state.items():
            getattr(resumed, k).load_state_dict(copy.deepcopy(v))
        run(resumed, data[2:])
        after[layout] = [p.detach() for p in resumed.D.parameters()]
    for a, b in zip(after[saved_layout], after[resumed_layout]):
        assert torch.allclose(a, b, rtol=0, atol=1e-6)


def test_compile_without_a_cpp_compiler_runs_eagerly(monkeypatch, capsys):
    monkeypatch.setenv('PATH', '')
    monkeypatch.setenv('CXX', 'no-such-compiler')
    module = torch.nn.Linear(2, 2)
    assert fast.maybe_compile(module, 'G', torch.device('cpu')) is module
    assert 'no C++ compiler' in capsys.readouterr().err


def test_compile_failure_falls_back_to_eager(capsys):
    class Unsupported(torch.nn.Module):
        def forward(self, x):  # a graph break inside fullgraph compilation: a real failure
            torch._dynamo.graph_break()
            return x * 2
    wrapped = fast.CompiledOrEager(Unsupported(), 'G')
    wrapped.compiled = torch.compile(wrapped.module, fullgraph=True, backend='eager')
    x = torch.ones(2)
    assert torch.equal(wrapped(x), x * 2) and wrapped.compiled is None
    assert 'running it eagerly' in capsys.readouterr().err
    assert torch.equal(wrapped(x), x * 2)  # and stays eager, without a second warning
    assert capsys.readouterr().err == ''


def test_speed_flags_through_the_cli(tmp_path, folder_dataset):
    # --fast fills in the unset flags; an explicit flag wins; run_config.json records what ran;
    # fp16's loss scale goes into the state file for an exact resume.
    cli.main(tiny_args(tmp_path, folder_dataset, '--num_iters', '2',
                       '--fast', 'true', '--amp', 'fp16', '--merge_critic', 'false',
                       '--use_tensorboard', 'false'))
    models = tmp_path / 'run' / 'models'
    config = json.load(open(models / 'run_config.json'))['config']
    assert config['reuse_fake'] is True and config['channels_last'] is True  # the CPU preset
    assert config['compile'] is False and config['adam_impl'] == 'fused'
    assert config['merge_critic'] is False and config['amp'] == 'fp16'  # given explicitly
    state = torch.load(models / '2-state.pt', weights_only=True)
    assert state['scaler']['scale'] > 0
    # ... and a resume reads it back (and keeps the run's fused/foreach choice).
    cli.main(tiny_args(tmp_path, folder_dataset, '--num_iters', '3',
                       '--fast', 'true', '--amp', 'fp16', '--adam_impl', 'foreach',
                       '--resume_iters', '2', '--use_tensorboard', 'false'))
    assert os.path.exists(models / '3-G.ckpt')


def test_bad_speed_flag_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(['--amp', 'fp8'])
    assert e.value.code == 2 and '--amp' in capsys.readouterr().err


def test_benchmark_script_runs_and_reports(tmp_path):
    out = tmp_path / 'bench.json'
    rows = benchmark.main(tiny_flags(**SIZES) + ['--rounds', '1', '--infer_batches', '1',
                                                 '--variants', 'original,reuse_fake+merge_critic',
                                                 '--json_out', str(out)])
    original, fast = rows
    assert original['variant'] == 'original' and fast['variant'] == 'reuse_fake+merge_critic'
    assert fast['speed_flags']['reuse_fake'] and fast['speed_flags']['merge_critic']
    assert fast['max_abs_loss_diff_vs_original'] < 1e-5
    for r in rows:
        assert r['it_per_s'] > 0 and r['infer_img_per_s'] > 0 and r['peak_memory_bytes'] > 0
        assert 0 < r['fraction_of_peak'] < 1
    # Reusing G's pass does less arithmetic than the original's loop.
    assert fast['flops_per_iter'] < original['flops_per_iter']
    assert json.load(open(out))['rows'][0]['variant'] == 'original'


def test_benchmark_sets_each_variants_tf32_switches(tmp_path):
    """TF32 switches are process-wide: each variant is timed under its own, never the last
    constructed Solver's (a GPU run showed the original's loop 3x faster under TF32)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        rows = benchmark.main(tiny_flags(**SIZES) + ['--rounds', '1', '--infer_batches', '1',
                                                     '--no_flops',
                                                     '--variants', 'original,original_fp32,tf32'])
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    by_name = {r['variant']: r for r in rows}
    assert by_name['original']['tf32'] == {'cudnn': benchmark.TORCH_TF32[1],
                                           'matmul': benchmark.TORCH_TF32[0]}
    assert by_name['original_fp32']['tf32'] == {'cudnn': False, 'matmul': False}
    assert by_name['tf32']['tf32'] == {'cudnn': True, 'matmul': True}
    # original_fp32 runs the original's loop: the same losses as 'original' on the CPU.
    assert by_name['original_fp32']['max_abs_loss_diff_vs_original'] == 0
    assert by_name['original']['speedup_vs_original_fp32'] > 0
    assert all(r['hours_for_400000_iters'] > 0 for r in rows)


def test_benchmark_refuses_original_loops_in_combinations(capsys):
    with pytest.raises(SystemExit):
        benchmark.main(tiny_flags(**SIZES) + ['--variants', 'original_fp32+reuse_fake'])
    assert 'original_fp32+reuse_fake' in capsys.readouterr().err
