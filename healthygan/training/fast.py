"""The opt-in fast paths of the training step (added), each a flag.

The original runs an eager fp32 step. Each fast path is off unless asked for (then the step
computes the original's losses, bit for bit); --fast true turns on those measured to help on the
device (docs/speed.md). None changes the losses beyond floating-point rounding
(tests/test_fast.py compares them with the plain step).
"""
import contextlib
import os
import sys

import torch

from healthygan.errors import ConfigError
from healthygan.flags import str2bool
from healthygan.model.losses import blend, mask_from_logit


SPEED_FLAGS = ('amp', 'channels_last', 'compile', 'adam_impl', 'reuse_fake', 'merge_critic',
               'critic_matmul', 'gp_explicit', 'cudnn_benchmark', 'tf32')


# The original's behaviour; tf32 None leaves torch's own defaults alone.
ORIGINAL_SPEED = {'amp': 'off', 'channels_last': False, 'compile': False, 'adam_impl': 'default',
                  'reuse_fake': False, 'merge_critic': False, 'critic_matmul': False,
                  'gp_explicit': False, 'cudnn_benchmark': True, 'tf32': None}


def add_speed_flags(p):
    """The speed flags (added): --fast, the preset, and the switches it sets, declared here beside
    the fast paths they turn on."""
    g = p.add_argument_group('Speed (added)')
    g.add_argument('--fast', type=str2bool, default=False,
                   help='true: turn on the fast paths measured to help on this device (CUDA: '
                        'all of them; CPU: see docs/speed.md); flags given explicitly win (added)')

    # Each switch left unset takes the original's behaviour, or the --fast preset's value
    # (resolve_speed); an explicit value always wins.
    g = p.add_argument_group("Advanced speed switches (added; each left unset takes --fast's choice)")
    g.add_argument('--amp', type=str, default=None, choices=['off', 'bf16', 'fp16'],
                   help='mixed precision for G and the critic passes: bf16 autocast, or fp16 '
                        'with loss scaling; the gradient penalty stays fp32 (default off) (added)')
    g.add_argument('--channels_last', type=str2bool, default=None,
                   help='channels-last memory format for G, D and the batches (default false) '
                        '(added)')
    g.add_argument('--compile', type=str2bool, default=None,
                   help='torch.compile G and the critic passes outside the gradient penalty '
                        "(on the CPU the compiled critic's LeakyReLU in place: the same "
                        'gradients); falls back to eager with a warning if compiling fails '
                        '(default false) (added)')
    g.add_argument('--adam_impl', type=str, default=None, choices=['default', 'foreach', 'fused'],
                   help="Adam implementation (default: torch's choice, as the original) (added)")
    g.add_argument('--reuse_fake', type=str2bool, default=None,
                   help="true: the G step reuses the critic step's translation of the mixed "
                        "batch (G is unchanged in between) instead of running G on it again "
                        "(default false) (added)")
    g.add_argument('--merge_critic', type=str2bool, default=None,
                   help='true: one critic pass on real and fake together (D has no batch-'
                        'dependent layers, so the outputs are the same) (default false) (added)')
    g.add_argument('--critic_matmul', type=str2bool, default=None,
                   help="true: the critic's convolutions on maps of 4x4 and smaller run as "
                        'unfold + one matrix multiply, the same sums in another order; faster '
                        "on the CPU, where oneDNN's kernels for them are slow (default false) "
                        '(added)')
    g.add_argument('--gp_explicit', type=str2bool, default=None,
                   help="true: the gradient penalty's input gradient as an explicit backward "
                        "pass of D (transposed convolutions) with one first-order backward, "
                        "instead of autograd's double backward; the same sums in another order "
                        '(default false) (added)')
    g.add_argument('--cudnn_benchmark', type=str2bool, default=None,
                   help='cudnn.benchmark (default true, as the original; --deterministic true '
                        'turns it off) (added)')
    g.add_argument('--tf32', type=str2bool, default=None,
                   help="TF32 matmuls and convolutions on Ampere+ GPUs (default: torch's "
                        "defaults, i.e. convolutions TF32, matmuls fp32) (added)")


def cuda_bf16():
    """True where the GPU has bf16 arithmetic (Ampere and later), not only its emulation."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3 has no emulation flag
        return torch.cuda.is_bf16_supported()


def fast_preset(device):
    """The fast paths --fast true turns on for a device."""
    if device.type == 'cuda':
        bf16 = cuda_bf16()
        return {'amp': 'bf16' if bf16 else 'fp16', 'channels_last': True, 'compile': True,
                'adam_impl': 'fused', 'reuse_fake': True, 'merge_critic': True,
                'critic_matmul': False, 'gp_explicit': False, 'cudnn_benchmark': True,
                'tf32': True}
    # CPU (and MPS): the fp32 paths tools/benchmark.py found faster on a CPU without bf16 units
    # (docs/speed.md); bf16 autocast slowed the step. torch.compile speeds it up further but
    # compiles at every start and resume and needs a C++ compiler, so it is left to
    # --compile true.
    return {**ORIGINAL_SPEED, 'reuse_fake': True, 'merge_critic': True, 'channels_last': True,
            'adam_impl': 'fused', 'critic_matmul': True, 'gp_explicit': True}


def resolve_speed(config, device):
    """Each fast-path flag as given, else the --fast preset's value, else the original's."""
    preset = fast_preset(device) if config.fast else ORIGINAL_SPEED
    speed = {}
    for name in SPEED_FLAGS:
        value = getattr(config, name, None)
        speed[name] = preset[name] if value is None else value
    if speed['amp'] == 'bf16' and device.type == 'cuda' and not cuda_bf16():
        raise ConfigError('--amp bf16: this GPU does not support bfloat16; use --amp fp16')
    if speed['amp'] != 'off' and device.type not in ('cuda', 'cpu', 'mps'):
        raise ConfigError(f'--amp {speed["amp"]}: no autocast on device {device.type}')
    return speed


def autocast(device, dtype):
    """torch.autocast for dtype (None: a no-op context)."""
    return torch.autocast(device.type, dtype) if dtype is not None else contextlib.nullcontext()


def generate_amp(G, x, dtype=None):
    """generate() with G under autocast(dtype); also returns the mask logit.

    The tanh, the mask and the blend run in fp32 on G's logits (with dtype None this is exactly
    generate()), so the losses and the mask's 1 / (|m - 0.5| + 0.01) term keep fp32 precision.
    """
    with autocast(x.device, dtype):
        image_logits, mask_logit = G(x)
    x_raw, mask_logit = torch.tanh(image_logits.float()), mask_logit.float()
    mask = mask_from_logit(mask_logit)
    return blend(x, x_raw, mask), x_raw, mask, mask_logit


def critic(D, xs, dtype=None, merge=False):
    """D's patch logits (fp32) for each batch in xs; merge: one pass on the batches concatenated.

    D has no batch-dependent layer (convolutions and LeakyReLU only), so each sample's output
    is the same as in a pass of its own, up to floating-point rounding.
    """
    with autocast(xs[0].device, dtype):
        if merge and len(xs) > 1:
            outs = D(torch.cat(xs))[1].split([x.size(0) for x in xs])
        else:
            outs = [D(x)[1] for x in xs]
    return [out.float() for out in outs]


@contextlib.contextmanager
def frozen(module):
    """Within the block, passes through module record no gradient for its parameters."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def running_stats(G):
    """A copy of G's InstanceNorm running statistics (None where a pass can't be reused)."""
    norms = [m for m in G.modules() if isinstance(m, torch.nn.modules.instancenorm._InstanceNorm)
             and m.track_running_stats]
    if any(m.momentum is None for m in norms):
        return None  # a cumulative average: not a momentum update that can be repeated
    return [(m, m.running_mean.clone(), m.running_var.clone()) for m in norms]


def repeat_running_stats_update(snapshot):
    """Apply again the running-statistics update of the G pass made since `snapshot`.

    A second pass on the same batch with the same weights sees the same per-image statistics s,
    so from r1 = k r0 + (1 - k) s it would give r2 = k r1 + (1 - k) s = r1 + k (r1 - r0),
    k = 1 - momentum. The statistics are stored in the checkpoints but never used (G stays in
    training mode); this keeps them the original's, up to rounding.
    """
    with torch.no_grad():
        for m, mean0, var0 in snapshot:
            k = 1 - m.momentum
            m.running_mean.add_(m.running_mean - mean0, alpha=k)
            m.running_var.add_(m.running_var - var0, alpha=k)


class CompiledOrEager:
    """torch.compile(module), or the module itself (after one warning) where compiling fails."""

    def __init__(self, module, name):
        self.module, self.name = module, name
        self.compiled = torch.compile(module)

    def __call__(self, *args):
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as e:  # a backend or compiler error: run eagerly from now on
                first_line = (str(e).strip().splitlines() or [''])[0][:200]
                print(f'warning: --compile true: compiling {self.name} failed '
                      f'({type(e).__name__}: {first_line}); running it eagerly', file=sys.stderr)
                self.compiled = None
        return self.module(*args)


def maybe_compile(module, name, device):
    """CompiledOrEager(module), or module where inductor cannot work (no C++ compiler on CPU)."""
    if device.type == 'cpu':
        import shutil
        if not any(shutil.which(cxx) for cxx in (os.environ.get('CXX', 'g++'), 'c++', 'clang++')):
            print(f'warning: --compile true: no C++ compiler (g++, c++, clang++) for inductor on '
                  f'the CPU; {name} runs eagerly', file=sys.stderr)
            return module
    return CompiledOrEager(module, name)


def keep_adam_impl(optimizer):
    """Make load_state_dict (a resume) keep this optimizer's foreach/fused choice."""
    impl = {k: optimizer.param_groups[0][k] for k in ('foreach', 'fused')}

    def restore(opt):  # the saved param_groups carry the saved run's choice
        for group in opt.param_groups:
            group.update(impl)
    optimizer.register_load_state_dict_post_hook(restore)


def match_state_layout(optimizer):
    """Make load_state_dict (a resume) give the loaded moments their parameters' memory layout.

    The saved run may have kept its weights channels-last (or not), and torch's fused CPU Adam,
    given moments whose strides differ from the parameter's, silently updates with the wrong
    elements (tests/test_fast.py).
    """
    def relayout(opt):
        for group in opt.param_groups:
            for p in group['params']:
                state = opt.state.get(p, {})
                for k, v in state.items():
                    if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                        state[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)
    optimizer.register_load_state_dict_post_hook(relayout)


def apply_backend_switches(speed, deterministic):
    """cudnn.benchmark (the original's True; off under --deterministic) and TF32 (if set)."""
    torch.backends.cudnn.benchmark = bool(speed['cudnn_benchmark']) and not deterministic
    if speed['tf32'] is not None:
        torch.backends.cuda.matmul.allow_tf32 = bool(speed['tf32'])
        torch.backends.cudnn.allow_tf32 = bool(speed['tf32'])
