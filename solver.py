"""Solver: builds G and D, trains them (WGAN-GP + identity, reconstruction and mask terms) and
tests them (translation grids, anomaly scores and AUROC)."""
import contextlib
import copy
import csv
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time

import torch
from torchvision.utils import save_image
from tqdm import tqdm

import data_loader
import metrics
from healthygan import runfiles
from healthygan.errors import CheckpointError, ConfigError, NonFiniteLossError  # noqa: F401
from model import Discriminator, Generator, count_parameters


def nonfinite_terms(loss):
    """Names of the loss terms that are NaN or infinite (one device sync)."""
    names = list(loss)
    if not names:
        return []
    finite = torch.stack([torch.isfinite(loss[k]).all() for k in names]).tolist()
    return [k for k, ok in zip(names, finite) if not ok]


class StopFlag:
    """Records SIGINT/SIGTERM instead of dying mid-step, so the loop can save and exit."""

    def __init__(self):
        self.signal = None

    def _handler(self, signum, frame):
        if self.signal is not None:  # a second signal: stop at once
            raise KeyboardInterrupt
        self.signal = signum
        print(f'\n{signal.Signals(signum).name} received: saving at the end of this iteration '
              f'(send it again to stop at once)...', file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def catching(self, *signums):
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread
            return
        previous = {s: signal.signal(s, self._handler) for s in signums}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


# ------------------------------------------------------------------------------------------------ #
#                          Losses and helpers: small pure functions                                #
# ------------------------------------------------------------------------------------------------ #

def mask_from_logit(mask_logit):
    """Mask in [0, 1]: (tanh(logit) + 1) / 2."""
    return (torch.tanh(mask_logit) + 1) / 2


def blend(x, x_raw, mask):
    """Translation x_hat = m * G's raw output + (1 - m) * x: only the masked region changes."""
    return mask * x_raw + (1 - mask) * x


def generate(G, x):
    """Run G on x: returns (x_hat, x_raw = tanh(image logits), mask)."""
    image_logits, mask_logit = G(x)
    x_raw = torch.tanh(image_logits)
    mask = mask_from_logit(mask_logit)
    return blend(x, x_raw, mask), x_raw, mask


def d_loss_real_fn(out_real):
    """WGAN critic loss on real (healthy) images: -mean D(x_B)."""
    return -out_real.mean()


def d_loss_fake_fn(out_fake):
    """WGAN critic loss on translated images: mean D(x_hat_A)."""
    return out_fake.mean()


def g_adv_loss(out_fake):
    """Generator's adversarial loss: -mean D(x_hat)."""
    return -out_fake.mean()


def gradient_penalty(out, x):
    """WGAN-GP: mean over samples of (||dD/dx||_2 - 1)^2, gradient flattened per sample."""
    grad = torch.autograd.grad(outputs=out, inputs=x, grad_outputs=torch.ones_like(out),
                               retain_graph=True, create_graph=True, only_inputs=True)[0]
    return penalty_of_gradient(grad)


def penalty_of_gradient(grad):
    """(||grad||_2 - 1)^2 per sample, averaged; grad: dD/dx, [N, C, H, W]."""
    grad = grad.reshape(grad.size(0), -1)
    return ((grad.pow(2).sum(dim=1).sqrt() - 1) ** 2).mean()


def interpolate(x_real, x_fake, alpha):
    """Random points between real and fake images, detached, with gradients enabled."""
    return (alpha * x_real.detach() + (1 - alpha) * x_fake.detach()).requires_grad_(True)


# --diff_augment (added): Differentiable Augmentation (Zhao et al., NeurIPS 2020) for GANs
# trained on few images. Every image the critic sees, real or translated, in the critic's and
# in the generator's step, goes through the same kind of random, differentiable change, so D
# cannot memorise the few hundred training images and G gets gradients through the change. The
# original has none (its D sees the images as they are).
DIFF_AUGMENT_POLICIES = ('color', 'translation', 'cutout')


def diff_augment_policy(value):
    """'off' -> (); 'translation,cutout' -> ('translation', 'cutout'); unknown names refused."""
    if value in ('off', '', 'none'):
        return ()
    names = tuple(v.strip() for v in value.split(',') if v.strip())
    unknown = [n for n in names if n not in DIFF_AUGMENT_POLICIES]
    if unknown:
        raise ValueError(f'unknown policy {", ".join(unknown)}; choose from '
                         f'{", ".join(DIFF_AUGMENT_POLICIES)} (comma-separated) or off')
    return names


def diff_augment(x, policy, generator=None):
    """DiffAugment of a batch in [-1, 1]: per image, random and differentiable in x.

    color: brightness + U(-0.5, 0.5), then contrast x U(0.5, 1.5) about the image mean;
    translation: an integer shift of up to 1/8 of the side in each axis, zeros come in;
    cutout: a square of half the side, at a random place, set to 0 (mid-grey).
    Draws come from the global RNG (saved in <iters>-state.pt, so a resumed run draws the same).
    """
    if not policy:
        return x
    n, _, h, w = x.shape
    opts = {'device': x.device, 'generator': generator}
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    if 'color' in policy:
        x = x + (torch.rand(n, 1, 1, 1, **opts) - 0.5)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (torch.rand(n, 1, 1, 1, **opts) + 0.5) + mean
    if 'translation' in policy:
        sy, sx = h // 8, w // 8
        dy = torch.randint(-sy, sy + 1, (n, 1, 1), **opts)
        dx = torch.randint(-sx, sx + 1, (n, 1, 1), **opts)
        ys, xs = rows - dy, cols - dx  # the source pixel of each output pixel
        inside = ((ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)).unsqueeze(1)
        index = (ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)).view(n, 1, h * w)
        x = x.flatten(2).gather(2, index.expand(-1, x.size(1), -1)).view_as(x) * inside
    if 'cutout' in policy:
        ch, cw = h // 2, w // 2
        cy = torch.randint(0, h - ch + 1, (n, 1, 1), **opts)
        cx = torch.randint(0, w - cw + 1, (n, 1, 1), **opts)
        keep = ~((rows >= cy) & (rows < cy + ch) & (cols >= cx) & (cols < cx + cw))
        x = x * keep.unsqueeze(1)
    return x


def reconstruction_loss(x, x_raw, mask):
    """mean |x - (m * x + (1 - m) * x_raw)|: outside the mask G's raw output must equal x."""
    return (x - (mask * x + (1 - mask) * x_raw)).abs().mean()


def identity_loss(x, x_raw):
    """mean |x - x_raw| on healthy images, on the raw output before blending."""
    return (x - x_raw).abs().mean()


def mask_small_loss(mask):
    """(mean m)^2: keeps the mask small."""
    return mask.mean() ** 2


def mask_zero_one_loss(mask, center=0.5, epsilon=0.01):
    """mean 1 / (|m - 0.5| + 0.01) - 1 / 0.51: pushes the mask towards 0 or 1 (minimum 0)."""
    return (1 / ((mask - center).abs() + epsilon)).mean() - 1 / (center + epsilon)


def mask_loss(mask, lambda_msmall, lambda_mzerone):
    """Weighted sum of the two mask terms for one path; returns (loss, small term, 0-1 term)."""
    small, zero_one = mask_small_loss(mask), mask_zero_one_loss(mask)
    return lambda_msmall * small + lambda_mzerone * zero_one, small, zero_one


def learning_rate(i, lr0, num_iters, num_iters_decay, lr_update_step, schedule='original'):
    """Learning rate in force during iteration i (0-based).

    The original lowers the rate by lr0 / num_iters_decay at the end of every iteration j whose
    j + 1 is a multiple of lr_update_step and exceeds num_iters - num_iters_decay. With the
    defaults that is 100 steps of lr0 / 100000: the rate ends at 99.9% of lr0 (no real decay).
    'linear' lowers it by lr0 * lr_update_step / num_iters_decay instead, reaching ~0 at the end.
    """
    start = max(num_iters - num_iters_decay, 0)
    # decrements already applied: multiples of lr_update_step in (start, i]
    n = max(i // lr_update_step - start // lr_update_step, 0)
    if schedule == 'original':
        return lr0 - n * (lr0 / float(num_iters_decay))
    if schedule == 'linear':
        return max(lr0 * (1 - n * lr_update_step / float(num_iters_decay)), 0.0)
    raise ValueError(f'unknown lr schedule {schedule!r}')


def denorm(x):
    """[-1, 1] -> [0, 1]."""
    return ((x + 1) / 2).clamp(0, 1)


def translation_grid(G, x_A, x_B):
    """Columns: x_A, raw, x_hat, mask, x_B, raw, x_hat, mask (in [-1, 1]), one row per sample."""
    columns = []
    for x in (x_A, x_B):
        x_hat, x_raw, mask = generate(G, x)
        # The original drew the mask with a sigmoid here (a display bug); this shows the mask
        # the model actually uses, (tanh + 1) / 2, mapped to [-1, 1] for display.
        columns += [x, x_raw, x_hat, mask.expand_as(x) * 2 - 1]
    return torch.cat(columns, dim=3)


# ------------------------------------------------------------------------------------------------ #
#                                  Device and checkpoints                                          #
# ------------------------------------------------------------------------------------------------ #

def resolve_device(name):
    """'auto' picks cuda, then mps, then cpu; an unavailable device is a clear error."""
    mps = getattr(torch.backends, 'mps', None)
    mps_ok = mps is not None and mps.is_available()
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'mps' if mps_ok else 'cpu')
    if name == 'cuda' and not torch.cuda.is_available():
        raise ConfigError('--device cuda was asked for but CUDA is not available '
                           '(use --device cpu or auto)')
    if name == 'mps' and not mps_ok:
        raise ConfigError('--device mps was asked for but MPS is not available '
                           '(use --device cpu or auto)')
    return torch.device(name)


def save_atomic(obj, path):
    """torch.save to a temporary file, then rename: a crash never leaves a truncated file."""
    tmp = path + '.tmp'
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def available_iters(model_save_dir, suffix='-G.ckpt'):
    """Sorted iteration numbers N for which <N><suffix> exists (e.g. '-G.ckpt', '-state.pt')."""
    if not os.path.isdir(model_save_dir):
        return []
    stems = (n[:-len(suffix)] for n in os.listdir(model_save_dir) if n.endswith(suffix))
    return sorted(int(stem) for stem in stems if stem.isdigit())


def ensemble_members(model_save_dir, iters, n, ema=False):
    """The n most recent checkpoints up to and including `iters`, oldest first (added: a
    snapshot ensemble for --ensemble n; n = 1 is [iters], the original's single checkpoint)."""
    if n <= 1:
        return [iters]
    suffix = '-G_ema.ckpt' if ema else '-G.ckpt'
    earlier = [i for i in available_iters(model_save_dir, suffix) if i <= iters]
    if len(earlier) < n:
        raise CheckpointError(
            f'--ensemble {n}: only {len(earlier)} checkpoint(s) *{suffix} at or before iteration '
            f'{iters} in {model_save_dir}; lower --ensemble or save checkpoints more often '
            f'(--model_save_step)')
    return earlier[-n:]


@torch.no_grad()
def update_ema(ema, model, decay):
    """ema <- decay * ema + (1 - decay) * model for the weights; buffers copied (added)."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p.detach(), 1 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def ema_decay(decay, updates):
    """The decay for the average's update number `updates` (1, 2, ...): min(decay, (1 + t) /
    (10 + t)), the warm-up of TensorFlow's ExponentialMovingAverage. Without it a run of a few
    thousand updates keeps a sizeable share of the random initial weights in the average
    (0.999 ** 2000 = 14%); measured on nih-cxr-mini that made the average far worse than G."""
    return min(decay, (1 + updates) / (10 + updates))


LUNG_PRIOR_FILE = 'lung_prior.pt'  # beside the checkpoints: the 'lung' score's region
AUCP_LOG = 'aucp.jsonl'  # beside the checkpoints: one {"iter", "AUCp", ...} line per checkpoint


def read_aucp_log(model_save_dir):
    """The AUCp records of a run ({iter: record}), later lines winning (a resumed run rewrites)."""
    records = {}
    for rec in runfiles.read_jsonl(os.path.join(model_save_dir, AUCP_LOG)):  # torn: skipped
        if isinstance(rec, dict) and 'iter' in rec:
            records[int(rec['iter'])] = rec
    return records


def aucp_of(record, ema=False, variant='mean'):
    """The AUCp a record holds for G (or its average) under a score variant, or None."""
    by_variant = record.get('AUCp_ema_by_variant' if ema else 'AUCp_by_variant', {})
    if variant in by_variant:
        return by_variant[variant]
    if record.get('score_variant', 'mean') == variant:
        return record.get('AUCp_ema' if ema else 'AUCp')
    return None


def best_aucp_iters(model_save_dir, flag='--test_iters', ema=False, variant='mean'):
    """The checkpoint with the highest AUCp (ties: the later one) among those still on disk,
    for the averaged generator when ema, under the score variant that will be tested."""
    found = set(available_iters(model_save_dir))
    values = {i: aucp_of(r, ema, variant) for i, r in read_aucp_log(model_save_dir).items()
              if i in found}
    values = {i: v for i, v in values.items() if v is not None}
    if not values:
        raise CheckpointError(
            f'{flag} best_aucp: no AUCp records{" of the averaged G" if ema else ""} for the '
            f'checkpoints in {model_save_dir} (train with --holdout_fraction > 0'
            f'{" and --g_ema_decay > 0" if ema else ""} to log them in {AUCP_LOG})')
    return max(values, key=lambda i: (values[i], i))


def resolve_iters(value, model_save_dir, flag, ema=False, variant='mean'):
    """An iteration number, 'latest' (the highest checkpoint in model_save_dir) or 'best_aucp'."""
    found = available_iters(model_save_dir)
    if value == 'best_aucp':
        if flag == '--resume_iters':
            raise ConfigError('--resume_iters best_aucp: resume from a number or latest')
        return best_aucp_iters(model_save_dir, flag, ema, variant)
    if value == 'latest':
        # the newest complete set (G with its D); a G left alone by a cut-short save is skipped
        complete = runfiles.complete_iters(model_save_dir)
        newer = [i for i in runfiles.incomplete_iters(model_save_dir)
                 if not complete or i > complete[-1]]
        if newer:
            runfiles.warn(f'{flag} latest: skipping the incomplete checkpoint set(s) '
                          f'{", ".join(map(str, newer))} in {model_save_dir} (no -D.ckpt)')
        if not complete:
            raise CheckpointError(f'{flag} latest: no complete checkpoint set (<N>-G.ckpt with '
                                  f'<N>-D.ckpt) in {model_save_dir}')
        return complete[-1]
    if int(value) not in found:
        listing = ', '.join(map(str, found)) if found else 'none'
        raise CheckpointError(f'{flag} {value}: {os.path.join(model_save_dir, f"{value}-G.ckpt")} '
                              f'does not exist. Checkpoints in {model_save_dir}: {listing}')
    return int(value)


def last_good(last_saved, model_save_dir):
    """The NaN guard's pointer to the last good checkpoint, or that none was saved."""
    if last_saved == 0:
        return f'no checkpoint was saved before it in {model_save_dir}'
    return f'the last good checkpoint is iteration {last_saved} in {model_save_dir}'


def architecture_of(state, name):
    """The architecture flags a G or D state dict was built with: {'--g_conv_dim': 64, ...}."""
    p = 'g' if name == 'Generator' else 'd'
    if 'main.0.weight' not in state:
        return {}
    if p == 'g':
        blocks = {k.split('.')[1] for k in state if k.endswith('.main.0.weight')}
    else:
        blocks = {k.split('.')[1] for k in state
                  if k.startswith('main.') and k.endswith('.weight')}
    return {f'--{p}_conv_dim': int(state['main.0.weight'].shape[0]),
            f'--{p}_repeat_num': len(blocks)}


def load_checked(path, what='checkpoint'):
    """A dict saved with torch.save, read safely (weights_only), or one clear error."""
    state = runfiles.load_weights_only(path, what)
    if not isinstance(state, dict):
        raise CheckpointError(f'{path} holds a {type(state).__name__}, not a state dict')
    return state


def load_state_dict_checked(model, path, name):
    """Load a bare state dict (weights_only) into model, with errors that say what is wrong."""
    state = load_checked(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        extra = sorted(set(state) - set(own))
        shapes = [f'{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}'
                  for k in own if k in state and state[k].shape != own[k].shape]
        detail = '; '.join(filter(None, [
            f'missing keys {missing[:3]}' if missing else '',
            f'unexpected keys {extra[:3]}' if extra else '',
            f'shape mismatch {shapes[:2]}' if shapes else '']))
        theirs, ours = architecture_of(state, name), architecture_of(own, name)
        differ = [f'{flag} {theirs[flag]} (this run: {ours[flag]})' for flag in ours
                  if flag in theirs and theirs[flag] != ours[flag]]
        hint = ('The checkpoint was built with ' + ', '.join(differ) + '.') if differ else \
            'Use the architecture flags the checkpoint was trained with.'
        raise CheckpointError(f'{path} does not fit the {name} built from the flags: {hint} '
                              f'({detail or e})') from None


def run_metadata(config):
    """Config, git commit and library versions, saved beside a run's checkpoints."""
    try:
        commit = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__)),
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    import numpy
    import torchvision
    return {
        'config': vars(config),
        'git_commit': commit,
        'versions': {'python': platform.python_version(), 'torch': str(torch.__version__),
                     'torchvision': str(torchvision.__version__), 'numpy': str(numpy.__version__)},
        'command': ' '.join(sys.argv),
        'started': datetime.datetime.now().isoformat(timespec='seconds'),
    }


# ------------------------------------------------------------------------------------------------ #
#                 Several processes (torchrun): torch.distributed, no wrapper                      #
# ------------------------------------------------------------------------------------------------ #
# Added (the original trains on one GPU). G and D stay plain modules: DDP's reducer does not
# support the gradient penalty's double backward (create_graph=True) reliably, so, as
# StyleGAN2-ADA does, each rank runs its own backward and the gradients are then averaged with one
# all_reduce per network before the optimizer step. The ranks start from rank 0's weights and
# apply identical updates, so they stay identical. Without torchrun every helper is a no-op and
# the run is bit for bit what it was.

dist = torch.distributed


def init_distributed(config):
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT in the environment); NCCL on CUDA, gloo on the CPU. Without torchrun: nothing.

    torchrun --nproc_per_node 1 joins a group of one, so that a single GPU runs (and checks)
    every collective of the multi-GPU path.
    """
    if 'RANK' not in os.environ or 'WORLD_SIZE' not in os.environ or dist.is_initialized():
        return
    device = resolve_device(config.device)
    if device.type == 'mps':
        raise ConfigError('--device mps cannot be used with torchrun (no collective backend); '
                          'use --device cpu or cuda, or run one process')
    if device.type == 'cuda':
        local_rank = int(os.environ.get('LOCAL_RANK', '0'))
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f'LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} '
                              f'GPU(s) are visible: use torchrun --nproc_per_node <= '
                              f'{torch.cuda.device_count()}')
        # Every later 'cuda' tensor of this process lands on cuda:LOCAL_RANK.
        torch.cuda.set_device(local_rank)
        dist.init_process_group('nccl', device_id=torch.device('cuda', local_rank))
    else:
        dist.init_process_group('gloo')


def world_size():
    """Number of training processes (1 without torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank():
    """This process's rank (0 without torchrun)."""
    return dist.get_rank() if dist.is_initialized() else 0


def is_main():
    """True on the one process that prints and writes logs, samples and checkpoints."""
    return rank() == 0


def barrier():
    """Wait for every rank (no-op on one process)."""
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's value of a picklable object on every rank (e.g. a seed drawn at random)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_params(*modules):
    """Copy rank 0's parameters and buffers to every rank (same start on every rank)."""
    if not dist.is_initialized():
        return
    with torch.no_grad():
        for module in modules:
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)


def average_gradients(module):
    """Replace each parameter's gradient by its mean over ranks (one flat all_reduce).

    Each rank's losses are means over its own batch and all per-rank batches have the same size,
    so the mean of the per-rank gradients is the gradient of the loss on the concatenated global
    batch, the gradient penalty included (its double backward happened locally already).
    """
    if not dist.is_initialized():
        return
    params = [p for p in module.parameters() if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def average_buffers(*modules):
    """Mean over ranks of the floating-point buffers (InstanceNorm running statistics).

    G is never put in eval mode, so these statistics do not affect training or testing; they
    are averaged before each save so that the checkpoint holds the statistics of the global
    batch (the updates are linear in the batch means) and the ranks stay identical.
    """
    if not dist.is_initialized():
        return
    with torch.no_grad():
        for module in modules:
            for b in module.buffers():
                if b.is_floating_point():
                    dist.all_reduce(b)
                    b /= world_size()


def all_reduce_mean(tensors):
    """{tag: scalar tensor} averaged over ranks (one all_reduce), for logging."""
    if not dist.is_initialized() or not tensors:
        return tensors
    tags = list(tensors)
    flat = torch.stack([tensors[k].detach().float().reshape(()) for k in tags])
    dist.all_reduce(flat)
    return dict(zip(tags, flat / world_size()))


def any_rank(flag, device):
    """True on every rank if flag is true on any rank (to agree on stopping)."""
    if not dist.is_initialized():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gp_alpha(x):
    """The gradient penalty's interpolation weights for this rank's batch x, shape (n, 1, 1, 1).

    One process: torch.rand(n, ...) exactly as before. Several: every rank holds the same
    generator state and draws the global batch's weights, then takes its own slice, so the run
    draws what one process on the concatenated batch would draw.
    """
    n, world = x.size(0), world_size()
    if world == 1:
        return torch.rand(n, 1, 1, 1, device=x.device)
    r = rank()
    return torch.rand(n * world, 1, 1, 1, device=x.device)[r * n:(r + 1) * n]


def sync_rng_state(device):
    """Give every rank rank 0's torch RNG state (CPU, and the current GPU's)."""
    if not dist.is_initialized():
        return
    torch.set_rng_state(broadcast_object(torch.get_rng_state()))
    if device.type == 'cuda':
        torch.cuda.set_rng_state(broadcast_object(torch.cuda.get_rng_state()))


# ------------------------------------------------------------------------------------------------ #
#                   Speed (added): fast paths of the training step, each a flag                    #
# ------------------------------------------------------------------------------------------------ #
# The original runs an eager fp32 step. Each fast path is off unless asked for (then the step
# computes the original's losses, bit for bit); --fast true turns on those measured to help on
# the device (README, "Speed"). None changes the losses beyond floating-point rounding
# (tests/test_speed.py compares them with the plain step).

SPEED_FLAGS = ('amp', 'channels_last', 'compile', 'adam_impl', 'reuse_fake', 'merge_critic',
               'critic_matmul', 'gp_explicit', 'cudnn_benchmark', 'tf32')
# The original's behaviour; tf32 None leaves torch's own defaults alone.
ORIGINAL_SPEED = {'amp': 'off', 'channels_last': False, 'compile': False, 'adam_impl': 'default',
                  'reuse_fake': False, 'merge_critic': False, 'critic_matmul': False,
                  'gp_explicit': False, 'cudnn_benchmark': True, 'tf32': None}


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
    # CPU (and MPS): the fp32 paths tools/benchmark.py found faster on a 2-core AVX-512 CPU
    # without bf16 units (README, "Speed"); bf16 autocast slowed the step. torch.compile speeds
    # it up too (1.55-1.58x the original's loop against 1.32-1.33x) but compiles for a minute at
    # every start and resume and needs a C++ compiler, so it is left to --compile true.
    return {**ORIGINAL_SPEED, 'reuse_fake': True, 'merge_critic': True, 'channels_last': True,
            'adam_impl': 'fused', 'critic_matmul': True, 'gp_explicit': True}


def resolve_speed(config, device):
    """Each fast-path flag as given, else the --fast preset's value, else the original's."""
    preset = fast_preset(device) if getattr(config, 'fast', False) else ORIGINAL_SPEED
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
    elements (tests/test_speed.py).
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


# ------------------------------------------------------------------------------------------------ #
#                                           Solver                                                 #
# ------------------------------------------------------------------------------------------------ #

class Solver:
    """Solver for training and testing HealthyGAN; keeps the parsed flags as one config."""

    def __init__(self, config, split=None):
        self.config = config
        self.device = resolve_device(config.device)
        self.split = split
        self.build_model()
        self.logger = None
        # Added: an exponential moving average of G's weights (--g_ema_decay > 0), as in
        # ProGAN / StyleGAN; the original has none. Saved as <iters>-G_ema.ckpt.
        self.G_ema = None
        self.ensemble_states, self.ensemble_iters = [], []  # --ensemble, set by load_for_test
        if not 0 <= getattr(config, 'g_ema_decay', 0) < 1:
            raise ConfigError(f'--g_ema_decay {config.g_ema_decay}: expected a value in [0, 1)')
        if getattr(config, 'g_ema_decay', 0) > 0:
            self.G_ema = copy.deepcopy(self.G).requires_grad_(False)
        try:
            self.diff_augment = diff_augment_policy(getattr(config, 'diff_augment', 'off'))
        except ValueError as e:
            raise ConfigError(f'--diff_augment {config.diff_augment}: {e}') from None

    def build_model(self):
        """Create G, D and their Adam optimizers, with the fast paths the flags ask for."""
        c = self.config
        s = self.speed = resolve_speed(c, self.device)
        for name, value in s.items():  # run_config.json then records what actually ran
            setattr(c, name, value)
        apply_backend_switches(s, getattr(c, 'deterministic', False))
        self.G = Generator(c.g_conv_dim, 0, c.g_repeat_num).to(self.device)
        self.D = Discriminator(c.image_size, c.d_conv_dim, 0, c.d_repeat_num).to(self.device)
        if s['channels_last']:
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        self.D.matmul_side = Discriminator.MATMUL_SIDE if s['critic_matmul'] else 0
        adam = {'default': {}, 'foreach': {'foreach': True}, 'fused': {'fused': True}}
        try:
            self.g_optimizer = torch.optim.Adam(self.G.parameters(), c.g_lr, (c.beta1, c.beta2),
                                                **adam[s['adam_impl']])
            self.d_optimizer = torch.optim.Adam(self.D.parameters(), c.d_lr, (c.beta1, c.beta2),
                                                **adam[s['adam_impl']])
        except (RuntimeError, ValueError) as e:
            raise ConfigError(f'--adam_impl {s["adam_impl"]} is not available on '
                              f'{self.device.type}: {e}; use --adam_impl default') from None
        for optimizer in (self.g_optimizer, self.d_optimizer):
            keep_adam_impl(optimizer)
            match_state_layout(optimizer)
        self.amp_dtype = {'off': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}[s['amp']]
        # fp16 needs loss scaling; disabled (bf16, fp32) the scaler passes everything through.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=s['amp'] == 'fp16')
        # Compiled modules share G's and D's parameters; self.G / self.D stay the plain modules
        # (checkpoints, grids, the gradient penalty's double backward, which compiled graphs
        # do not support).
        self.G_run, self.D_run = self.G, self.D
        if s['compile']:
            # (added) On the CPU the compiled critic's LeakyReLU runs in place: its backward then
            # reads the sign of the output, which the next layer keeps anyway, instead of a bool
            # mask of the input, which inductor's CPU code writes slowly (the cycle 8% faster on
            # the 2-core CPU; README, Speed). For a positive slope the signs are the same, so the
            # gradients are too, bit for bit (tests/test_speed.py). Not on GPUs, where it is
            # untimed and the measured compiled step stays as it was.
            self.D.set_inplace_activations(self.device.type == 'cpu')
            self.G_run = maybe_compile(self.G, 'G', self.device)
            self.D_run = maybe_compile(self.D, 'D', self.device)
        self.kept_fake = None  # --reuse_fake: the critic step's translation, for the G step

    def to_layout(self, x):
        """x in the memory format the networks use (channels-last under --channels_last)."""
        return x.contiguous(memory_format=torch.channels_last) if self.speed['channels_last'] \
            else x

    def restore_model(self, iters, load_D=True):
        """Load <iters>-G.ckpt (and -D.ckpt when asked and present) from model_save_dir."""
        d = self.config.model_save_dir
        print(f'Loading the trained models from step {iters}...')
        load_state_dict_checked(self.G, os.path.join(d, f'{iters}-G.ckpt'), 'Generator')
        D_path = os.path.join(d, f'{iters}-D.ckpt')
        if load_D and os.path.exists(D_path):
            load_state_dict_checked(self.D, D_path, 'Discriminator')

    def save_model(self, iters):
        """Write <iters>-G.ckpt and <iters>-D.ckpt as bare state dicts (original format)."""
        runfiles.save_checkpoint_set({f'{iters}-G.ckpt': self.G.state_dict(),
                                      f'{iters}-D.ckpt': self.D.state_dict()},
                                     self.config.model_save_dir, iters)  # as one set

    def set_lr(self, g_lr, d_lr):
        for group in self.g_optimizer.param_groups:
            group['lr'] = g_lr
        for group in self.d_optimizer.param_groups:
            group['lr'] = d_lr

    # ------------------------------------------------------------------------------------------ #
    #                                         Training                                             #
    # ------------------------------------------------------------------------------------------ #

    def d_step(self, x_A, x_B, keep_fake=False):
        """One critic update (WGAN-GP); returns the loss terms as tensors.

        keep_fake (added): a G step on the same batch follows; with --reuse_fake the translation
        of x_A is then kept, with its graph, for g_step instead of being recomputed there.
        """
        c, amp = self.config, self.amp_dtype
        x_A_given, x_A, x_B = x_A, self.to_layout(x_A), self.to_layout(x_B)
        keep = keep_fake and self.speed['reuse_fake']
        stats = running_stats(self.G) if keep else None
        keep = keep and stats is not None
        # The original ran G here with autograd on and used only the detached output: without
        # --reuse_fake no graph is needed; with it, the G step reuses this pass.
        with torch.set_grad_enabled(keep):
            fake = generate_amp(self.G_run, x_A, amp)
        self.kept_fake = (x_A_given, fake, stats) if keep else None
        x_hat_A = fake[0].detach()
        if self.diff_augment:  # --diff_augment (added): D sees changed images, G's too
            x_B, x_hat_A = diff_augment(x_B, self.diff_augment), diff_augment(x_hat_A,
                                                                            self.diff_augment)
        out_real, out_fake = critic(self.D_run, [x_B, x_hat_A], amp, self.speed['merge_critic'])
        d_loss_real = d_loss_real_fn(out_real)
        d_loss_fake = d_loss_fake_fn(out_fake)
        alpha = gp_alpha(x_B)  # torch.rand(n, 1, 1, 1); several ranks: a slice of the global draw
        x_int = interpolate(x_B, x_hat_A, alpha)
        # The penalty's pass stays eager and fp32 under every fast path: compiled graphs do not
        # support autograd's double backward (the default form), and (||grad|| - 1)^2 with
        # ||grad|| near 1 cancels most of a 16-bit gradient's precision.
        if self.speed['gp_explicit']:  # (added) the same penalty without a double backward
            d_loss_gp = penalty_of_gradient(self.D.input_gradient(x_int))
        else:
            d_loss_gp = gradient_penalty(self.D(x_int)[1], x_int)
        d_loss = d_loss_real + d_loss_fake + c.lambda_gp * d_loss_gp

        self.g_optimizer.zero_grad(set_to_none=True)
        self.d_optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(d_loss).backward()  # the scaler is a no-op unless --amp fp16
        average_gradients(self.D)  # several ranks (torchrun): mean over ranks; else no-op
        self.scaler.step(self.d_optimizer)
        self.scaler.update()
        return {'D/loss_real': d_loss_real.detach(), 'D/loss_fake': d_loss_fake.detach(),
                'D/loss_gp': d_loss_gp.detach()}

    def g_step(self, x_A, x_B):
        """One generator update with fresh forward passes; returns the loss terms as tensors."""
        c, amp = self.config, self.amp_dtype
        kept, self.kept_fake = self.kept_fake, None
        x_A_given, x_A, x_B = x_A, self.to_layout(x_A), self.to_layout(x_B)
        if kept is not None and kept[0] is x_A_given:
            # --reuse_fake (added): the critic step changed only D, so its pass of G on x_A is
            # the pass the original ran again here; only the second update of the (unused)
            # InstanceNorm running statistics is left to do.
            x_hat_A, x_raw_A, mask_A, mask_logit_A = kept[1]
            repeat_running_stats_update(kept[2])
        else:
            x_hat_A, x_raw_A, mask_A, mask_logit_A = generate_amp(self.G_run, x_A, amp)
        x_hat_B, x_raw_B, mask_B, mask_logit_B = generate_amp(self.G_run, x_B, amp)
        seen_A, seen_B = x_hat_A, x_hat_B
        if self.diff_augment:  # --diff_augment (added): through the change, differentiably
            seen_A = diff_augment(x_hat_A, self.diff_augment)
            seen_B = diff_augment(x_hat_B, self.diff_augment)
        # Unlike the original, D's parameters take no gradient here: the G step's backward
        # computed D's weight gradients only for the next critic step to zero them (the G
        # updates are the same bit for bit: tests/test_speed.py).
        with frozen(self.D):
            out_A, out_B = critic(self.D_run, [seen_A, seen_B], amp, self.speed['merge_critic'])
        # Mixed path (original -> target): fool D, and leave everything outside the mask alone.
        g_loss_fake = g_adv_loss(out_A)
        g_loss_rec = reconstruction_loss(x_A, x_raw_A, mask_A)
        # Healthy path (original -> original): fool D, and reproduce the image exactly.
        g_loss_fake_id = g_adv_loss(out_B)
        g_loss_id = identity_loss(x_B, x_raw_B)
        # Mask terms, the two paths averaged.
        mask_loss_A, small_A, zo_A = mask_loss(mask_A, c.lambda_msmall, c.lambda_mzerone)
        mask_loss_B, small_B, zo_B = mask_loss(mask_B, c.lambda_msmall, c.lambda_mzerone)
        g_loss_mask = 0.5 * mask_loss_A + 0.5 * mask_loss_B
        g_loss = (g_loss_fake + g_loss_fake_id + c.lambda_id * g_loss_id
                  + c.lambda_rec * g_loss_rec + c.lambda_mask * g_loss_mask)

        self.g_optimizer.zero_grad(set_to_none=True)
        self.d_optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(g_loss).backward()  # the scaler is a no-op unless --amp fp16
        average_gradients(self.G)  # several ranks (torchrun): mean over ranks; else no-op
        self.scaler.step(self.g_optimizer)
        self.scaler.update()
        terms = {'G/loss_fake': g_loss_fake, 'G/loss_rec': g_loss_rec,
                 'G/loss_fake_id': g_loss_fake_id, 'G/loss_id': g_loss_id,
                 'G/loss_mask': g_loss_mask,
                 'Mask/OT_min': mask_logit_A.min(), 'Mask/OT_max': mask_logit_A.max(),
                 'Mask/OT_small': small_A, 'Mask/OT_zo': zo_A,
                 'Mask/OO_min': mask_logit_B.min(), 'Mask/OO_max': mask_logit_B.max(),
                 'Mask/OO_small': small_B, 'Mask/OO_zo': zo_B}
        return {tag: t.detach() for tag, t in terms.items()}

    def training_state(self, iters, sampler, pairs_done):
        """<iters>-state.pt: both optimizers, RNG states and the data position, for exact resume.

        Written beside the original-format <iters>-G/D.ckpt (which it does not replace); the
        original saved no optimizer state, so its resumed runs were not the run they continued.
        """
        return {
            'iteration': iters,
            'g_optimizer': self.g_optimizer.state_dict(),
            'd_optimizer': self.d_optimizer.state_dict(),
            'scaler': self.scaler.state_dict(),  # --amp fp16's loss scale ({} otherwise)
            'rng_torch': torch.get_rng_state(),
            'rng_cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            # Position in the epoch's order in pairs of the global batch (every rank's batch
            # together): another number of ranks resumes at the same pair.
            'data_epoch': sampler.epoch, 'data_pairs_done': pairs_done,
            'world_size': world_size(),
            'metadata': self.metadata,
        }

    def prune_states(self):
        """--keep_last_states K: delete all but the newest K state files."""
        c = self.config
        if c.keep_last_states > 0:  # bound the disk use of long runs
            for old in available_iters(c.model_save_dir, '-state.pt')[:-c.keep_last_states]:
                os.remove(os.path.join(c.model_save_dir, f'{old}-state.pt'))

    def load_training_state(self, iters):
        """Restore optimizers, RNG and data position from <iters>-state.pt, if it exists."""
        path = os.path.join(self.config.model_save_dir, f'{iters}-state.pt')
        if not os.path.exists(path):
            print(f'warning: {path} not found: resuming from the weights only (optimizer '
                  f'state and data order start afresh, as in the original)')
            self.check_resume_config(runfiles.saved_run_config(self.config.model_save_dir,
                                                               iters), path)
            return None
        state = runfiles.load_weights_only(path, 'training state')
        if not isinstance(state, dict) or 'g_optimizer' not in state:
            raise CheckpointError(f'{path} is not a training state this program wrote')
        if state.get('iteration') != iters:
            raise CheckpointError(f'{path} holds the state of iteration {state.get("iteration")}, '
                                  f'not {iters}: it belongs to another run; remove it or '
                                  f'resume from its own checkpoints')
        meta = state.get('metadata') or {}
        self.check_resume_config((meta.get('config'), meta.get('world_size', 1)), path)
        for opt, model, name in ((state['g_optimizer'], self.G, 'G'),
                                 (state['d_optimizer'], self.D, 'D')):
            unfit = runfiles.check_optimizer_fits(opt, model, name)
            if unfit:
                raise CheckpointError(f'{path} does not fit the networks built from the flags '
                                      f'({unfit}): it was written by another architecture')
        try:
            self.g_optimizer.load_state_dict(state['g_optimizer'])
            self.d_optimizer.load_state_dict(state['d_optimizer'])
            if state.get('scaler'):
                self.scaler.load_state_dict(state['scaler'])
        except Exception as e:
            raise CheckpointError(f'cannot use training state {path}: {e}') from None
        torch.set_rng_state(state['rng_torch'])
        if state['rng_cuda'] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state['rng_cuda'])
        return state

    def check_resume_config(self, saved, path):
        """Refuse a resume whose flags change the run (runfiles.RUN_FLAGS) unless
        --allow_changes names them; the accepted changes go into the run's metadata."""
        saved_config, saved_world = saved
        if not saved_config:
            return
        c = self.config
        allowed = runfiles.parse_allowed(getattr(c, 'allow_changes', None))
        try:
            self.accepted_changes = runfiles.check_resume_config(
                saved_config, saved_world, vars(c), world_size(), allowed)
        except ConfigError as e:
            raise ConfigError(f'{e} [saved in {path}]') from None

    def save_checkpoint(self, iters, sampler, pairs_done):
        """G/D in the original format and the training state, written as one set (rank 0
        only; every rank calls): runfiles.save_checkpoint_set."""
        average_buffers(self.G)  # several ranks: the global batch's running statistics
        if is_main():
            files = {f'{iters}-G.ckpt': self.G.state_dict(), f'{iters}-D.ckpt': self.D.state_dict()}
            if self.G_ema is not None:
                files[f'{iters}-G_ema.ckpt'] = self.G_ema.state_dict()
            files[f'{iters}-state.pt'] = self.training_state(iters, sampler, pairs_done)
            runfiles.save_checkpoint_set(files, self.config.model_save_dir, iters)
            self.prune_states()
        barrier()

    def train(self):
        """Train HealthyGAN on (mixed, healthy) pairs."""
        c = self.config
        for d in (c.model_save_dir, c.sample_dir, c.log_dir):
            os.makedirs(d, exist_ok=True)
        loader = data_loader.get_loader(c, 'train', self.split, self.device)
        sampler = loader.sampler
        n_pairs = len(loader.dataset)
        if n_pairs < c.batch_size:  # the batch would silently be cut to the data
            raise ConfigError(f'--batch_size {c.batch_size} is larger than the {n_pairs} training '
                              f'pairs; lower --batch_size to {n_pairs} or less')
        # Fixed samples for the grids: the first batch of the first epoch.
        fixed = [loader.dataset[k] for k in sampler.order(0)[:c.batch_size]]
        x_fixed_A = torch.stack([a for a, _ in fixed]).to(self.device)
        x_fixed_B = torch.stack([b for _, b in fixed]).to(self.device)

        # Position in the epoch's order, in pairs of the global batch (all ranks together), so
        # that a run can resume with another number of ranks.
        start_iters, pairs_done = 0, 0
        self.accepted_changes = {}
        if c.resume_iters is not None:
            start_iters = resolve_iters(c.resume_iters, c.model_save_dir, '--resume_iters')
            # read-only on every rank (all stop together); only rank 0 moves files aside
            runfiles.check_resume_point(c.model_save_dir, start_iters, c.num_iters,
                                        getattr(c, 'overwrite', False), move=is_main())
            self.restore_model(start_iters)
            self.restore_ema(start_iters)
            state = self.load_training_state(start_iters)
            if state is not None:
                # States written before 'data_pairs_done' existed count one-process batches.
                sampler.epoch, pairs_done = state['data_epoch'], state.get(
                    'data_pairs_done', state.get('data_batches_done', 0) * c.batch_size)
        sampler.start = pairs_done
        data_iter = iter(loader)
        # Several ranks: same weights and same RNG state (the GP's alphas) everywhere.
        broadcast_params(self.G, self.D)
        sync_rng_state(self.device)

        main_rank = is_main()  # only rank 0 writes logs, samples and checkpoints
        if c.use_tensorboard and main_rank:
            from logger import Logger
            self.logger = Logger(c.log_dir)
        from logger import JsonlLogger
        stats = JsonlLogger(os.path.join(c.log_dir, 'stats.jsonl'))
        if main_rank:  # a torn last line (a kill, a full disk) is cut before appending
            runfiles.repair_jsonl(stats.path)
            runfiles.repair_jsonl(os.path.join(c.model_save_dir, AUCP_LOG))
        # A resumed run keeps the first run's record and adds its own beside it.
        self.metadata = run_metadata(c)
        self.metadata['world_size'] = world_size()  # processes; --batch_size is per process
        if self.accepted_changes:  # --allow_changes: {flag: [saved, now]}
            self.metadata['accepted_changes'] = self.accepted_changes
        name = 'run_config.json' if start_iters == 0 else f'run_config-resume{start_iters}.json'
        if main_rank:
            with open(os.path.join(c.model_save_dir, name), 'w') as f:
                json.dump(self.metadata, f, indent=1)

        if main_rank:  # the 'lung' score's region, saved so that testing needs no training image
            self.save_lung_prior()
        holdout = self.load_holdout() if main_rank else None  # only rank 0 scores it
        print(f'G: {count_parameters(self.G):,} parameters; D: {count_parameters(self.D):,}; '
              f'{len(loader.dataset)} pairs an epoch; device {self.device}')
        if dist.is_initialized():
            print(f'{world_size()} processes ({dist.get_backend()}), --batch_size {c.batch_size} '
                  f'each: global batch {world_size() * c.batch_size}')
        print('Start training...')
        start_time = time.time()
        stop = StopFlag()
        bar = tqdm(range(start_iters, c.num_iters), initial=start_iters, total=c.num_iters,
                   dynamic_ncols=True, mininterval=1.0, file=sys.stdout)
        loss, last_saved = {}, start_iters
        with stop.catching(signal.SIGINT, signal.SIGTERM):
            for i in bar:
                # =============================================================================== #
                #                           1. Preprocess input data                              #
                # =============================================================================== #
                try:
                    x_A, x_B = next(data_iter)
                except StopIteration:  # the epoch is over: reshuffle
                    sampler.epoch, sampler.start, pairs_done = sampler.epoch + 1, 0, 0
                    data_iter = iter(loader)
                    x_A, x_B = next(data_iter)
                pairs_done += x_A.size(0) * world_size()  # every rank's batch has this size
                x_A = x_A.to(self.device, non_blocking=True)  # mixed (unannotated)
                x_B = x_B.to(self.device, non_blocking=True)  # healthy

                # The original restarts at lr0 on resume; computing the rate from i keeps a
                # resumed run on the schedule it would have followed.
                g_lr = learning_rate(i, c.g_lr, c.num_iters, c.num_iters_decay,
                                     c.lr_update_step, c.lr_schedule)
                d_lr = learning_rate(i, c.d_lr, c.num_iters, c.num_iters_decay,
                                     c.lr_update_step, c.lr_schedule)
                self.set_lr(g_lr, d_lr)

                # =============================================================================== #
                #                           2. Train the discriminator                            #
                # =============================================================================== #
                step_loss = self.d_step(x_A, x_B, keep_fake=(i + 1) % c.n_critic == 0)

                # =============================================================================== #
                #                             3. Train the generator                              #
                # =============================================================================== #
                if (i + 1) % c.n_critic == 0:
                    step_loss.update(self.g_step(x_A, x_B))
                    if self.G_ema is not None:
                        update_ema(self.G_ema, self.G,
                                   ema_decay(c.g_ema_decay, (i + 1) // c.n_critic))

                # =============================================================================== #
                #                               4. Miscellaneous                                  #
                # =============================================================================== #
                # Non-finite losses are checked (one device sync) only where something is about
                # to be logged or written, so no NaN reaches a file and the loop does not wait.
                if (i + 1) % c.log_step == 0 or (i + 1) % c.sample_step == 0 \
                        or (i + 1) % c.model_save_step == 0:
                    step_loss = all_reduce_mean(step_loss)  # ranks: all see (and stop on) a NaN
                    bad = nonfinite_terms(step_loss) + self.nonfinite_weights()
                    if bad:
                        raise NonFiniteLossError(
                            f'non-finite {", ".join(bad)} at iteration {i + 1} (first seen within '
                            f'the last {c.log_step} iterations). Nothing was saved after it; '
                            f'{last_good(last_saved, c.model_save_dir)}. Try lower learning '
                            f'rates (--g_lr, --d_lr).')
                loss.update(step_loss)
                if (i + 1) % c.log_step == 0 or (i + 1) % c.sample_step == 0:
                    loss = all_reduce_mean(loss)  # several ranks: log the mean over ranks

                # Loss values are fetched from the device only here, so the loop does not wait.
                if (i + 1) % c.log_step == 0:
                    values = {tag: float(v) for tag, v in loss.items()}
                    bar.set_postfix({k.replace('/loss', ''): f'{values[k]:.3f}' for k in
                                     ('D/loss_real', 'D/loss_fake', 'D/loss_gp', 'G/loss_fake',
                                      'G/loss_id', 'G/loss_rec', 'G/loss_mask') if k in values},
                                    refresh=False)
                    if main_rank:
                        stats.write({'iter': i + 1, 'time': round(time.time() - start_time, 3),
                                     'g_lr': g_lr, 'd_lr': d_lr, **values})
                    if self.logger:
                        for tag, value in values.items():
                            self.logger.scalar_summary(tag, value, i + 1)

                if (i + 1) % c.sample_step == 0 and main_rank:
                    with torch.no_grad():
                        grid = translation_grid(self.G, x_fixed_A, x_fixed_B)
                    path = os.path.join(c.sample_dir, f'{i + 1}-images.jpg')
                    save_image(denorm(grid.cpu()), path, nrow=1, padding=0)
                    elapsed = str(datetime.timedelta(seconds=int(time.time() - start_time)))
                    log = f'Elapsed [{elapsed}], Iteration [{i + 1}/{c.num_iters}]'
                    log += ''.join(f', {tag}: {float(v):.4f}' for tag, v in loss.items())
                    tqdm.write(log + f'\nSaved real and fake images into {path}...',
                               file=sys.stdout)

                if (i + 1) % c.model_save_step == 0:
                    self.save_checkpoint(i + 1, sampler, pairs_done)
                    last_saved = i + 1
                    tqdm.write(f'Saved model checkpoints into {c.model_save_dir}...',
                               file=sys.stdout)
                    if main_rank:  # only rank 0 writes
                        self.log_aucp(i + 1, holdout)

                stopping = stop.signal is not None
                if dist.is_initialized():  # all ranks stop at the same iteration, agreed at log
                    # steps only (one tiny all_reduce), so a signal takes up to log_step steps.
                    stopping = (i + 1) % c.log_step == 0 and any_rank(stopping, self.device)
                if stopping:
                    # Interrupted: keep the work done so far, then exit.
                    bar.close()
                    if nonfinite_terms(step_loss) + self.nonfinite_weights():
                        raise NonFiniteLossError(f'interrupted at iteration {i + 1} with '
                                                 f'non-finite losses; nothing saved')
                    if last_saved != i + 1:
                        self.save_checkpoint(i + 1, sampler, pairs_done)
                    stop.signal = stop.signal or signal.SIGTERM  # a rank told by another one
                    print(f'\nInterrupted by {signal.Signals(stop.signal).name} at iteration '
                          f'{i + 1}; saved {i + 1}-G.ckpt, {i + 1}-D.ckpt and {i + 1}-state.pt '
                          f'in {c.model_save_dir}. Resume with the same flags plus '
                          f'--resume_iters {i + 1} (or latest).')
                    raise SystemExit(128 + stop.signal)
        bar.close()

        # Unlike the original, always keep the final weights, even when num_iters is not a
        # multiple of model_save_step.
        if c.num_iters > last_saved:
            self.save_checkpoint(c.num_iters, sampler, pairs_done)
            print(f'Saved final model checkpoints ({c.num_iters}) into {c.model_save_dir}...')
            if main_rank:  # only rank 0 writes
                self.log_aucp(c.num_iters, holdout)
        if self.logger:
            self.logger.close()
        print(f'Training finished in {time.time() - start_time:.1f} s.')

    def restore_ema(self, iters):
        """Continue the average of a resumed run from <iters>-G_ema.ckpt (or from G)."""
        path = os.path.join(self.config.model_save_dir, f'{iters}-G_ema.ckpt')
        if self.G_ema is not None and os.path.exists(path):
            load_state_dict_checked(self.G_ema, path, 'Generator')
        elif self.G_ema is not None:
            self.G_ema.load_state_dict(self.G.state_dict())

    def load_holdout(self):
        """The held-out healthy and mixed images as two CPU tensors (None when none held out)."""
        split = self.split or data_loader.resolve_split(self.config, 'train')
        if not split.get('holdout_healthy') or not split.get('holdout_mixed'):
            print('AUCp: no held-out images (--holdout_fraction 0 or sets too small): '
                  'checkpoints are not scored')
            return None
        loader = data_loader.get_loader(self.config, 'holdout', split)
        x, labels = [], []
        for batch, label, _ in loader:
            x.append(batch.cpu())
            labels.append(label.cpu())
        x, labels = torch.cat(x), torch.cat(labels)
        print(f'AUCp: {int((labels == 0).sum())} healthy and {int((labels == 1).sum())} mixed '
              f'images held out of training')
        return x[labels == 0], x[labels == 1]

    def lung_region(self):
        """The 'lung' score's region, or None (then self.lung_note says why it is left out).

        Training computes it (metrics.lung_prior of the mean healthy training image) and saves
        it beside the checkpoints; testing reads it from there, so that, as in the original,
        testing needs no training image. Only where --score_variant lung asks for it and no
        saved prior exists is it computed from the training images, when they are at hand.
        """
        if not hasattr(self, '_lung_region'):
            self.lung_note = None
            prior = self.read_lung_prior()
            if prior is None and self.config.score_variant == 'lung':
                prior = self.compute_lung_prior(required=True)
            self._lung_region = None if prior is None else prior.to(self.device)
        return self._lung_region

    def lung_prior_path(self):
        return os.path.join(self.config.model_save_dir, LUNG_PRIOR_FILE)

    def read_lung_prior(self):
        """The prior saved with the run at this --image_size, else None and a note."""
        path = self.lung_prior_path()
        if not os.path.exists(path):
            self.lung_note = (f'left out: {path} not found (training saves it; runs trained '
                              f'elsewhere, e.g. the released checkpoint, have none)')
            return None
        saved = load_checked(path, 'lung prior')
        if saved.get('image_size') != self.config.image_size:
            self.lung_note = (f'left out: {path} was made at {saved.get("image_size")} px, '
                              f'testing is at --image_size {self.config.image_size}')
            return None
        return saved['prior'].float()[None, None]

    def compute_lung_prior(self, required=False):
        """metrics.lung_prior of the mean healthy training image ([1, 1, H, W], CPU)."""
        try:
            split = self.split if self.split and self.split.get('healthy') else \
                data_loader.resolve_split(self.config, 'train')
        except data_loader.DataError as e:
            if not required:
                raise
            raise ConfigError(f'--score_variant lung needs the lung prior: '
                              f'{self.lung_prior_path()} is missing and the healthy training '
                              f'images cannot be read ({e}); choose another --score_variant') \
                from None
        # read from the training set's cache (training builds it; no second decode)
        mean = data_loader.mean_image(split['healthy'], self.config,
                                      among=split['mixed'] + split['healthy'])
        return metrics.lung_prior(mean)

    def save_lung_prior(self):
        """Compute the lung prior from this run's healthy training images and save it with
        the run (rank 0 writes; every rank keeps it for scoring)."""
        prior = self.compute_lung_prior()
        if is_main():
            save_atomic({'prior': prior[0, 0].bool(), 'image_size': self.config.image_size},
                        self.lung_prior_path())
        self._lung_region, self.lung_note = prior.to(self.device), None

    @torch.no_grad()
    def score_images(self, x, G=None):
        """Every score variant (metrics.SCORE_VARIANTS) of each image in a CPU tensor: {name: [N]}."""
        G = G or self.G
        G.train()  # per-image InstanceNorm statistics, as in testing (see translate)
        # Training-mode forwards move InstanceNorm's running statistics; put them back so that
        # scoring leaves the run exactly as it was (and a resumed run equal to an unbroken one).
        buffers = [b.clone() for b in G.buffers()]
        scores = {}
        for batch in torch.split(x, self.config.batch_size):
            batch = batch.to(self.device)
            x_hat, _, mask = generate(G, batch)
            for name, s in metrics.score_variants(batch, x_hat, mask,
                                                  self.lung_region()).items():
                scores.setdefault(name, []).append(s.cpu())
        for b, saved in zip(G.buffers(), buffers):
            b.copy_(saved)
        return {name: torch.cat(s) for name, s in scores.items()}

    def holdout_aucp(self, holdout, G=None):
        """AUCp of every score variant on the held-out images: {name: value}."""
        x_healthy, x_mixed = holdout
        s_healthy, s_mixed = self.score_images(x_healthy, G), self.score_images(x_mixed, G)
        labels = [0] * len(x_healthy) + [1] * len(x_mixed)
        return {name: metrics.aucp(labels, metrics.to_numpy(torch.cat([s_healthy[name],
                                                                       s_mixed[name]])))
                for name in s_healthy}

    def log_aucp(self, iters, holdout):
        """AUCp (healthy held-out = 0, mixed held-out = 1) of the current G, to TB and aucp.jsonl.

        'AUCp' uses --score_variant (the score testAUC reports first); every variant's AUCp is
        recorded too, so a score can also be chosen without labels.
        Added: the label-free checkpoint selection of the authors' later work (see ORIGINAL.md).
        """
        if holdout is None:
            return None
        variant = getattr(self.config, 'score_variant', 'mean')
        by_variant = self.holdout_aucp(holdout)
        value = by_variant[variant]
        record = {'iter': iters, 'AUCp': value, 'score_variant': variant,
                  'n_healthy': len(holdout[0]), 'n_mixed': len(holdout[1]),
                  'AUCp_by_variant': by_variant}
        if self.G_ema is not None:  # the averaged generator, which --test_ema true tests
            ema_by_variant = self.holdout_aucp(holdout, self.G_ema)
            record['AUCp_ema'] = ema_by_variant[variant]
            record['AUCp_ema_by_variant'] = ema_by_variant
        with open(os.path.join(self.config.model_save_dir, AUCP_LOG), 'a') as f:
            f.write(json.dumps(record) + '\n')
        if self.logger:
            self.logger.scalar_summary('AUCp', value, iters)
            if 'AUCp_ema' in record:
                self.logger.scalar_summary('AUCp_ema', record['AUCp_ema'], iters)
        tqdm.write(f'AUCp at iteration {iters}: {value:.4f}' + (
            f' (averaged G: {record["AUCp_ema"]:.4f})' if 'AUCp_ema' in record else '') +
            ' [' + ', '.join(f'{k} {v:.3f}' for k, v in by_variant.items()) + ']',
            file=sys.stdout)
        return value

    def nonfinite_weights(self):
        """['G weights'] / ['D weights'] where a parameter is NaN or infinite."""
        bad = []
        for name, net in (('G', self.G), ('D', self.D)):
            if not torch.stack([torch.isfinite(p).all() for p in net.parameters()]).all():
                bad.append(f'{name} weights')
        return bad

    # ------------------------------------------------------------------------------------------ #
    #                                          Testing                                             #
    # ------------------------------------------------------------------------------------------ #

    def translate(self, x):
        """x_hat, x_raw, mask for a test batch.

        Faithful to the original, G stays in training mode: InstanceNorm normalises every image
        with its own statistics and the running statistics stored in the checkpoint are never
        used (calling eval() would change the released model's scores). Runs under
        inference_mode (the original: no_grad; same values) with the --amp / --channels_last /
        --compile fast paths the flags ask for.
        """
        self.G.train()
        with torch.inference_mode():
            x_hat, x_raw, mask, _ = generate_amp(self.G_run, self.to_layout(x), self.amp_dtype)
        return x_hat, x_raw, mask

    def load_for_test(self):
        """Resolve --test_iters and load G (D is not needed to test); --test_ema: its average."""
        c = self.config
        ema = getattr(c, 'test_ema', False)
        iters = resolve_iters(c.test_iters, c.model_save_dir, '--test_iters', ema,
                              getattr(c, 'score_variant', 'mean'))
        members = ensemble_members(c.model_save_dir, iters, getattr(c, 'ensemble', 1), ema)
        self.ensemble_states = []
        for member in members:  # the tested checkpoint last, so that it stays loaded
            self.load_generator(member, ema)
            if len(members) > 1:
                self.ensemble_states.append({k: v.clone() for k, v in self.G.state_dict().items()})
        self.ensemble_iters = members
        if len(members) > 1:
            print(f'Snapshot ensemble of {len(members)} checkpoints: {members}')
        return iters

    def load_generator(self, iters, ema=False):
        """Load <iters>-G.ckpt, or with ema its average <iters>-G_ema.ckpt, into G."""
        if ema:
            path = os.path.join(self.config.model_save_dir, f'{iters}-G_ema.ckpt')
            if not os.path.exists(path):
                raise CheckpointError(f'--test_ema true: {path} does not exist (train with '
                                      f'--g_ema_decay > 0 to write it)')
            print(f'Loading the averaged generator {path}...')
            load_state_dict_checked(self.G, path, 'Generator')
        else:
            self.restore_model(iters, load_D=False)

    def translate_scored(self, x, region=None):
        """(x_hat, mask, anomaly map [N,1,H,W], {variant: score [N]}) for a test batch.

        With a snapshot ensemble (--ensemble N > 1) the map and every score are the means over
        the N checkpoints' translations; x_hat and mask are the tested (last) checkpoint's.
        """
        states = self.ensemble_states or [None]
        amap, variants = 0, {}
        for state in states:
            if state is not None:
                self.G.load_state_dict(state)
            x_hat, _, mask = self.translate(x)
            amap = amap + metrics.anomaly_map(x, x_hat)
            for v, s in metrics.score_variants(x, x_hat, mask, region).items():
                variants[v] = variants.get(v, 0) + s
        n = len(states)
        return x_hat, mask, amap / n, {v: s / n for v, s in variants.items()}

    def test(self):
        """Write translation grids (input, raw, blended, mask for a mixed and a healthy image)."""
        c = self.config
        iters = self.load_for_test()
        os.makedirs(c.result_dir, exist_ok=True)
        loader = data_loader.get_loader(c, 'test', self.split, self.device)
        for k, (x_A, x_B) in enumerate(tqdm(loader, desc='test', file=sys.stdout)):
            self.G.train()
            with torch.no_grad():
                grid = translation_grid(self.G, x_A.to(self.device), x_B.to(self.device))
            path = os.path.join(c.result_dir, f'{iters}-{k + 1}-images.jpg')
            save_image(denorm(grid.cpu()), path, nrow=1, padding=0)
        print(f'Saved translated images into {c.result_dir}...')

    # ------------------------------------------------------------------------------------------ #
    #               Evaluation (added): score variants, maps, thresholds, pictures                 #
    # ------------------------------------------------------------------------------------------ #

    @torch.no_grad()
    def score_pass(self, loader, names=None, map_dir=None, keep_maps=(), desc='scoring'):
        """One translation pass over a loader of (images, labels, indices[, errors]) batches.

        Returns ({variant: float array [n]}, {index: anomaly map} for the indices in keep_maps,
        {index: error} for unreadable images). With map_dir, each image's anomaly map is
        written to map_dir/<names[index]> as a 16-bit PNG.
        """
        import numpy as np
        import report
        n = len(loader.dataset)
        region = self.lung_region()
        scores = {v: np.full(n, np.nan) for v in metrics.SCORE_VARIANTS
                  if v != 'lung' or region is not None}
        kept, errors = {}, {}
        for batch in tqdm(loader, desc=desc, file=sys.stdout):
            x, index = batch[0].to(self.device), batch[2].tolist()
            bad = batch[3] if len(batch) > 3 else [''] * len(index)
            _, _, amap, variants = self.translate_scored(x, region)
            variants = {v: metrics.to_numpy(s) for v, s in variants.items()}
            amap = metrics.to_numpy(amap)[:, 0].astype(np.float32)
            for j, k in enumerate(index):
                if bad[j]:
                    errors[k] = bad[j]
                    continue
                for v, s in variants.items():
                    scores[v][k] = s[j]
                if map_dir is not None:
                    report.save_map(amap[j], os.path.join(map_dir, names[k]))
                if k in keep_maps:
                    kept[k] = amap[j]
        return scores, kept, errors

    def validation_set(self, test_paths=()):
        """(paths, labels, description) of the validation images, or None.

        --val_dir DIR, else (Folder layout) <image_dir>/val when it exists: normal/ and
        anomalous/ below it, as in test/.
        """
        c = self.config
        where = c.val_dir
        if not where and c.dataset == 'Folder' and os.path.isdir(os.path.join(c.image_dir, 'val')):
            where = os.path.join(c.image_dir, 'val')
        if not where:
            return None
        if not os.path.isdir(where):
            raise data_loader.DataError(f'--val_dir {where} does not exist; it should hold '
                                        f'normal/ and anomalous/ (as test/ does)')
        normal = data_loader.list_images(os.path.join(where, 'normal'))
        anomalous = data_loader.list_images(os.path.join(where, 'anomalous'))
        # the same files by path (links resolved) or by content (a copy of the test set)
        shared = {os.path.realpath(p) for p in normal + anomalous} & \
            {os.path.realpath(p) for p in test_paths}
        shared = sorted(shared) or [a for a, _ in data_loader.same_content(normal + anomalous,
                                                                         list(test_paths))]
        if shared:
            raise ConfigError(f'{len(set(shared))} validation images in {where} are also test '
                              f'images (e.g. {shared[0]}, same path or same content): a '
                              f'threshold chosen on them is not independent of the test set; '
                              f'use a disjoint --val_dir')
        return normal + anomalous, [0] * len(normal) + [1] * len(anomalous), where

    def validation_thresholds(self, val):
        """The original's threshold rule applied to the validation scores of every variant."""
        paths, labels, where = val
        loader = data_loader.folder_loader(self.config, paths, labels)
        scores, _, errors = self.score_pass(loader, desc='validation')
        if errors:
            raise data_loader.DataError(
                f'{len(errors)} validation images cannot be read, e.g. '
                f'{next(iter(errors.values()))}; remove them from {where}')
        n_normal, n_anomalous = labels.count(0), labels.count(1)
        source = (f"validation set {where} ({n_normal} normal, {n_anomalous} anomalous; the "
                  f"original's rule, |TPR - (1 - FPR)| minimal, applied to it)")
        thresholds = {v: metrics.original_threshold(labels, s)[0] for v, s in scores.items()}
        info = {'dir': where, 'n_normal': n_normal, 'n_anomalous': n_anomalous,
                'image_AUROC': {v: metrics.image_metrics(labels, s)['image_AUROC']
                                for v, s in scores.items()}}
        return thresholds, source, info

    def draw_panels(self, dataset, indices, names, panel_dir, vmax, gt_masks=None, captions=None):
        """Per-image panels (input, translation, mask, map; true lesion where known) as PNGs.

        A second, short translation pass over these images only: the scores come from the
        first pass, and the colour scale vmax needs every map first.
        """
        import report
        gt_masks, captions = gt_masks or {}, captions or {}
        indices = list(indices)
        for a in tqdm(range(0, len(indices), self.config.batch_size), desc='pictures',
                      file=sys.stdout, disable=len(indices) < 50):
            chunk = indices[a:a + self.config.batch_size]
            x = torch.stack([dataset[k][0] for k in chunk]).to(self.device)
            x_hat, mask, amap, _ = self.translate_scored(x)
            x, x_hat = metrics.to_numpy(x), metrics.to_numpy(x_hat)
            mask, amap = metrics.to_numpy(mask)[:, 0], metrics.to_numpy(amap)[:, 0]
            for j, k in enumerate(chunk):
                path = os.path.join(panel_dir, names[k])
                os.makedirs(os.path.dirname(path), exist_ok=True)
                report.panel(x[j], x_hat[j], mask[j], amap[j], vmax, gt_masks.get(k),
                             captions.get(k, '')).save(path)

    def ensemble_record(self):
        """{'ensemble': the members' files} for metrics.json / summary.json; {} for one checkpoint."""
        if len(self.ensemble_iters) > 1:
            return {'ensemble': [self.checkpoint_path(i) for i in self.ensemble_iters]}
        return {}

    def checkpoint_path(self, iters):
        """The generator file that was tested (the averaged one with --test_ema true)."""
        ema = getattr(self.config, 'test_ema', False)
        return os.path.join(self.config.model_save_dir, f'{iters}-G{"_ema" if ema else ""}.ckpt')

    def test_auc(self):
        """Score every test image with every score variant; AUROC (bootstrap CI), AUPRC and the
        operating point's metrics, pixel metrics where lesion masks exist; scores.csv, the maps,
        metrics.json and (--report true) pictures and report.html in result_dir."""
        import numpy as np
        c = self.config
        self.lung_region()  # --score_variant lung without a prior: one line, before work
        iters = self.load_for_test()
        os.makedirs(c.result_dir, exist_ok=True)
        loader = data_loader.get_loader(c, 'testAUC', self.split, self.device)
        dataset = loader.dataset
        paths, labels = list(dataset.paths), np.asarray(dataset.labels, dtype=int)
        import report
        names = report.output_names(paths)
        # Ground-truth lesion masks (synthetic.py's layout): a normal image's truth is empty.
        gt_masks = {}
        for k, p in enumerate(paths):
            found = data_loader.find_mask(p, c.image_dir)
            if found:
                gt_masks[k] = data_loader.load_mask(found, p, c.image_size)
        pixel_keys = set()
        if any(labels[k] == 1 for k in gt_masks):
            pixel_keys = set(gt_masks) | {k for k in range(len(paths)) if labels[k] == 0}

        val = self.validation_set(paths)
        scores, maps, _ = self.score_pass(loader, names, os.path.join(c.result_dir, 'maps'),
                                          pixel_keys, desc='testAUC')
        thresholds, source, val_info = (self.validation_thresholds(val) if val
                                        else ({}, None, None))
        variants = {}
        for v, s in scores.items():
            r = metrics.image_metrics(labels, s, thresholds.get(v), source, c.bootstrap,
                                      c.bootstrap_seed)
            variants[v] = {'description': metrics.SCORE_VARIANTS[v], **r}
        result = dict(variants[c.score_variant])
        del result['description']
        result.update({'checkpoint': self.checkpoint_path(iters), 'iteration': iters,
                       'score': metrics.SCORE_VARIANTS[c.score_variant],
                       'score_variant': c.score_variant, 'image_size': c.image_size,
                       'bootstrap': {'n': c.bootstrap, 'seed': c.bootstrap_seed,
                                     'method': 'percentile, stratified by class'}})
        result.update(self.ensemble_record())
        if val_info:
            result['validation'] = val_info
        if self.lung_note:
            result['notes'] = {'lung': self.lung_note}
        if pixel_keys:
            keys = sorted(pixel_keys)
            empty = np.zeros((c.image_size, c.image_size), bool)
            result.update(metrics.pixel_metrics([gt_masks.get(k, empty) for k in keys],
                                                [maps[k] for k in keys]))
            result['pixel_map'] = 'anomaly_map |x - x_hat| / 2; normal images count as lesion-free'
        result['variants'] = {v: {key: r[key] for key in (
            'description', 'image_AUROC', 'image_AUROC_ci95', 'image_AUPRC', 'threshold',
            'sensitivity', 'specificity', 'accuracy', 'F1') if key in r}
            for v, r in variants.items()}

        selected = scores[c.score_variant]
        pred = (selected >= result['threshold']).astype(int)
        with open(os.path.join(c.result_dir, 'scores.csv'), 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['path', 'gt_label', 'pred_score', 'anomaly_map', 'pred_label']
                       + [f'score_{v}' for v in scores])
            for k, path in enumerate(paths):
                w.writerow([path, int(labels[k]), f'{selected[k]:.8f}',
                            os.path.join('maps', names[k]), pred[k]]
                           + [f'{scores[v][k]:.8f}' for v in scores])
        if c.report:
            result['report'] = 'report.html'
        with open(os.path.join(c.result_dir, 'metrics.json'), 'w') as f:
            json.dump(result, f, indent=1)
        if c.report:
            self.write_test_report(result, scores, labels, names, dataset, gt_masks, iters)

        ci = result.get('image_AUROC_ci95')
        print(f"AUC: {result['image_AUROC']:.4f}  sensitivity: {result['sensitivity']:.4f}  "
              f"specificity: {result['specificity']:.4f}  (threshold {result['threshold']:.6f}, "
              f"{result['threshold_source']}; {result['n_normal']} normal, "
              f"{result['n_anomalous']} anomalous)")
        print(f'score {c.score_variant}' + (f'; AUROC 95% CI {ci[0]:.4f} - {ci[1]:.4f}' if ci
                                            else '')
              + f"; AUPRC {result['image_AUPRC']:.4f}; accuracy {result['accuracy']:.4f}; "
                f"F1 {result['F1']:.4f}")
        print('variants: ' + ', '.join(f"{v} {r['image_AUROC']:.4f}"
                                       for v, r in result['variants'].items()))
        if 'pixel_AUROC' in result:
            print(f"pixel AUROC {result['pixel_AUROC']:.4f}; Dice {result['pixel_Dice']:.4f} "
                  f"({result['pixel_threshold_source']})")
        print('Saved metrics.json, scores.csv and maps/' + (', pictures and report.html'
                                                            if c.report else '')
              + f' into {c.result_dir}')
        return result

    testAUC = test_auc  # the original's name for the mode

    def picture_indices(self, n, order_groups):
        """The first --num_maps images (-1: all) plus the report's examples."""
        first = range(n) if self.config.num_maps < 0 else range(min(self.config.num_maps, n))
        return sorted(set(first) | {k for _, ks in order_groups for k in ks})

    def write_test_report(self, result, scores, labels, names, dataset, gt_masks, iters):
        """Panels, ROC curve, histograms and report.html of a testAUC run."""
        import numpy as np
        import report
        c = self.config
        selected = scores[c.score_variant]
        plots = os.path.join(c.result_dir, 'plots')
        os.makedirs(plots, exist_ok=True)
        report.plot_roc(labels, scores, c.score_variant, result['threshold'],
                        os.path.join(plots, 'roc.png'),
                        {v: r['image_AUROC'] for v, r in result['variants'].items()})
        report.plot_histogram(selected, os.path.join(plots, 'score_histogram.png'), labels,
                              result['threshold'], f'anomaly score ({c.score_variant})')
        groups = []
        for label, name in ((1, 'anomalous'), (0, 'normal')):
            ks = np.flatnonzero(labels == label)
            order = ks[np.argsort(-selected[ks], kind='stable')]
            groups.append((f'{name}: most anomalous', order[:report.N_EXAMPLES].tolist()))
            groups.append((f'{name}: least anomalous', order[::-1][:report.N_EXAMPLES].tolist()))
        captions = {k: f'{os.path.basename(dataset.paths[k])}  label '
                       f'{"anomalous" if labels[k] else "normal"}  score {selected[k]:.5f}'
                    for k in range(len(labels))}
        vmax = max(float(np.nanmax(scores['p99'])), 1e-6)
        self.draw_panels(dataset, self.picture_indices(len(labels), groups), names,
                         os.path.join(c.result_dir, 'panels'), vmax, gt_masks, captions)
        examples = [(title, [(f'panels/{names[k]}', f'#{rank + 1}: {captions[k]}')
                             for rank, k in enumerate(ks)]) for title, ks in groups]
        body = (report.metrics_html(result)
                + '\n<h2>Plots</h2><div class="plots"><img src="plots/roc.png" alt="ROC">'
                  '<img src="plots/score_histogram.png" alt="histogram"></div>'
                + f'\n<h2>Examples</h2><p class="note">Columns: input, translation, G\'s mask, '
                  f'the anomaly map |x - x_hat| / 2 over the input (colours from 0 to {vmax:.4g}, '
                  f'the largest 99th percentile of any map in this run), and the true lesion '
                  f'where a mask exists. Ranked by the {c.score_variant} score.</p>\n'
                + report.examples_html(examples)
                + '\n<p class="note">Files: <a href="metrics.json">metrics.json</a>, '
                  '<a href="scores.csv">scores.csv</a> (one row per image, with its map in '
                  'maps/ and, for the first --num_maps images, its panel in panels/).</p>')
        info = {'checkpoint': result['checkpoint'], 'iteration': iters,
                'image size': c.image_size, 'test images': len(labels),
                'score variant': f"{c.score_variant}: {result['score']}",
                'threshold source': result['threshold_source'],
                'written': datetime.datetime.now().isoformat(timespec='seconds')}
        report.write_html(os.path.join(c.result_dir, 'report.html'), 'HealthyGAN test report',
                          info, body)

    def score_folder(self):
        """Score every image below --score_dir (recursively, any supported format), unlabelled.

        Writes scores.csv (one row per image: path, pred_score, map file, every variant; a
        predicted label when --val_dir gives a threshold), maps/, summary.json and, with
        --report true, panels and report.html into result_dir.
        """
        import numpy as np
        import report
        c = self.config
        if not c.score_dir:
            raise ConfigError('--mode score needs --score_dir DIR, the folder of images to score')
        if not os.path.isdir(c.score_dir):
            raise data_loader.DataError(f'--score_dir {c.score_dir} does not exist')
        # A result_dir inside score_dir must not have its own maps and panels scored.
        results = os.path.abspath(c.result_dir) + os.sep
        paths = [p for p in data_loader.list_images(c.score_dir)
                 if not os.path.abspath(p).startswith(results)]
        if not paths:
            raise data_loader.DataError(f'no images in --score_dir {c.score_dir} outside '
                                        f'--result_dir {c.result_dir}')
        self.lung_region()  # --score_variant lung without a prior: one line, before work
        iters = self.load_for_test()
        os.makedirs(c.result_dir, exist_ok=True)
        names = report.output_names(paths, root=c.score_dir)
        val = self.validation_set()
        loader = data_loader.folder_loader(c, paths)
        scores, _, errors = self.score_pass(loader, names, os.path.join(c.result_dir, 'maps'),
                                            desc='score')
        thresholds, source, val_info = (self.validation_thresholds(val) if val
                                        else ({}, None, None))
        ok = [k for k in range(len(paths)) if k not in errors]
        selected = scores[c.score_variant]
        threshold = thresholds.get(c.score_variant)
        header = ['path', 'pred_score', 'anomaly_map'] + (['pred_label'] if val else []) \
            + [f'score_{v}' for v in scores]
        with open(os.path.join(c.result_dir, 'scores.csv'), 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(header)
            for k in ok:
                w.writerow([paths[k], f'{selected[k]:.8f}', os.path.join('maps', names[k])]
                           + ([int(selected[k] >= threshold)] if val else [])
                           + [f'{scores[v][k]:.8f}' for v in scores])
        summary = {'checkpoint': self.checkpoint_path(iters), 'iteration': iters,
                   'score_dir': c.score_dir, 'image_size': c.image_size,
                   'score_variant': c.score_variant, 'score': metrics.SCORE_VARIANTS[c.score_variant],
                   'n_images': len(ok), 'unreadable': {paths[k]: e for k, e in errors.items()}}
        summary.update(self.ensemble_record())
        if self.lung_note:
            summary['notes'] = {'lung': self.lung_note}
        if ok:
            s = selected[ok]
            summary['pred_score'] = {'mean': float(s.mean()), 'min': float(s.min()),
                                     'median': float(np.median(s)), 'max': float(s.max())}
        if val:
            summary.update({'threshold': threshold, 'threshold_source': source,
                            'validation': val_info,
                            'n_pred_anomalous': int((selected[ok] >= threshold).sum())})
        with open(os.path.join(c.result_dir, 'summary.json'), 'w') as f:
            json.dump(summary, f, indent=1)
        if errors:
            print(f'warning: {len(errors)} images could not be read and were left out (listed '
                  f'in summary.json), e.g. {next(iter(errors.values()))}')
        if c.report and ok:
            self.write_score_report(summary, scores, ok, paths, names, loader.dataset, iters)
        print(f'Scored {len(ok)} images in {c.score_dir} ({c.score_variant}: median '
              f'{summary["pred_score"]["median"]:.6f})' if ok else 'No image could be scored')
        print('Saved scores.csv, maps/ and summary.json' + (' and report.html' if c.report
                                                              else '') + f' into {c.result_dir}')
        return summary

    def write_score_report(self, summary, scores, ok, paths, names, dataset, iters):
        """Panels, score histogram and report.html of a folder scored without labels."""
        import numpy as np
        import report
        c = self.config
        selected = scores[c.score_variant]
        os.makedirs(os.path.join(c.result_dir, 'plots'), exist_ok=True)
        report.plot_histogram(selected[ok], os.path.join(c.result_dir, 'plots',
                                                         'score_histogram.png'),
                              threshold=summary.get('threshold'),
                              xlabel=f'anomaly score ({c.score_variant})')
        order = np.asarray(ok)[np.argsort(-selected[ok], kind='stable')]
        groups = [('most anomalous', order[:report.N_EXAMPLES].tolist()),
                  ('least anomalous', order[::-1][:report.N_EXAMPLES].tolist())]
        captions = {k: f'{names[k]}  score {selected[k]:.5f}' for k in ok}
        vmax = max(float(np.nanmax(scores['p99'])), 1e-6)
        shown = [k for k in self.picture_indices(len(paths), groups) if k in captions]
        self.draw_panels(dataset, shown, names, os.path.join(c.result_dir, 'panels'), vmax,
                         captions=captions)
        examples = [(title, [(f'panels/{names[k]}', f'#{rank + 1}: {captions[k]}')
                             for rank, k in enumerate(ks)]) for title, ks in groups]
        threshold = (f"{summary['threshold']:.6g} ({summary['threshold_source']}); "
                     f"{summary['n_pred_anomalous']} of {len(ok)} images above it"
                     if 'threshold' in summary else 'none (no --val_dir): scores only')
        body = ('<h2>Scores</h2><p>No labels: scores and maps only. Threshold: '
                f'{threshold}.</p><div class="plots"><img src="plots/score_histogram.png" '
                'alt="histogram"></div>\n<h2>Examples</h2>'
                f'<p class="note">Colours of the map from 0 to {vmax:.4g}.</p>\n'
                + report.examples_html(examples)
                + '\n<p class="note">Files: <a href="summary.json">summary.json</a>, '
                  '<a href="scores.csv">scores.csv</a>.</p>')
        info = {'checkpoint': summary['checkpoint'], 'iteration': iters,
                'folder': c.score_dir, 'images scored': len(ok),
                'unreadable': len(summary['unreadable']),
                'score variant': f"{c.score_variant}: {summary['score']}"}
        report.write_html(os.path.join(c.result_dir, 'report.html'),
                          'HealthyGAN: scores of a folder', info, body)
