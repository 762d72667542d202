"""Resume consistency (added): a resume that would change the run (its flags, its processes, its
optimizer shapes) is refused unless --allow_changes names the change."""
import math
import os

from healthygan import errors
from healthygan.model.losses import LOSS_WEIGHTS


# Flags that change what a resumed run computes. --batch_size is compared as the global batch
# (batch x processes), which a resume may spread over another number of processes. The loss
# weights come from the losses' own table, so a new weight is compared without a line here.
RUN_FLAGS = ('dataset', 'image_dir', 'list_dir', 'image_size', 'g_conv_dim', 'd_conv_dim',
             'g_repeat_num', 'd_repeat_num', *LOSS_WEIGHTS['D'], *LOSS_WEIGHTS['G'],
             'num_iters_decay', 'g_lr', 'd_lr', 'n_critic', 'beta1', 'beta2', 'lr_schedule',
             'lr_update_step', 'holdout_fraction', 'holdout_stratify', 'bad_images', 'seed',
             'batch_size')


def parse_allowed(value):
    """--allow_changes 'g_lr,batch_size' -> {'g_lr', 'batch_size'} (leading dashes ignored)."""
    names = {v.strip().lstrip('-') for v in (value or '').split(',') if v.strip()}
    unknown = sorted(names - set(RUN_FLAGS))
    if unknown:
        raise errors.ConfigError(
            f'--allow_changes: {", ".join(unknown)} is not a flag a resume compares '
            f'(those are: {", ".join(RUN_FLAGS)})')
    return names


def _same(a, b):
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


# Folder flags compared as the folders they name: 'data/', './data' and its absolute path are
# the same data. The run records the resolved paths at its start (run_paths).
PATH_FLAGS = ('image_dir', 'list_dir')


def run_paths(config):
    """{flag: resolved path} of the folder flags, recorded in the run's metadata."""
    return {flag: os.path.realpath(getattr(config, flag)) for flag in PATH_FLAGS}


def config_changes(saved, saved_world, current, current_world, saved_paths=None):
    """{flag: (saved, now)} for the run flags a resume would change (pure, but for resolving
    the folder flags: saved_paths, the saved run's resolved folders, else the saved strings
    resolved from here)."""
    changes = {}
    for flag in RUN_FLAGS:
        if flag not in saved:
            continue  # a state written before the flag existed
        old, new = saved[flag], current.get(flag)
        if flag == 'batch_size':
            old, new = old * (saved_world or 1), new * (current_world or 1)
        if flag in PATH_FLAGS and isinstance(old, str) and isinstance(new, str):
            resolved = (saved_paths or {}).get(flag) or os.path.realpath(old)
            if resolved == os.path.realpath(new):
                continue
        if not _same(old, new):
            changes[flag] = (old, new)
    return changes


def speed_changes(saved, current):
    """{switch: (saved, now)} for the speed switches (fast.SPEED_FLAGS, as resolved) a resume
    changes. They are allowed (a resume on a faster machine), but each changes the floating-point
    rounding, so the resumed run is no longer bit for bit the one it continues (pure)."""
    from healthygan.training.fast import SPEED_FLAGS
    return {k: (saved[k], current.get(k)) for k in SPEED_FLAGS
            if k in saved and saved[k] != current.get(k)}


def check_resume_config(saved, saved_world, current, current_world, allowed, saved_paths=None):
    """Refuse a resume that changes the run, naming the flag and both values, unless the
    change is in `allowed`; returns the accepted changes {flag: [saved, now]} to record."""
    changes = config_changes(saved, saved_world, current, current_world, saved_paths)
    refused = {k: v for k, v in changes.items() if k not in allowed}
    if refused:
        flag, (old, new) = next(iter(refused.items()))
        what = 'global batch (--batch_size x processes)' if flag == 'batch_size' else f'--{flag}'
        more = f' (and {", ".join("--" + k for k in list(refused)[1:])})' if len(refused) > 1 \
            else ''
        raise errors.ConfigError(
            f'resume would change {what} from {old!r} to {new!r}{more}: not the run it continues. '
            f'Use the saved value, or pass --allow_changes {",".join(refused)} if the change is '
            f'wanted (it is then recorded in the run config)')
    return {k: list(v) for k, v in changes.items()}


def check_optimizer_fits(opt_state, model, name):
    """The Adam moments of a saved optimizer state have the shapes of `model`'s parameters (a
    state file of another architecture otherwise fails deep inside Adam's step)."""
    params = list(model.parameters())
    saved = opt_state.get('state', {})
    groups = opt_state.get('param_groups', [])
    n_saved = sum(len(g.get('params', [])) for g in groups)
    if n_saved != len(params):
        return f'{name} optimizer has {n_saved} parameters, the model {len(params)}'
    ids = [i for g in groups for i in g.get('params', [])]
    for p, i in zip(params, ids):
        st = saved.get(i, {})
        for key in ('exp_avg', 'exp_avg_sq'):
            if key in st and st[key].numel() != p.numel():
                return (f'{name} optimizer moment of shape {tuple(st[key].shape)} for a parameter '
                        f'of shape {tuple(p.shape)}')
    return None
