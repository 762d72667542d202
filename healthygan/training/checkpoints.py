"""Checkpoint files: the original's bare G/D state dicts and the training state beside them
(which iteration a flag names is selection.resolve_iters)."""
import datetime
import hashlib
import os
import platform
import subprocess
import sys

import torch

from healthygan import errors
from healthygan.errors import CheckpointError, ConfigError
from healthygan.training import checkpoint_sets, resume_checks, run_record
from healthygan.training.checkpoint_sets import available_iters
from healthygan.training.distributed import average_buffers, barrier, is_main, world_size


def save_atomic(obj, path):
    """torch.save to a temporary file, then rename: a crash never leaves a truncated file."""
    tmp = path + checkpoint_sets.TMP_SUFFIX  # the suffix a killed save's leftovers are found by
    try:
        # Through a Python file: a full disk is then an OSError with its errno (torch's own
        # writer says only "unexpected pos").
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.lexists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename is None:
            raise OSError(e.errno, e.strerror, path) from None  # a write's error names no file
        raise


def weights_digest(state_dict):
    """SHA-256 of a state dict's names and values: which weights a state file was saved with."""
    digest = hashlib.sha256()
    for name, value in sorted(state_dict.items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def data_record(split, image_dir):
    """What a resume compares of the data: digests of the held-out images' names and of the
    training images' names, sizes and modification times (what tells the data cache that an
    image changed)."""
    root = os.path.abspath(image_dir)

    def names(keys):
        return sorted(os.path.relpath(os.path.abspath(p), root) for k in keys
                      for p in split.get(k, []))

    held_out = names(('holdout_healthy', 'holdout_mixed'))
    training = hashlib.sha256()
    for name in names(('healthy', 'mixed')):
        st = os.stat(os.path.join(root, name))
        training.update(f'{name}\t{st.st_size}\t{st.st_mtime_ns}\n'.encode())
    return {'n_holdout': len(held_out),
            'holdout': hashlib.sha256('\n'.join(held_out).encode()).hexdigest(),
            'training_images': training.hexdigest()}


def check_same_data(saved, current, path, image_dir):
    """Refuse a resume whose hold-out moved or whose training images changed since `path` was
    saved (saved: its data_record, None for runs saved before it was kept)."""
    if not saved:
        return
    if saved.get('holdout') != current['holdout']:
        raise ConfigError(
            f'the hold-out is not the one saved in {path} ({saved.get("n_holdout")} images '
            f'then, {current["n_holdout"]} now): images added to or removed from {image_dir} '
            f'move it, so best_aucp would compare other sets and held-out images could enter '
            f'training; restore the folders as they were, or start a new run')
    if saved.get('training_images') != current['training_images']:
        raise ConfigError(
            f'the training images under --image_dir {image_dir} changed since {path} was saved '
            f'(a file replaced, added or removed); restore them, or start a new run (if they '
            f'are the same images copied anew, pass --allow_changes image_dir)')


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
    state = checkpoint_sets.load_weights_only(path, what)
    if not isinstance(state, dict):
        raise CheckpointError(f'{path} holds a {type(state).__name__}, not a state dict')
    return state


def load_state_dict_checked(model, path, name):
    """Load a bare state dict (weights_only) into model, with errors that say what is wrong."""
    state = load_checked(path)
    foreign = [k for k, v in state.items() if not torch.is_tensor(v)]
    if foreign:  # no architecture can be read from it, so none should be suggested
        k = foreign[0]
        raise CheckpointError(f'{path} holds {len(foreign)} non-tensor value(s) (e.g. {k!r}: a '
                              f'{type(state[k]).__name__}), so it is not a {name} state dict; '
                              f'use a checkpoint HealthyGAN saved')
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


class CheckpointStore:
    """A run's checkpoint files (--model_save_dir): G and D of the networks (build.Networks) in
    the original's format, and the training state (optimizers, RNG, data position) that makes a
    resume exact. A resume's checks leave here the run id and the changes they accepted."""

    def __init__(self, config, nets):
        self.config, self.nets = config, nets
        self.start_run()

    def start_run(self):
        """A new run's id and no accepted changes; a resume (load_training_state) replaces them."""
        self.run_id = run_record.new_run_id()
        self.accepted_changes, self.speed_changes = {}, {}  # {flag: [saved, now]}

    def restore_model(self, iters, load_D=True):
        """Load <iters>-G.ckpt (and -D.ckpt when asked and present) from model_save_dir."""
        d = self.config.model_save_dir
        print(f'Loading the trained models from step {iters}...')
        load_state_dict_checked(self.nets.G, os.path.join(d, f'{iters}-G.ckpt'), 'Generator')
        D_path = os.path.join(d, f'{iters}-D.ckpt')
        if load_D and self.nets.D is not None and os.path.exists(D_path):
            load_state_dict_checked(self.nets.D, D_path, 'Discriminator')

    def training_state(self, iters, sampler, pairs_done, metadata):
        """<iters>-state.pt: both optimizers, RNG states and the data position, for exact resume.

        Written beside the original-format <iters>-G/D.ckpt (which it does not replace); the
        original saved no optimizer state, so its resumed runs were not the run they continued.
        """
        return {
            'iteration': iters,
            'g_optimizer': self.nets.g_optimizer.state_dict(),
            'd_optimizer': self.nets.d_optimizer.state_dict(),
            'scaler': self.nets.scaler.state_dict(),  # --amp fp16's loss scale ({} otherwise)
            'rng_torch': torch.get_rng_state(),
            'rng_cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            # Position in the epoch's order in pairs of the global batch (every rank's batch
            # together): another number of ranks resumes at the same pair.
            'data_epoch': sampler.epoch, 'data_pairs_done': pairs_done,
            'world_size': world_size(),
            'metadata': metadata,
        }

    def prune_states(self):
        """--keep_last_states K: delete all but the newest K state files."""
        c = self.config
        if c.keep_last_states > 0:  # bound the disk use of long runs
            for old in available_iters(c.model_save_dir, '-state.pt')[:-c.keep_last_states]:
                os.remove(os.path.join(c.model_save_dir, f'{old}-state.pt'))

    def load_training_state(self, iters):
        """Restore optimizers, RNG and data position from <iters>-state.pt, if it exists."""
        d = self.config.model_save_dir
        path = os.path.join(d, f'{iters}-state.pt')
        folder_id = run_record.folder_run_id(d)
        if not os.path.exists(path):
            print(f'warning: {path} not found: resuming from the weights only (optimizer '
                  f'state and data order start afresh, as in the original)')
            self.check_resume_config(run_record.saved_run_record(d, iters), path)
            self.run_id = folder_id or run_record.new_run_id()
            return None
        state = checkpoint_sets.load_weights_only(path, 'training state')
        if not isinstance(state, dict) or 'g_optimizer' not in state:
            raise CheckpointError(f'{path} is not a training state this program wrote')
        if state.get('iteration') != iters:
            raise CheckpointError(f'{path} holds the state of iteration {state.get("iteration")}, '
                                  f'not {iters}: it belongs to another run; remove it or '
                                  f'resume from its own checkpoints')
        meta = state.get('metadata') or {}
        # The flags alone cannot tell another run's state resumed with that run's --seed: the
        # run id made at the first start (run_config.json) and kept in every state can.
        if folder_id and meta.get('run_id') and meta['run_id'] != folder_id:
            differ = resume_checks.config_changes(meta.get('config') or {}, meta.get('world_size', 1),
                                             vars(self.config), world_size(), meta.get('paths'))
            flags = ''.join(f', --{k} {old!r} there, {new!r} here' for k, (old, new) in
                            list(differ.items())[:3])
            raise CheckpointError(
                f'{path} was written by another run (run id {meta["run_id"]}{flags}; the run that '
                f'started in {d} is {folder_id}, run_config.json): resuming from it would mix two '
                f'runs. Remove it, or resume from a set this run saved')
        self.check_resume_config(meta, path)
        for name, net in (('G', self.nets.G), ('D', self.nets.D)):
            saved = (state.get('weights_sha256') or {}).get(name)
            if saved and saved != weights_digest(net.state_dict()):
                raise CheckpointError(
                    f'{os.path.join(d, f"{iters}-{name}.ckpt")} is not the {name} this run saved '
                    f'with {path} (another run\'s, or replaced): resuming would mix two runs. '
                    f'Put the run\'s own file back, or resume from another set')
        self.run_id = meta.get('run_id') or folder_id or run_record.new_run_id()
        for opt, model, name in ((state['g_optimizer'], self.nets.G, 'G'),
                                 (state['d_optimizer'], self.nets.D, 'D')):
            unfit = resume_checks.check_optimizer_fits(opt, model, name)
            if unfit:
                raise CheckpointError(f'{path} does not fit the networks built from the flags '
                                      f'({unfit}): it was written by another architecture')
        try:
            self.nets.g_optimizer.load_state_dict(state['g_optimizer'])
            self.nets.d_optimizer.load_state_dict(state['d_optimizer'])
            if state.get('scaler'):
                self.nets.scaler.load_state_dict(state['scaler'])
        except Exception as e:
            raise CheckpointError(f'cannot use training state {path}: {e}') from None
        torch.set_rng_state(state['rng_torch'])
        if state['rng_cuda'] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state['rng_cuda'])
        return state

    def check_resume_config(self, saved_meta, path):
        """Refuse a resume whose flags change the run (resume_checks.RUN_FLAGS) unless
        --allow_changes names them; the accepted changes go into the run's metadata. A changed
        speed switch is allowed with a warning (and recorded): it changes the rounding."""
        saved_meta = saved_meta or {}
        saved_config = saved_meta.get('config')
        if not saved_config:
            return
        c = self.config
        allowed = resume_checks.parse_allowed(c.allow_changes)
        try:
            self.accepted_changes = resume_checks.check_resume_config(
                saved_config, saved_meta.get('world_size', 1), vars(c), world_size(), allowed,
                saved_meta.get('paths'))
        except ConfigError as e:
            raise ConfigError(f'{e} [saved in {path}]') from None
        speed = resume_checks.speed_changes(saved_config, vars(c))
        if speed:
            self.speed_changes = {k: list(v) for k, v in speed.items()}
            errors.warn('resume changes the speed switch(es) ' + ', '.join(
                f'--{k} from {old!r} to {new!r}' for k, (old, new) in speed.items())
                + f' (saved in {path}): the floating-point rounding changes, so the resumed run '
                f'is not bit for bit the run it continues; recorded in its run config')

    def save_checkpoint(self, iters, sampler, pairs_done, metadata):
        """G/D in the original format and the training state with the run's record (metadata),
        written as one set (rank 0 only; every rank calls): checkpoint_sets.save_checkpoint_set."""
        G, D = self.nets.G, self.nets.D
        average_buffers(G)  # several ranks: the global batch's running statistics
        if is_main():
            files = {f'{iters}-G.ckpt': G.state_dict(), f'{iters}-D.ckpt': D.state_dict()}
            files[f'{iters}-state.pt'] = self.training_state(iters, sampler, pairs_done, metadata)
            # the G/D files carry no run id (the original's format): their digests here tell
            # another run's G or D put in their place on resume
            files[f'{iters}-state.pt']['weights_sha256'] = {
                'G': weights_digest(files[f'{iters}-G.ckpt']),
                'D': weights_digest(files[f'{iters}-D.ckpt'])}
            checkpoint_sets.save_checkpoint_set(files, self.config.model_save_dir, iters)
            self.prune_states()
        barrier()
