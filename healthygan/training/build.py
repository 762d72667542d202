"""G (and, to train, D and their optimizers) with the fast paths the flags ask for: the networks
every part of the Solver shares (training steps, checkpoints, scoring)."""
import torch

from healthygan.errors import ConfigError
from healthygan.model.networks import Generator
from healthygan.training.fast import (apply_backend_switches, keep_adam_impl, match_state_layout,
                                      maybe_compile, resolve_speed)
from healthygan.training.fast_critic import FastCritic

AMP_DTYPES = {'off': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
ADAM_OPTIONS = {'default': {}, 'foreach': {'foreach': True}, 'fused': {'fused': True}}


class Networks:
    """G and, to train (train=True), D with their Adam optimizers and loss scaler, and the
    modules that run them.

    The parts hold this object rather than copies of its fields, so that a module swapped here
    (tools/benchmark.py runs the compiled variants' FLOP count eagerly) is the one they use.
    """

    def __init__(self, config, device, train=True):
        c = config
        s = self.speed = resolve_speed(c, device)
        for name, value in s.items():  # run_config.json then records what actually ran
            setattr(c, name, value)
        apply_backend_switches(s, c.deterministic)
        self.amp_dtype = AMP_DTYPES[s['amp']]
        self.G = Generator(c.g_conv_dim, 0, c.g_repeat_num).to(device)
        if s['channels_last']:
            self.G.to(memory_format=torch.channels_last)
        # The test modes use G alone: no critic, optimizers or loss scaler are built for them.
        self.D = self.g_optimizer = self.d_optimizer = self.scaler = None
        if train:
            self.build_training(c, device)
        # Compiled modules share G's and D's parameters; G / D stay the plain modules
        # (checkpoints, grids, the gradient penalty's double backward, which compiled graphs
        # do not support).
        self.G_run, self.D_run = self.G, self.D
        if s['compile']:
            self.G_run = maybe_compile(self.G, 'G', device)
            if train:
                self.D_run = maybe_compile(self.D, 'D', device)

    def build_training(self, c, device):
        """D, both Adam optimizers and the loss scaler."""
        s = self.speed
        # The paper's PatchGAN critic; FastCritic only adds the opt-in fast paths' passes.
        self.D = FastCritic(c.image_size, c.d_conv_dim, 0, c.d_repeat_num).to(device)
        if s['channels_last']:
            self.D.to(memory_format=torch.channels_last)
        self.D.matmul_side = FastCritic.MATMUL_SIDE if s['critic_matmul'] else 0
        try:
            self.g_optimizer = torch.optim.Adam(self.G.parameters(), c.g_lr, (c.beta1, c.beta2),
                                                **ADAM_OPTIONS[s['adam_impl']])
            self.d_optimizer = torch.optim.Adam(self.D.parameters(), c.d_lr, (c.beta1, c.beta2),
                                                **ADAM_OPTIONS[s['adam_impl']])
        except (RuntimeError, ValueError) as e:
            raise ConfigError(f'--adam_impl {s["adam_impl"]} is not available on '
                              f'{device.type}: {e}; use --adam_impl default') from None
        for optimizer in (self.g_optimizer, self.d_optimizer):
            keep_adam_impl(optimizer)
            match_state_layout(optimizer)
        # fp16 needs loss scaling; disabled (bf16, fp32) the scaler passes everything through.
        self.scaler = torch.amp.GradScaler(device.type, enabled=s['amp'] == 'fp16')
        if s['compile']:
            # On the CPU the compiled critic's LeakyReLU runs in place: its backward then reads
            # the sign of the output, which the next layer keeps anyway, instead of a bool mask
            # of the input, which inductor's CPU code writes slowly. For a positive slope the
            # signs are the same, so the gradients are too, bit for bit (tests/test_fast.py).
            # Not on GPUs, where the compiled step that was timed stays as it was.
            self.D.set_inplace_activations(device.type == 'cpu')

    def to_layout(self, x):
        """x in the memory format the networks use (channels-last under --channels_last)."""
        return x.contiguous(memory_format=torch.channels_last) if self.speed['channels_last'] \
            else x

    def set_lr(self, g_lr, d_lr):
        for group in self.g_optimizer.param_groups:
            group['lr'] = g_lr
        for group in self.d_optimizer.param_groups:
            group['lr'] = d_lr
