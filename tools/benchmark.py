"""Training-step and inference speed of HealthyGAN, each fast path on and off, side by side.

    python tools/benchmark.py --image_size 64 --g_conv_dim 32 --d_conv_dim 32 --g_repeat_num 3 \
        --d_repeat_num 5 --batch_size 16 --device cpu --rounds 5

takes every model flag of main.py, builds one Solver per variant from the same seed (each
variant sets its own fast paths; the command line's speed flags are not used), and times whole
cycles of n_critic iterations (n_critic critic steps and one generator step) on a fixed random
batch; the data loader is not part of it. Variants are timed in turn, round after round (A, B, C, A, B, C, ...), and the median
taken, so a machine shared with other jobs slows every variant alike. For each variant it prints
iterations and images per second, the speed-up over `original`, the peak memory, the FLOPs per
iteration (torch.utils.flop_counter), the fraction of the device's peak those FLOPs reach, the
largest difference of the first cycle's losses from the plain step's, and testAUC's inference
images per second (Solver.translate).

`original` is the original's loop as ORIGINAL.md describes it: eager fp32; the critic step runs
G with autograd on and uses only the detached output; the generator step runs G on the mixed
batch again; every loss is read with .item() at every iteration. It runs under torch's own TF32
defaults (on CUDA, cuDNN convolutions may use TF32 unless told otherwise), as the original did;
`original_fp32` is the same loop with TF32 off (strict fp32 arithmetic). `default` is this
project's step with every fast path off (same losses, bit for bit: tests/test_fast.py).
Each variant's cuDNN and TF32 switches are set before each of its timings, so one variant's
switches (they are process-wide) never leak into another's numbers.
"""
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

if not __package__:  # run as python tools/x.py: the repository root on the path
    import _path  # noqa: F401

from healthygan import cli  # noqa: E402
from healthygan import errors, limits  # noqa: E402
from healthygan.device import resolve_device  # noqa: E402
from healthygan.model import losses
from healthygan.training import fast
from solver import Solver  # noqa: E402

# Each variant: the fast-path flags it sets on top of the command line's (None: the original
# loop). 'fast' is the --fast preset for the device.
VARIANTS = {
    'original': None,
    'original_fp32': None,
    'default': {},
    'reuse_fake': {'reuse_fake': True},
    'merge_critic': {'merge_critic': True},
    'channels_last': {'channels_last': True},
    'critic_matmul': {'critic_matmul': True},
    'gp_explicit': {'gp_explicit': True},
    'gp_autograd': {'gp_explicit': False},  # to take gp_explicit out of a preset: fast+gp_autograd
    'adam_foreach': {'adam_impl': 'foreach'},
    'adam_fused': {'adam_impl': 'fused'},
    'tf32': {'tf32': True},
    'amp_bf16': {'amp': 'bf16'},
    'amp_fp16': {'amp': 'fp16'},
    'compile': {'compile': True},
    'fast': {'fast': True},
}
# The variants that run the original's loop rather than Solver's step.
ORIGINAL_LOOPS = {'original': fast.ORIGINAL_SPEED, 'original_fp32': {**fast.ORIGINAL_SPEED, 'tf32': False}}
DEFAULT_VARIANTS = 'original,default,reuse_fake,merge_critic,channels_last,critic_matmul,' \
                   'gp_explicit,adam_foreach,adam_fused,amp_bf16,compile,fast'

# Dense (no sparsity) peak TFLOP/s from the vendors' data sheets: (fp32, tf32, bf16/fp16 tensor).
# Matched against torch.cuda.get_device_name() in this order (first substring that matches).
GPU_PEAK_TFLOPS = [
    ('H200', (67.0, 494.7, 989.4)),
    ('GH200', (67.0, 494.7, 989.4)),
    ('H100 NVL', (60.0, 417.5, 835.0)),
    ('H100 PCIe', (51.2, 378.0, 756.0)),
    ('H100', (67.0, 494.7, 989.4)),       # SXM
    ('A100', (19.5, 156.0, 312.0)),
    ('L40S', (91.6, 183.0, 362.0)),
    ('A10', (31.2, 62.5, 125.0)),
    ('L4', (30.3, 60.0, 121.0)),
    ('V100', (15.7, None, 125.0)),        # fp16 tensor cores only
    ('T4', (8.1, None, 65.0)),            # fp16 tensor cores only
]


def original_cycle(solver, x_A, x_B):
    """n_critic iterations of the original's training loop; returns the last losses (floats)."""
    c, G, D = solver.config, solver.G, solver.D
    loss = {}
    for i in range(c.n_critic):
        # 2. Critic: G runs with autograd on, though only its detached output is used.
        out_real = D(x_B)[1]
        x_fake, _, _ = losses.generate(G, x_A)
        out_fake = D(x_fake.detach())[1]
        alpha = torch.rand(x_B.size(0), 1, 1, 1, device=x_B.device)
        x_int = losses.interpolate(x_B, x_fake, alpha)
        d_loss_gp = losses.gradient_penalty(D(x_int)[1], x_int)
        d_loss, terms = losses.critic_loss(out_real, out_fake, d_loss_gp, c.lambda_gp)
        solver.g_optimizer.zero_grad()
        solver.d_optimizer.zero_grad()
        d_loss.backward()
        solver.d_optimizer.step()
        loss.update({tag: t.item() for tag, t in terms.items()})
        if (i + 1) % c.n_critic == 0:
            # 3. Generator: fresh passes of G on both batches.
            image_logits, mask_logit_A = G(x_A)
            x_raw_A, mask_A = torch.tanh(image_logits), losses.mask_from_logit(mask_logit_A)
            out_A = D(losses.blend(x_A, x_raw_A, mask_A))[1]
            image_logits, mask_logit_B = G(x_B)
            x_raw_B, mask_B = torch.tanh(image_logits), losses.mask_from_logit(mask_logit_B)
            out_B = D(losses.blend(x_B, x_raw_B, mask_B))[1]
            g_loss, terms, masks = losses.generator_loss(
                x_A, x_raw_A, mask_A, out_A, x_B, x_raw_B, mask_B, out_B,
                **losses.loss_weights(c, 'G'))
            solver.g_optimizer.zero_grad()
            solver.d_optimizer.zero_grad()
            g_loss.backward()
            solver.g_optimizer.step()
            terms.update({**losses.mask_stats('OT', mask_logit_A, *masks['OT']),
                          **losses.mask_stats('OO', mask_logit_B, *masks['OO'])})
            loss.update({tag: t.item() for tag, t in terms.items()})
    return loss


def solver_cycle(solver, x_A, x_B):
    """n_critic iterations of Solver.train's step; returns the last losses (tensors)."""
    n = solver.config.n_critic
    loss = {}
    for i in range(n):
        loss.update(solver.d_step(x_A, x_B, keep_fake=(i + 1) % n == 0))
        if (i + 1) % n == 0:
            loss.update(solver.g_step(x_A, x_B))
    return loss


def make_solver(config, name, seed):
    """A Solver for one variant: every fast path off (the command line's speed flags are
    ignored), then the variant's own flags on top; the same seed, so the same weights."""
    c = copy.deepcopy(config)
    c.fast = False
    for flag in fast.SPEED_FLAGS:
        setattr(c, flag, None)
    for part in name.split('+'):  # 'a+b': the fast paths of both
        for flag, value in (VARIANTS[part] or {}).items():
            setattr(c, flag, value)
    torch.manual_seed(seed)
    return Solver(c)


def variant_speed(name, solver):
    """The fast-path flags a variant runs with."""
    return ORIGINAL_LOOPS[name] if name in ORIGINAL_LOOPS else solver.nets.speed


# torch's own TF32 switches when the benchmark starts: what tf32 None means.
TORCH_TF32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)


def set_switches(speed):
    """The process-wide cuDNN / TF32 switches of one variant (tf32 None: torch's defaults)."""
    fast.apply_backend_switches(speed, False)
    if speed['tf32'] is None:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = TORCH_TF32


def variant_inputs(name, solver, x_A, x_B):
    """The batches in the memory format the variant's networks use (the original's: as given)."""
    if name in ORIGINAL_LOOPS:
        return x_A, x_B
    return solver.nets.to_layout(x_A), solver.nets.to_layout(x_B)


def run_cycle(name, solver, x_A, x_B):
    """One cycle of the variant under its own cuDNN / TF32 switches (the inference timed right
    after it runs under them too)."""
    set_switches(variant_speed(name, solver))
    return (original_cycle if name in ORIGINAL_LOOPS else solver_cycle)(solver, x_A, x_B)


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def live_bytes(solver):
    """Bytes of the tensors that live between steps: weights, buffers, optimizer state."""
    tensors = list(solver.G.parameters()) + list(solver.G.buffers()) + \
        list(solver.D.parameters()) + list(solver.D.buffers())
    for opt in (solver.g_optimizer, solver.d_optimizer):
        tensors += [t for state in opt.state.values() for t in state.values()
                    if isinstance(t, torch.Tensor)]
    return sum(t.untyped_storage().nbytes() for t in tensors)


def cpu_peak_bytes(name, solver, x_A, x_B):
    """Peak tensor memory of one cycle on the CPU: what lives between steps plus the peak of
    what the cycle allocates (the profiler's running 'Total Allocated' from its start; the
    CPU counterpart of torch.cuda.max_memory_allocated, without oneDNN's scratch space)."""
    import tempfile
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run_cycle(name, solver, x_A, x_B)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'trace.json')
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)['traceEvents']
    allocated = [e['args'].get('Total Allocated', 0) for e in events
                 if e.get('name') == '[memory]' and e.get('args', {}).get('Device Type') == 0]
    return live_bytes(solver) + max(allocated, default=0)


def device_peak_flops(device, speed, threads):
    """(peak FLOP/s, where it comes from) for the precision the variant runs in."""
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
        for key, (fp32, tf32, half) in GPU_PEAK_TFLOPS:
            if key in name:
                if speed['amp'] != 'off':
                    return half * 1e12, f'{key} dense {speed["amp"]} tensor-core peak'
                tf32_on = torch.backends.cudnn.allow_tf32
                if tf32_on and tf32 is not None:
                    return tf32 * 1e12, f'{key} dense TF32 peak (cudnn.allow_tf32)'
                return fp32 * 1e12, f'{key} fp32 peak'
        return None, f'{name}: not in the peak table'
    if device.type == 'cpu':
        # No portable data sheet for a CPU: use what a large fp32 matmul reaches on it.
        n = 1024
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        times = []
        for _ in range(5):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        return 2 * n ** 3 / min(times), f'fp32 {n}x{n} matmul, best of 5, measured here ' \
                                        f'({threads} threads)'
    return None, f'no peak known for {device.type}'


def count_flops(config, name, seed, x_A, x_B):
    """FLOPs of one cycle of the variant, counted with compile off (same arithmetic)."""
    c = copy.deepcopy(config)
    solver = make_solver(c, name, seed)
    if name not in ORIGINAL_LOOPS and solver.nets.speed['compile']:
        solver.nets.G_run, solver.nets.D_run = solver.G, solver.D
    x_A, x_B = variant_inputs(name, solver, x_A, x_B)
    counter = FlopCounterMode(display=False)
    # FlopCounterMode's per-module tracking hooks the backward of every module input, which
    # autograd.grad (the gradient penalty) refuses; its dispatch mode alone counts every op
    # (forward, backward and double backward) under 'Global'.
    try:
        from torch.utils.flop_counter import _FlopCounterMode
        with _FlopCounterMode(counter):
            run_cycle(name, solver, x_A, x_B)
    except (ImportError, RuntimeError) as e:
        print(f'  FLOPs of {name} not counted: {e}')
        return None
    return counter.get_total_flops()


def time_inference(solver, x):
    t = time.perf_counter()
    solver.translate(x)
    sync(solver.device)
    return time.perf_counter() - t


def build_parser():
    p = cli.build_parser()
    p.description = __doc__.split('\n')[0]
    g = p.add_argument_group('Benchmark')
    g.add_argument('--variants', type=str, default=DEFAULT_VARIANTS,
                   help=f'comma-separated, from {", ".join(VARIANTS)}; join with + to combine '
                        f'(e.g. reuse_fake+merge_critic)')
    g.add_argument('--rounds', type=int, default=5, help='timed rounds (each variant once a round)')
    g.add_argument('--cycles', type=int, default=1,
                   help='cycles of n_critic iterations per variant and round')
    g.add_argument('--warmup', type=int, default=1, help='untimed cycles first (compiles here)')
    g.add_argument('--infer_batches', type=int, default=3,
                   help='translate() calls per variant and round for the inference rate')
    g.add_argument('--no_flops', action='store_true', help='skip counting FLOPs')
    g.add_argument('--json_out', type=str, default=None, help='also write the results here')
    g.add_argument('--project_iters', type=int, default=400000,
                   help='also report the hours this many iterations take at each rate '
                        '(the paper: 400,000)')
    return p


def parse_variants(parser, config):
    """The --variants names, checked; an unknown one is a parser error."""
    names = [v.strip() for v in config.variants.split(',') if v.strip()]
    unknown = [v for v in names for part in v.split('+') if part not in VARIANTS
               or (part in ORIGINAL_LOOPS and v != part)]
    if unknown:
        parser.error(f'--variants: unknown {unknown}; choose from {", ".join(VARIANTS)}')
    return names


def print_header(config, device, threads):
    print(f'{datetime.datetime.now().isoformat(timespec="seconds")}  torch {torch.__version__}  '
          f'device {device}' + (f' ({torch.cuda.get_device_name(device)})'
                                if device.type == 'cuda' else
                                f' ({platform.processor() or platform.machine()}, {threads} '
                                f'threads)'))
    print(f'image_size {config.image_size}, batch {config.batch_size}, g_conv_dim '
          f'{config.g_conv_dim}, g_repeat_num {config.g_repeat_num}, d_conv_dim '
          f'{config.d_conv_dim}, d_repeat_num {config.d_repeat_num}, n_critic {config.n_critic}',
          flush=True)


def warm_up(config, names, device, x_A, x_B):
    """Build and warm every variant: ({name: (solver, a, b)}, first-cycle seconds, first-cycle
    losses); a variant this machine cannot run is skipped with a line saying why."""
    solvers, first_cycle_s, losses = {}, {}, {}
    for name in names:
        try:
            solver = make_solver(config, name, config.seed)
        except errors.ConfigError as e:
            print(f'{name}: skipped ({e})')
            continue
        a, b = variant_inputs(name, solver, x_A, x_B)
        sync(device)
        t = time.perf_counter()
        loss = run_cycle(name, solver, a, b)  # from the seed's weights: compare the losses
        sync(device)
        first_cycle_s[name] = time.perf_counter() - t
        losses[name] = {k: float(v) for k, v in loss.items()}
        for _ in range(config.warmup - 1):
            run_cycle(name, solver, a, b)
        solver.translate(x_A)  # warm (and compile) the inference path too
        solvers[name] = (solver, a, b)
        print(f'  warm-up {name}: first cycle {first_cycle_s[name]:.2f} s', flush=True)
    return solvers, first_cycle_s, losses


def time_rounds(config, solvers, device, x_A):
    """({name: seconds per iteration, one per round}, {name: seconds per inference batch});
    each round starts at another variant, so that no variant always runs first."""
    times = {name: [] for name in solvers}
    infer = {name: [] for name in solvers}
    order = list(solvers)
    for r in range(config.rounds):
        for name in order[r % len(order):] + order[:r % len(order)]:
            solver, a, b = solvers[name]
            sync(device)
            t = time.perf_counter()
            for _ in range(config.cycles):
                run_cycle(name, solver, a, b)
            sync(device)
            times[name].append((time.perf_counter() - t) / (config.cycles * config.n_critic))
            infer[name].append(sum(time_inference(solver, x_A)
                                   for _ in range(config.infer_batches)) / config.infer_batches)
        print(f'  round {r + 1}/{config.rounds} done', flush=True)
    return times, infer


def peak_memory(solvers, device):
    """{name: peak bytes of one cycle}: the CUDA allocator's peak, or the CPU profiler's."""
    memory = {}
    for name, (solver, a, b) in solvers.items():
        sync(device)
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)
            run_cycle(name, solver, a, b)
            sync(device)
            memory[name] = torch.cuda.max_memory_allocated(device)
        else:
            memory[name] = cpu_peak_bytes(name, solver, a, b)
    return memory


def build_rows(config, device, threads, solvers, measured, x_A, x_B):
    """One result dict per variant. measured: (first_cycle_s, losses, times, infer, memory)."""
    first_cycle_s, losses, times, infer, memory = measured
    n = config.batch_size
    reference = 'default' if 'default' in losses else next(iter(losses), None)
    base = 'original' if 'original' in times else reference
    rows, peaks = [], {}
    for name in solvers:
        speed = variant_speed(name, solvers[name][0])
        it_s = 1 / statistics.median(times[name])
        flops = None if config.no_flops else count_flops(config, name, config.seed, x_A, x_B)
        flops = flops / config.n_critic if flops else None
        set_switches(speed)  # the peak depends on whether TF32 is on
        key = (speed['amp'], torch.backends.cudnn.allow_tf32) if device.type == 'cuda' else 'cpu'
        if key not in peaks:
            peaks[key] = device_peak_flops(device, speed, threads)
        peak, peak_source = peaks[key]
        diff = max(abs(losses[name][k] - losses[reference][k]) for k in losses[reference])
        rows.append({
            'variant': name, 'it_per_s': it_s, 'img_per_s': it_s * n,
            'speedup_vs_' + base: it_s * statistics.median(times[base]),
            **({'speedup_vs_original_fp32': it_s * statistics.median(times['original_fp32'])}
               if 'original_fp32' in times and base != 'original_fp32' else {}),
            f'hours_for_{config.project_iters}_iters': config.project_iters / it_s / 3600,
            'iter_s_all_rounds': times[name],
            'peak_memory_bytes': memory[name],
            'peak_memory_kind': 'torch.cuda.max_memory_allocated' if device.type == 'cuda'
            else 'weights + optimizer state + peak allocated in a cycle (profiler)',
            'flops_per_iter': flops,
            'achieved_tflops': flops * it_s / 1e12 if flops else None,
            'fraction_of_peak': flops * it_s / peak if flops and peak else None,
            'peak_source': peak_source,
            'tf32': {'cudnn': torch.backends.cudnn.allow_tf32,
                     'matmul': torch.backends.cuda.matmul.allow_tf32},
            'max_abs_loss_diff_vs_' + reference: diff,
            'infer_img_per_s': n / statistics.median(infer[name]),
            'first_cycle_s': first_cycle_s[name],
            'speed_flags': {k: speed[k] for k in fast.SPEED_FLAGS},
        })
    return rows, base, reference


def print_rows(config, rows, base, reference):
    """The results table, the projected training time and what the columns mean."""
    width = max(14, *(len(row['variant']) for row in rows))
    fp32 = 'speedup_vs_original_fp32' in (rows[0] if rows else {})
    print(f'\n{"variant":{width}s} {"it/s":>7s} {"img/s":>7s} {"x " + base:>11s} '
          + (f'{"x original_fp32":>16s} ' if fp32 else '') + f'{"peak MiB":>9s} '
          f'{"GFLOP/it":>9s} {"% peak":>7s} {"|dloss|":>9s} {"infer img/s":>12s}')
    for row in rows:
        mem = row['peak_memory_bytes']
        print(f'{row["variant"]:{width}s} {row["it_per_s"]:7.3f} {row["img_per_s"]:7.2f} '
              f'{row["speedup_vs_" + base]:11.2f} '
              + (f'{row["speedup_vs_original_fp32"]:16.2f} ' if fp32 else '') +
              f'{mem / 2 ** 20 if mem else float("nan"):9.0f} '
              f'{(row["flops_per_iter"] or float("nan")) / 1e9:9.2f} '
              f'{100 * (row["fraction_of_peak"] or float("nan")):7.2f} '
              f'{row["max_abs_loss_diff_vs_" + reference]:9.2e} {row["infer_img_per_s"]:12.2f}')
    if config.project_iters:
        print(f'{config.project_iters:,} iterations: ' + ', '.join(
            f'{r["variant"]} {r[f"hours_for_{config.project_iters}_iters"]:.1f} h' for r in rows))
    sources = ', '.join(dict.fromkeys(row['peak_source'] for row in rows))
    print(f'(medians of {config.rounds} rounds of {config.cycles} x {config.n_critic} iterations; '
          f'peak: {sources}; |dloss|: largest difference of the '
          f'first cycle\'s losses from {reference!r}, same weights and batch)')


def main(argv=None):
    parser = build_parser()
    config = parser.parse_args(argv)
    problem = limits.check_architecture(config)
    if problem:
        parser.error(problem)
    names = parse_variants(parser, config)
    config.seed = 0 if config.seed is None else config.seed
    device = resolve_device(config.device)
    threads = torch.get_num_threads()
    n, size = config.batch_size, config.image_size
    gen = torch.Generator().manual_seed(config.seed)
    x_A = (torch.rand(n, 3, size, size, generator=gen) * 2 - 1).to(device)
    x_B = (torch.rand(n, 3, size, size, generator=gen) * 2 - 1).to(device)
    print_header(config, device, threads)

    solvers, first_cycle_s, losses = warm_up(config, names, device, x_A, x_B)
    times, infer = time_rounds(config, solvers, device, x_A)
    memory = peak_memory(solvers, device)
    rows, base, reference = build_rows(config, device, threads, solvers,
                                       (first_cycle_s, losses, times, infer, memory), x_A, x_B)
    print_rows(config, rows, base, reference)
    if config.json_out:
        with open(config.json_out, 'w') as f:
            json.dump({'command': ' '.join(sys.argv), 'date': datetime.datetime.now().isoformat(),
                       'torch': str(torch.__version__), 'device': str(device),
                       'threads': threads, 'rows': rows}, f, indent=1)
    return rows


if __name__ == '__main__':
    main()
