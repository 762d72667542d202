"""The training loop, as in the original code: a WGAN-GP critic step every iteration, a generator
step every n_critic iterations, with logs, grids, checkpoints and the AUCp of each checkpoint
around them.

One iteration reads top to bottom in three files: Trainer.train's numbered stages and the two
steps (TrainStep) here, the losses in model/losses.py, the networks in model/networks.py."""
import contextlib
import datetime
import json
import os
import signal
import sys
import threading
import time
import types

import torch
from torchvision.utils import save_image
from tqdm import tqdm

from healthygan import errors
from healthygan.data.loaders import get_loader
from healthygan.data.overlap import check_training_overlap
from healthygan.data.splits import resolve_split
from healthygan.errors import ConfigError, NonFiniteLossError
from healthygan.model.losses import (LOSS_WEIGHTS, critic_loss, generator_loss,
                                     gradient_penalty, interpolate, learning_rate, mask_stats,
                                     nonfinite_terms, penalty_of_gradient)
from healthygan.model.networks import count_parameters
from healthygan.training import jsonl_logs, resume_checks, run_folder, run_record
from healthygan.training.checkpoint_sets import saved_iters
from healthygan.training.checkpoints import (check_same_data, data_record, last_good,
                                             run_metadata)
from healthygan.training.distributed import (all_reduce_mean, any_rank, average_gradients,
                                             broadcast_params, dist, gp_alpha, is_main,
                                             sync_rng_state, world_size)
from healthygan.training.fast import (critic, frozen, generate_amp, repeat_running_stats_update,
                                      running_stats)
from healthygan.training.images import denorm, translation_grid
from healthygan.training.jsonl_logs import AUCP_LOG


class StopFlag:
    """Records SIGINT/SIGTERM instead of dying mid-step, so the loop can save and exit."""

    # One kill often arrives twice (timeout forwarding its own, a scheduler signalling the
    # whole process group): a second signal within this many seconds is the same request.
    MOMENT = 1.0

    def __init__(self):
        self.signal = None
        self.received = None  # time.monotonic() of the first signal
        self.previous, self.closed = {}, False

    def _handler(self, signum, frame):
        now = time.monotonic()
        if self.signal is not None:
            if now - self.received < self.MOMENT:
                return
            if self.closed:  # after the loop: the handlers from before it take the signal
                self.restore()
                signal.raise_signal(signum)
                return
            # a second request: stop at once, without a traceback; a set being written is
            # left as temporaries (removed at the next start), earlier sets stay whole
            print(f'{signal.Signals(signum).name} received again: stopped at once, without '
                  f'saving; resume from the last complete checkpoint set with --resume_iters '
                  f'latest', file=sys.stderr, flush=True)
            raise SystemExit(128 + signum)
        self.signal, self.received = signum, now
        print(f'\n{signal.Signals(signum).name} received: saving at the end of this iteration '
              f'(send it again to stop at once)...', file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def catching(self, *signums):
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread
            return
        self.previous = {s: signal.signal(s, self._handler) for s in signums}
        try:
            yield self
        finally:
            self.closed = True
            # the stop's own echo may still arrive while the program exits: absorbed by
            # _handler, which hands later signals to the handlers from before
            if self.signal is None or time.monotonic() - self.received >= self.MOMENT:
                self.restore()

    def restore(self):
        """Put back the handlers from before catching."""
        for s, h in self.previous.items():
            signal.signal(s, h)
        self.previous = {}


LARGE_WEIGHT = 1e3  # the paper's weights are 10 at most; far above, gradients overflow float32


def nonfinite_advice(bad, config):
    """What to lower after the non-finite terms `bad` (e.g. ['D/loss_gp', 'D weights']): the
    weights of the losses of the networks concerned, the large ones first, else the rates."""
    nets = sorted({name[0] for name in bad if name[:1] in LOSS_WEIGHTS})
    weights = [(flag, getattr(config, flag)) for net in nets for flag in LOSS_WEIGHTS[net]]
    named = ', '.join(f'--{f} {v:g}' for f, v in weights)
    large = [f'--{f} {v:g}' for f, v in weights if not abs(v) <= LARGE_WEIGHT]
    rates = f'--g_lr {config.g_lr:g}, --d_lr {config.d_lr:g}'
    if large:
        return (f'Lower {", ".join(large)}: a loss weight this large overflows the gradients '
                f'(the {" and ".join(nets)} loss weights: {named}).')
    if not nets:
        return f'Try lower learning rates ({rates}).'
    return (f'Try lower learning rates ({rates}) or loss weights (the {" and ".join(nets)} loss '
            f'weights: {named}).')


class TrainStep:
    """The loop's stages 2 and 3: d_step and g_step of the networks (build.Networks) with the loss weights of the flags."""

    def __init__(self, nets, lambda_gp, g_weights):
        self.nets = nets
        self.lambda_gp = lambda_gp
        self.g_weights = g_weights  # losses.loss_weights(config, 'G')
        self.kept_fake = None  # --reuse_fake: the critic step's translation, for the G step

    def d_step(self, x_A, x_B, keep_fake=False):
        """One critic update (WGAN-GP); returns the loss terms as tensors.

        keep_fake (added): a G step on the same batch follows; with --reuse_fake the translation
        of x_A is then kept, with its graph, for g_step instead of being recomputed there.
        """
        n, amp = self.nets, self.nets.amp_dtype
        x_A_given, x_A, x_B = x_A, n.to_layout(x_A), n.to_layout(x_B)
        keep = keep_fake and n.speed['reuse_fake']
        stats = running_stats(n.G) if keep else None
        keep = keep and stats is not None
        # The original ran G here with autograd on and used only the detached output: without
        # --reuse_fake no graph is needed; with it, the G step reuses this pass.
        with torch.set_grad_enabled(keep):
            fake = generate_amp(n.G_run, x_A, amp)
        self.kept_fake = (x_A_given, fake, stats) if keep else None
        x_hat_A = fake[0].detach()
        out_real, out_fake = critic(n.D_run, [x_B, x_hat_A], amp, n.speed['merge_critic'])
        alpha = gp_alpha(x_B)  # torch.rand(n, 1, 1, 1); several ranks: a slice of the global draw
        x_int = interpolate(x_B, x_hat_A, alpha)
        # The penalty's pass stays eager and fp32 under every fast path: compiled graphs do not
        # support autograd's double backward (the default form), and (||grad|| - 1)^2 with
        # ||grad|| near 1 cancels most of a 16-bit gradient's precision.
        if n.speed['gp_explicit']:  # (added) the same penalty without a double backward
            d_loss_gp = penalty_of_gradient(n.D.input_gradient(x_int))
        else:
            d_loss_gp = gradient_penalty(n.D(x_int)[1], x_int)
        d_loss, terms = critic_loss(out_real, out_fake, d_loss_gp, self.lambda_gp)

        self.update(d_loss, n.D, n.d_optimizer)
        return {tag: t.detach() for tag, t in terms.items()}

    def g_step(self, x_A, x_B):
        """One generator update with fresh forward passes; returns the loss terms as tensors."""
        n, amp = self.nets, self.nets.amp_dtype
        kept, self.kept_fake = self.kept_fake, None
        x_A_given, x_A, x_B = x_A, n.to_layout(x_A), n.to_layout(x_B)
        if kept is not None and kept[0] is x_A_given:
            # --reuse_fake (added): the critic step changed only D, so its pass of G on x_A is
            # the pass the original ran again here; only the second update of the (unused)
            # InstanceNorm running statistics is left to do.
            x_hat_A, x_raw_A, mask_A, mask_logit_A = kept[1]
            repeat_running_stats_update(kept[2])
        else:
            x_hat_A, x_raw_A, mask_A, mask_logit_A = generate_amp(n.G_run, x_A, amp)
        x_hat_B, x_raw_B, mask_B, mask_logit_B = generate_amp(n.G_run, x_B, amp)
        # Unlike the original, D's parameters take no gradient here: the G step's backward
        # computed D's weight gradients only for the next critic step to zero them (the G
        # updates are the same bit for bit: tests/test_fast.py).
        with frozen(n.D):
            out_A, out_B = critic(n.D_run, [x_hat_A, x_hat_B], amp, n.speed['merge_critic'])
        g_loss, terms, masks = generator_loss(x_A, x_raw_A, mask_A, out_A, x_B, x_raw_B, mask_B,
                                              out_B, **self.g_weights)

        self.update(g_loss, n.G, n.g_optimizer)
        terms.update({**mask_stats('OT', mask_logit_A, *masks['OT']),
                      **mask_stats('OO', mask_logit_B, *masks['OO'])})
        return {tag: t.detach() for tag, t in terms.items()}

    def update(self, loss, net, optimizer):
        """Backward of loss and one step of net's optimizer; both networks' gradients are
        cleared first, as in the original."""
        self.nets.g_optimizer.zero_grad(set_to_none=True)
        self.nets.d_optimizer.zero_grad(set_to_none=True)
        self.nets.scaler.scale(loss).backward()  # the scaler is a no-op unless --amp fp16
        average_gradients(net)  # several ranks (torchrun): mean over ranks; else no-op
        self.nets.scaler.step(optimizer)
        self.nets.scaler.update()


class Trainer:
    """The training loop around the two steps (TrainStep): data, resume, logs, grids,
    checkpoints (checkpoints.CheckpointStore) and the AUCp of each (detection/aucp.AUCpLog)."""

    def __init__(self, config, split, device, nets, step, store, lung, aucp):
        self.config, self.split, self.device = config, split, device
        self.nets, self.step, self.store, self.lung, self.aucp = nets, step, store, lung, aucp
        self.logger = None  # TensorBoard, opened by open_logs

    def train(self):
        """Train HealthyGAN on (mixed, healthy) pairs: the original's loop, resumable."""
        c = self.config
        run = self.prepare_run()
        print('Start training...')
        run.start_time = time.time()
        stop = StopFlag()
        run.bar = tqdm(range(run.start_iters, c.num_iters), initial=run.start_iters,
                       total=c.num_iters, dynamic_ncols=True, mininterval=1.0, file=sys.stdout)
        with stop.catching(signal.SIGINT, signal.SIGTERM):
            for i in run.bar:
                # 1. Preprocess input data
                x_A, x_B = self.next_batch(run)  # mixed (unannotated), healthy

                # The original restarts at lr0 on resume; computing the rate from i keeps a
                # resumed run on the schedule it would have followed.
                run.lr = [learning_rate(i, lr0, c.num_iters, c.num_iters_decay, c.lr_update_step,
                                        c.lr_schedule) for lr0 in (c.g_lr, c.d_lr)]
                self.nets.set_lr(*run.lr)

                # 2. Train the discriminator
                step_loss = self.step.d_step(x_A, x_B, keep_fake=(i + 1) % c.n_critic == 0)

                # 3. Train the generator
                if (i + 1) % c.n_critic == 0:
                    step_loss.update(self.step.g_step(x_A, x_B))

                # 4. Miscellaneous
                step_loss = self.log_and_save(run, i, step_loss)
                if self.stopping(stop, i):
                    self.save_interrupted(run, i, step_loss, stop)
        run.bar.close()

        # Unlike the original, always keep the final weights, even when num_iters is not a
        # multiple of model_save_step.
        if c.num_iters > run.last_saved:
            self.store.save_checkpoint(c.num_iters, run.sampler, run.pairs_done, run.metadata)
            print(f'Saved final model checkpoints ({c.num_iters}) into {c.model_save_dir}...')
            if run.main_rank:  # only rank 0 writes
                self.aucp.log(c.num_iters, run.holdout, self.logger)
        if self.logger:
            self.logger.close()
        print(f'Training finished in {time.time() - run.start_time:.1f} s.')

    def prepare_run(self):
        """Data, the resume point, logs and the run record: the loop's state, as a namespace."""
        c = self.config
        for d in (c.model_save_dir, c.sample_dir, c.log_dir):
            os.makedirs(d, exist_ok=True)
        run = types.SimpleNamespace(main_rank=is_main(), loss={}, pairs_done=0, start_iters=0)
        run.loader = get_loader(c, 'train', self.split, self.device)
        run.sampler = run.loader.sampler
        n_pairs = len(run.loader.dataset)
        if n_pairs < c.batch_size:  # the batch would silently be cut to the data
            raise ConfigError(f'--batch_size {c.batch_size} is larger than the {n_pairs} training '
                              f'pairs; lower --batch_size to {n_pairs} or less')
        # Fixed samples for the grids: the first batch of the first epoch.
        fixed = [run.loader.dataset[k] for k in run.sampler.order(0)[:c.batch_size]]
        run.fixed = [torch.stack([pair[j] for pair in fixed]).to(self.device) for j in (0, 1)]

        # Position in the epoch's order, in pairs of the global batch (all ranks together), so
        # that a run can resume with another number of ranks.
        self.store.start_run()  # a resume takes the run's own id (load_training_state)
        run.data_overlap = {}
        split = self.split or resolve_split(c, 'train')
        run.data = data_record(split, c.image_dir)  # compared on resume: hold-out, images
        if run.main_rank:  # training on test images, or one image in both sets: said, not silent
            lines, run.data_overlap = check_training_overlap(c, split)
            for line in lines:
                errors.warn(line)
        if c.resume_iters is not None:
            run.start_iters = saved_iters(c.resume_iters, c.model_save_dir, '--resume_iters')
            # read-only on every rank (all stop together); only rank 0 moves files aside
            run_folder.check_resume_point(c.model_save_dir, run.start_iters, c.num_iters,
                                        c.overwrite, move=run.main_rank, asked=c.resume_iters)
            self.store.restore_model(run.start_iters)
            state = self.store.load_training_state(run.start_iters)
            saved = (state.get('metadata') if state is not None else
                     run_record.saved_run_record(c.model_save_dir, run.start_iters)) or {}
            if 'image_dir' not in resume_checks.parse_allowed(c.allow_changes):
                check_same_data(saved.get('data'), run.data,
                                os.path.join(c.model_save_dir, f'{run.start_iters}-state.pt'),
                                c.image_dir)
            if state is not None:
                run.sampler.epoch, run.pairs_done = state['data_epoch'], state['data_pairs_done']
        run.last_saved = run.start_iters
        run.sampler.start = run.pairs_done
        run.data_iter = iter(run.loader)
        # Several ranks: same weights and same RNG state (the GP's alphas) everywhere.
        broadcast_params(self.nets.G, self.nets.D)
        sync_rng_state(self.device)
        self.open_logs(run)
        if run.main_rank:  # the 'lung' score's region, saved so that testing needs no training image
            self.lung.save()
        run.holdout = self.aucp.load_holdout() if run.main_rank else None  # only rank 0 scores it
        G, D = self.nets.G, self.nets.D
        print(f'G: {count_parameters(G):,} parameters; D: {count_parameters(D):,}; '
              f'{n_pairs} pairs an epoch; device {self.device}')
        if dist.is_initialized():
            print(f'{world_size()} processes ({dist.get_backend()}), --batch_size {c.batch_size} '
                  f'each: global batch {world_size() * c.batch_size}')
        return run

    def open_logs(self, run):
        """TensorBoard, stats.jsonl and the run record (run_config[-resume<N>].json)."""
        c = self.config
        if c.use_tensorboard and run.main_rank:
            from healthygan.training.logs import Logger
            self.logger = Logger(c.log_dir)
        from healthygan.training.logs import JsonlLogger
        run.stats = JsonlLogger(os.path.join(c.log_dir, 'stats.jsonl'))
        if run.main_rank:  # a torn last line (a kill, a full disk) is cut before appending
            jsonl_logs.repair_jsonl(run.stats.path)
            jsonl_logs.repair_jsonl(os.path.join(c.model_save_dir, AUCP_LOG))
        # A resumed run keeps the first run's record and adds its own beside it.
        run.metadata = run_metadata(c)
        run.metadata['world_size'] = world_size()  # processes; --batch_size is per process
        run.metadata['run_id'] = self.store.run_id  # compared with every state file on resume
        run.metadata['paths'] = resume_checks.run_paths(c)  # the folders, resolved
        if self.store.accepted_changes:  # --allow_changes: {flag: [saved, now]}
            run.metadata['accepted_changes'] = self.store.accepted_changes
        if self.store.speed_changes:  # speed switches changed on resume: {switch: [saved, now]}
            run.metadata['speed_changes'] = self.store.speed_changes
        run.metadata['data'] = run.data
        if run.data_overlap:  # {what: count} of the overlap warnings
            run.metadata['data_overlap'] = run.data_overlap
        name = ('run_config.json' if run.start_iters == 0
                else f'run_config-resume{run.start_iters}.json')
        if run.main_rank:
            with open(os.path.join(c.model_save_dir, name), 'w') as f:
                json.dump(run.metadata, f, indent=1)

    def next_batch(self, run):
        """The next (x_A, x_B) on the device; a new epoch reshuffles."""
        try:
            x_A, x_B = next(run.data_iter)
        except StopIteration:  # the epoch is over: reshuffle
            run.sampler.epoch, run.sampler.start, run.pairs_done = run.sampler.epoch + 1, 0, 0
            run.data_iter = iter(run.loader)
            x_A, x_B = next(run.data_iter)
        run.pairs_done += x_A.size(0) * world_size()  # every rank's batch has this size
        return x_A.to(self.device, non_blocking=True), x_B.to(self.device, non_blocking=True)

    def log_and_save(self, run, i, step_loss):
        """After iteration i: the NaN guard, the logs, the sample grid and the checkpoint.
        Returns the step's losses, averaged over ranks where they were checked."""
        c, step = self.config, i + 1
        # Non-finite losses are checked (one device sync) only where something is about to be
        # logged or written, so no NaN reaches a file and the loop does not wait.
        if step % c.log_step == 0 or step % c.sample_step == 0 or step % c.model_save_step == 0:
            step_loss = all_reduce_mean(step_loss)  # ranks: all see (and stop on) a NaN
            bad = nonfinite_terms(step_loss) + self.nonfinite_weights()
            if bad:
                raise NonFiniteLossError(
                    f'non-finite {", ".join(bad)} at iteration {step} (first seen within the '
                    f'last {c.log_step} iterations). Nothing was saved after it; '
                    f'{last_good(run.last_saved, c.model_save_dir)}. {nonfinite_advice(bad, c)}')
        run.loss.update(step_loss)
        if step % c.log_step == 0 or step % c.sample_step == 0:
            run.loss = all_reduce_mean(run.loss)  # several ranks: log the mean over ranks
        if step % c.log_step == 0:
            self.log_losses(run, step)
        if step % c.sample_step == 0 and run.main_rank:
            with torch.no_grad():
                grid = translation_grid(self.nets.G, *run.fixed)
            path = os.path.join(c.sample_dir, f'{step}-images.jpg')
            try:
                save_image(denorm(grid.cpu()), path, nrow=1, padding=0)
            except OSError as e:  # a full disk: name the file (a write's error names none)
                raise OSError(e.errno, e.strerror, path) from None
            elapsed = str(datetime.timedelta(seconds=int(time.time() - run.start_time)))
            log = f'Elapsed [{elapsed}], Iteration [{step}/{c.num_iters}]'
            log += ''.join(f', {tag}: {float(v):.4f}' for tag, v in run.loss.items())
            tqdm.write(log + f'\nSaved real and fake images into {path}...', file=sys.stdout)
        if step % c.model_save_step == 0:
            self.store.save_checkpoint(step, run.sampler, run.pairs_done, run.metadata)
            run.last_saved = step
            tqdm.write(f'Saved model checkpoints into {c.model_save_dir}...', file=sys.stdout)
            if run.main_rank:  # only rank 0 writes
                self.aucp.log(step, run.holdout, self.logger)
        return step_loss

    def log_losses(self, run, step):
        """Loss values, fetched from the device only here so that the loop does not wait."""
        values = {tag: float(v) for tag, v in run.loss.items()}
        run.bar.set_postfix({k.replace('/loss', ''): f'{values[k]:.3f}' for k in
                             ('D/loss_real', 'D/loss_fake', 'D/loss_gp', 'G/loss_fake',
                              'G/loss_id', 'G/loss_rec', 'G/loss_mask') if k in values},
                            refresh=False)
        if run.main_rank:
            g_lr, d_lr = run.lr
            run.stats.write({'iter': step, 'time': round(time.time() - run.start_time, 3),
                             'g_lr': g_lr, 'd_lr': d_lr, **values})
        if self.logger:
            for tag, value in values.items():
                self.logger.scalar_summary(tag, value, step)

    def stopping(self, stop, i):
        """Whether a signal asks to stop after iteration i (on every rank alike)."""
        stopping = stop.signal is not None
        if dist.is_initialized():  # all ranks stop at the same iteration, agreed at log steps
            # only (one tiny all_reduce), so a signal takes up to log_step steps.
            stopping = (i + 1) % self.config.log_step == 0 and any_rank(stopping, self.device)
        return stopping

    def save_interrupted(self, run, i, step_loss, stop):
        """Interrupted: keep the work done so far, then exit."""
        c = self.config
        run.bar.close()
        if nonfinite_terms(step_loss) + self.nonfinite_weights():
            raise NonFiniteLossError(f'interrupted at iteration {i + 1} with non-finite losses; '
                                     f'nothing saved')
        if run.last_saved != i + 1:
            self.store.save_checkpoint(i + 1, run.sampler, run.pairs_done, run.metadata)
        # a rank told by another one received nothing itself: it exits as if sent SIGTERM, and
        # stop keeps saying nothing was received (its handlers are put back as usual)
        signum = stop.signal or signal.SIGTERM
        print(f'\nInterrupted by {signal.Signals(signum).name} at iteration {i + 1}; saved '
              f'{i + 1}-G.ckpt, {i + 1}-D.ckpt and {i + 1}-state.pt in {c.model_save_dir}. '
              f'Resume with the same flags plus --resume_iters {i + 1} (or latest).')
        raise SystemExit(128 + signum)

    def nonfinite_weights(self):
        """['G weights'] / ['D weights'] where a parameter is NaN or infinite."""
        bad = []
        for name, net in (('G', self.nets.G), ('D', self.nets.D)):
            if not torch.stack([torch.isfinite(p).all() for p in net.parameters()]).all():
                bad.append(f'{name} weights')
        return bad
