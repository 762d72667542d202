"""Solver: builds G and D, trains them (WGAN-GP + identity, reconstruction and mask terms) and
tests them (translation grids, anomaly scores and AUROC)."""
import contextlib
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
from model import Discriminator, Generator, count_parameters


class ConfigError(RuntimeError):
    """A flag asks for something this machine or run cannot do: the message says what to do."""


class CheckpointError(ConfigError):
    """A checkpoint is missing or does not fit the model: the message says what to do."""


class NonFiniteLossError(ConfigError):
    """A loss became NaN or infinite: training stops before anything non-finite is saved."""


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
    grad = grad.reshape(grad.size(0), -1)
    return ((grad.pow(2).sum(dim=1).sqrt() - 1) ** 2).mean()


def interpolate(x_real, x_fake, alpha):
    """Random points between real and fake images, detached, with gradients enabled."""
    return (alpha * x_real.detach() + (1 - alpha) * x_fake.detach()).requires_grad_(True)


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


def resolve_iters(value, model_save_dir, flag):
    """An iteration number, or 'latest' (the highest checkpoint in model_save_dir)."""
    found = available_iters(model_save_dir)
    if value == 'latest':
        if not found:
            raise CheckpointError(f'{flag} latest: no <N>-G.ckpt checkpoints in {model_save_dir}')
        return found[-1]
    if int(value) not in found:
        listing = ', '.join(map(str, found)) if found else 'none'
        raise CheckpointError(f'{flag} {value}: {os.path.join(model_save_dir, f"{value}-G.ckpt")} '
                              f'does not exist. Checkpoints in {model_save_dir}: {listing}')
    return int(value)


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


def load_state_dict_checked(model, path, name):
    """Load a bare state dict (weights_only) into model, with errors that say what is wrong."""
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise CheckpointError(f'cannot read checkpoint {path}: {e}. The file is truncated or '
                              f'not a PyTorch state dict.') from None
    if not isinstance(state, dict):
        raise CheckpointError(f'{path} holds a {type(state).__name__}, not a state dict')
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

    def build_model(self):
        """Create G, D and their Adam optimizers."""
        c = self.config
        self.G = Generator(c.g_conv_dim, 0, c.g_repeat_num).to(self.device)
        self.D = Discriminator(c.image_size, c.d_conv_dim, 0, c.d_repeat_num).to(self.device)
        self.g_optimizer = torch.optim.Adam(self.G.parameters(), c.g_lr, (c.beta1, c.beta2))
        self.d_optimizer = torch.optim.Adam(self.D.parameters(), c.d_lr, (c.beta1, c.beta2))

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
        d = self.config.model_save_dir
        save_atomic(self.G.state_dict(), os.path.join(d, f'{iters}-G.ckpt'))
        save_atomic(self.D.state_dict(), os.path.join(d, f'{iters}-D.ckpt'))

    def set_lr(self, g_lr, d_lr):
        for group in self.g_optimizer.param_groups:
            group['lr'] = g_lr
        for group in self.d_optimizer.param_groups:
            group['lr'] = d_lr

    # ------------------------------------------------------------------------------------------ #
    #                                         Training                                             #
    # ------------------------------------------------------------------------------------------ #

    def d_step(self, x_A, x_B):
        """One critic update (WGAN-GP); returns the loss terms as tensors."""
        c = self.config
        d_loss_real = d_loss_real_fn(self.D(x_B)[1])
        with torch.no_grad():  # only the detached translation is used: no graph needed
            x_hat_A, _, _ = generate(self.G, x_A)
        d_loss_fake = d_loss_fake_fn(self.D(x_hat_A)[1])
        alpha = torch.rand(x_B.size(0), 1, 1, 1, device=x_B.device)
        x_int = interpolate(x_B, x_hat_A, alpha)
        d_loss_gp = gradient_penalty(self.D(x_int)[1], x_int)
        d_loss = d_loss_real + d_loss_fake + c.lambda_gp * d_loss_gp

        self.g_optimizer.zero_grad(set_to_none=True)
        self.d_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_optimizer.step()
        return {'D/loss_real': d_loss_real.detach(), 'D/loss_fake': d_loss_fake.detach(),
                'D/loss_gp': d_loss_gp.detach()}

    def g_step(self, x_A, x_B):
        """One generator update with fresh forward passes; returns the loss terms as tensors."""
        c = self.config
        # Mixed path (original -> target): fool D, and leave everything outside the mask alone.
        image_logits, mask_logit_A = self.G(x_A)
        x_raw_A, mask_A = torch.tanh(image_logits), mask_from_logit(mask_logit_A)
        g_loss_fake = g_adv_loss(self.D(blend(x_A, x_raw_A, mask_A))[1])
        g_loss_rec = reconstruction_loss(x_A, x_raw_A, mask_A)
        # Healthy path (original -> original): fool D, and reproduce the image exactly.
        image_logits, mask_logit_B = self.G(x_B)
        x_raw_B, mask_B = torch.tanh(image_logits), mask_from_logit(mask_logit_B)
        g_loss_fake_id = g_adv_loss(self.D(blend(x_B, x_raw_B, mask_B))[1])
        g_loss_id = identity_loss(x_B, x_raw_B)
        # Mask terms, the two paths averaged.
        mask_loss_A, small_A, zo_A = mask_loss(mask_A, c.lambda_msmall, c.lambda_mzerone)
        mask_loss_B, small_B, zo_B = mask_loss(mask_B, c.lambda_msmall, c.lambda_mzerone)
        g_loss_mask = 0.5 * mask_loss_A + 0.5 * mask_loss_B
        g_loss = (g_loss_fake + g_loss_fake_id + c.lambda_id * g_loss_id
                  + c.lambda_rec * g_loss_rec + c.lambda_mask * g_loss_mask)

        self.g_optimizer.zero_grad(set_to_none=True)
        self.d_optimizer.zero_grad(set_to_none=True)
        g_loss.backward()
        self.g_optimizer.step()
        terms = {'G/loss_fake': g_loss_fake, 'G/loss_rec': g_loss_rec,
                 'G/loss_fake_id': g_loss_fake_id, 'G/loss_id': g_loss_id,
                 'G/loss_mask': g_loss_mask,
                 'Mask/OT_min': mask_logit_A.min(), 'Mask/OT_max': mask_logit_A.max(),
                 'Mask/OT_small': small_A, 'Mask/OT_zo': zo_A,
                 'Mask/OO_min': mask_logit_B.min(), 'Mask/OO_max': mask_logit_B.max(),
                 'Mask/OO_small': small_B, 'Mask/OO_zo': zo_B}
        return {tag: t.detach() for tag, t in terms.items()}

    def save_training_state(self, iters, sampler, batches_done):
        """<iters>-state.pt: both optimizers, RNG states and the data position, for exact resume.

        Written beside the original-format <iters>-G/D.ckpt (which it does not replace); the
        original saved no optimizer state, so its resumed runs were not the run they continued.
        """
        c = self.config
        state = {
            'iteration': iters,
            'g_optimizer': self.g_optimizer.state_dict(),
            'd_optimizer': self.d_optimizer.state_dict(),
            'rng_torch': torch.get_rng_state(),
            'rng_cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            'data_epoch': sampler.epoch, 'data_batches_done': batches_done,
            'metadata': self.metadata,
        }
        save_atomic(state, os.path.join(c.model_save_dir, f'{iters}-state.pt'))
        if c.keep_last_states > 0:  # bound the disk use of long runs
            for old in available_iters(c.model_save_dir, '-state.pt')[:-c.keep_last_states]:
                os.remove(os.path.join(c.model_save_dir, f'{old}-state.pt'))

    def load_training_state(self, iters):
        """Restore optimizers, RNG and data position from <iters>-state.pt, if it exists."""
        path = os.path.join(self.config.model_save_dir, f'{iters}-state.pt')
        if not os.path.exists(path):
            print(f'warning: {path} not found: resuming from the weights only (optimizer '
                  f'state and data order start afresh, as in the original)')
            return None
        try:
            state = torch.load(path, map_location='cpu', weights_only=True)
            self.g_optimizer.load_state_dict(state['g_optimizer'])
            self.d_optimizer.load_state_dict(state['d_optimizer'])
        except Exception as e:
            raise CheckpointError(f'cannot use training state {path}: {e}') from None
        torch.set_rng_state(state['rng_torch'])
        if state['rng_cuda'] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state['rng_cuda'])
        return state

    def save_checkpoint(self, iters, sampler, batches_done):
        """G/D in the original format, then the training state."""
        self.save_model(iters)
        self.save_training_state(iters, sampler, batches_done)

    def train(self):
        """Train HealthyGAN on (mixed, healthy) pairs."""
        c = self.config
        for d in (c.model_save_dir, c.sample_dir, c.log_dir):
            os.makedirs(d, exist_ok=True)
        loader = data_loader.get_loader(c, 'train', self.split)
        sampler = loader.sampler
        # Fixed samples for the grids: the first batch of the first epoch.
        fixed = [loader.dataset[k] for k in sampler.order(0)[:c.batch_size]]
        x_fixed_A = torch.stack([a for a, _ in fixed]).to(self.device)
        x_fixed_B = torch.stack([b for _, b in fixed]).to(self.device)

        start_iters, batches_done = 0, 0
        if c.resume_iters is not None:
            start_iters = resolve_iters(c.resume_iters, c.model_save_dir, '--resume_iters')
            self.restore_model(start_iters)
            state = self.load_training_state(start_iters)
            if state is not None:
                sampler.epoch, batches_done = state['data_epoch'], state['data_batches_done']
        sampler.start = batches_done * c.batch_size
        data_iter = iter(loader)

        if c.use_tensorboard:
            from logger import Logger
            self.logger = Logger(c.log_dir)
        from logger import JsonlLogger
        stats = JsonlLogger(os.path.join(c.log_dir, 'stats.jsonl'))
        # A resumed run keeps the first run's record and adds its own beside it.
        self.metadata = run_metadata(c)
        name = 'run_config.json' if start_iters == 0 else f'run_config-resume{start_iters}.json'
        with open(os.path.join(c.model_save_dir, name), 'w') as f:
            json.dump(self.metadata, f, indent=1)

        print(f'G: {count_parameters(self.G):,} parameters; D: {count_parameters(self.D):,}; '
              f'{len(loader.dataset)} pairs an epoch; device {self.device}')
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
                    sampler.epoch, sampler.start, batches_done = sampler.epoch + 1, 0, 0
                    data_iter = iter(loader)
                    x_A, x_B = next(data_iter)
                batches_done += 1
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
                step_loss = self.d_step(x_A, x_B)

                # =============================================================================== #
                #                             3. Train the generator                              #
                # =============================================================================== #
                if (i + 1) % c.n_critic == 0:
                    step_loss.update(self.g_step(x_A, x_B))

                # =============================================================================== #
                #                               4. Miscellaneous                                  #
                # =============================================================================== #
                # Non-finite losses are checked (one device sync) only where something is about
                # to be logged or written, so no NaN reaches a file and the loop does not wait.
                if (i + 1) % c.log_step == 0 or (i + 1) % c.sample_step == 0 \
                        or (i + 1) % c.model_save_step == 0:
                    bad = nonfinite_terms(step_loss) + self.nonfinite_weights()
                    if bad:
                        raise NonFiniteLossError(
                            f'non-finite {", ".join(bad)} at iteration {i + 1} (first seen within '
                            f'the last {c.log_step} iterations). Nothing was saved after it; the '
                            f'last good checkpoint is iteration {last_saved} in '
                            f'{c.model_save_dir}. Try lower learning rates (--g_lr, --d_lr).')
                loss.update(step_loss)

                # Loss values are fetched from the device only here, so the loop does not wait.
                if (i + 1) % c.log_step == 0:
                    values = {tag: float(v) for tag, v in loss.items()}
                    bar.set_postfix({k.replace('/loss', ''): f'{values[k]:.3f}' for k in
                                     ('D/loss_real', 'D/loss_fake', 'D/loss_gp', 'G/loss_fake',
                                      'G/loss_id', 'G/loss_rec', 'G/loss_mask') if k in values},
                                    refresh=False)
                    stats.write({'iter': i + 1, 'time': round(time.time() - start_time, 3),
                                 'g_lr': g_lr, 'd_lr': d_lr, **values})
                    if self.logger:
                        for tag, value in values.items():
                            self.logger.scalar_summary(tag, value, i + 1)

                if (i + 1) % c.sample_step == 0:
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
                    self.save_checkpoint(i + 1, sampler, batches_done)
                    last_saved = i + 1
                    tqdm.write(f'Saved model checkpoints into {c.model_save_dir}...',
                               file=sys.stdout)

                if stop.signal is not None:
                    # Interrupted: keep the work done so far, then exit.
                    bar.close()
                    if nonfinite_terms(step_loss) + self.nonfinite_weights():
                        raise NonFiniteLossError(f'interrupted at iteration {i + 1} with '
                                                 f'non-finite losses; nothing saved')
                    if last_saved != i + 1:
                        self.save_checkpoint(i + 1, sampler, batches_done)
                    print(f'\nInterrupted by {signal.Signals(stop.signal).name} at iteration '
                          f'{i + 1}; saved {i + 1}-G.ckpt, {i + 1}-D.ckpt and {i + 1}-state.pt '
                          f'in {c.model_save_dir}. Resume with the same flags plus '
                          f'--resume_iters {i + 1} (or latest).')
                    raise SystemExit(128 + stop.signal)
        bar.close()

        # Unlike the original, always keep the final weights, even when num_iters is not a
        # multiple of model_save_step.
        if c.num_iters > last_saved:
            self.save_checkpoint(c.num_iters, sampler, batches_done)
            print(f'Saved final model checkpoints ({c.num_iters}) into {c.model_save_dir}...')
        if self.logger:
            self.logger.close()
        print(f'Training finished in {time.time() - start_time:.1f} s.')

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

    @torch.no_grad()
    def translate(self, x):
        """x_hat, x_raw, mask for a test batch.

        Faithful to the original, G stays in training mode: InstanceNorm normalises every image
        with its own statistics and the running statistics stored in the checkpoint are never
        used (calling eval() would change the released model's scores).
        """
        self.G.train()
        return generate(self.G, x)

    def load_for_test(self):
        """Resolve --test_iters and load G (D is not needed to test)."""
        c = self.config
        iters = resolve_iters(c.test_iters, c.model_save_dir, '--test_iters')
        self.restore_model(iters, load_D=False)
        return iters

    def test(self):
        """Write translation grids (input, raw, blended, mask for a mixed and a healthy image)."""
        c = self.config
        iters = self.load_for_test()
        os.makedirs(c.result_dir, exist_ok=True)
        loader = data_loader.get_loader(c, 'test', self.split)
        for k, (x_A, x_B) in enumerate(tqdm(loader, desc='test', file=sys.stdout)):
            self.G.train()
            with torch.no_grad():
                grid = translation_grid(self.G, x_A.to(self.device), x_B.to(self.device))
            path = os.path.join(c.result_dir, f'{iters}-{k + 1}-images.jpg')
            save_image(denorm(grid.cpu()), path, nrow=1, padding=0)
        print(f'Saved translated images into {c.result_dir}...')

    def test_auc(self):
        """Score every test image, report AUROC, sensitivity and specificity; write the files."""
        c = self.config
        iters = self.load_for_test()
        os.makedirs(c.result_dir, exist_ok=True)
        loader = data_loader.get_loader(c, 'testAUC', self.split)
        dataset = loader.dataset
        scores = [0.0] * len(dataset)
        for x, _, index in tqdm(loader, desc='testAUC', file=sys.stdout):
            x = x.to(self.device)
            x_hat, _, _ = self.translate(x)
            for k, s in zip(index.tolist(), metrics.to_numpy(metrics.anomaly_score(x, x_hat))):
                scores[k] = float(s)
        result = metrics.image_metrics(dataset.labels, scores)
        result.update({'checkpoint': os.path.join(c.model_save_dir, f'{iters}-G.ckpt'),
                       'iteration': iters, 'score': 'mean |x - x_hat| / 2 (original)',
                       'image_size': c.image_size})
        with open(os.path.join(c.result_dir, 'metrics.json'), 'w') as f:
            json.dump(result, f, indent=1)
        with open(os.path.join(c.result_dir, 'scores.csv'), 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['path', 'gt_label', 'pred_score'])
            for path, label, score in zip(dataset.paths, dataset.labels, scores):
                w.writerow([path, label, f'{score:.8f}'])
        print(f"AUC: {result['image_AUROC']:.4f}  sensitivity: {result['sensitivity']:.4f}  "
              f"specificity: {result['specificity']:.4f}  (threshold {result['threshold']:.6f}, "
              f"{result['threshold_source']}; {result['n_normal']} normal, "
              f"{result['n_anomalous']} anomalous)")
        print(f'Saved metrics.json and scores.csv into {c.result_dir}')
        return result

    testAUC = test_auc  # the original's name for the mode
