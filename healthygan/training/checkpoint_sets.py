"""Checkpoint sets (added): <N>-G.ckpt, <N>-D.ckpt, <N>-state.pt written as one, only a complete
set ever used, and the names of the files that make up a run."""
import datetime
import os
import pickle
import re
import shutil
import warnings

import torch

from healthygan import errors
from healthygan.errors import warn


TMP_SUFFIX = '.tmp'  # save_checkpoint_set and checkpoints.save_atomic write <file>.tmp, then rename


# The files that make a folder hold a run: checkpoints, training states, run records.
RUN_FILE = re.compile(r'^(\d+)-(G|D|G_ema)\.ckpt$|^(\d+)-state\.pt$|^run_config(-resume\d+)?\.json$'
                      r'|^aucp\.jsonl$')


# Files the detector fits from a run's data (detection/): the lung prior, the healthy pixel
# reference of checkpoints <members> at a size (pixel_reference.reference_file), the detector
# file of checkpoints <members> (detector.detector_file). They are the run's: moved aside with its
# checkpoints (--overwrite true) and with later sets on a resume, but no conflict alone.
FITTED = re.compile(r'^lung_prior\.pt$|^healthy_pixels_(\d+(?:-\d+)*)_\d+px\.pt$'
                    r'|^detector_(\d+(?:-\d+)*)_\d+px_\w+\.pt$')


SET_MEMBER = re.compile(r'^(\d+)-(G|D|G_ema|state)\.(ckpt|pt)$')


def set_members(model_save_dir):
    """{N: {'G', 'D', 'G_ema', 'state'} present} for every iteration with a file in the folder."""
    sets = {}
    if not os.path.isdir(model_save_dir):
        return sets
    for name in os.listdir(model_save_dir):
        m = SET_MEMBER.match(name)
        if m and (m.group(3) == 'pt') == (m.group(2) == 'state'):
            sets.setdefault(int(m.group(1)), set()).add(m.group(2))
    return sets


def complete_iters(model_save_dir):
    """Sorted iterations whose set is complete: G and D both present. save_checkpoint_set
    renames G last, so a G beside its D means the whole set (state included) landed; older sets
    may lack their state file (--keep_last_states, or the original's checkpoints)."""
    return sorted(n for n, have in set_members(model_save_dir).items() if {'G', 'D'} <= have)


def incomplete_iters(model_save_dir):
    """Sorted iterations with a G but no D: a save that was cut short, or a copied G alone."""
    return sorted(n for n, have in set_members(model_save_dir).items()
                  if 'G' in have and 'D' not in have)


def save_checkpoint_set(files, model_save_dir, iters):
    """Write {name: obj} (e.g. '8-G.ckpt': state_dict) as one set: every file to <name>.tmp
    first, then renamed, <N>-G.ckpt last, so no reader sees a G without the rest. A failed write
    (a full disk) removes this set's temporary files and leaves earlier sets untouched; the
    error is an OSError naming the folder."""
    order = sorted(files, key=lambda n: n.endswith('-G.ckpt'))  # G last
    written = []
    try:
        for name in order:
            tmp = os.path.join(model_save_dir, name + TMP_SUFFIX)
            written.append(tmp)
            torch.save(files[name], tmp)
        for name in order:
            os.replace(os.path.join(model_save_dir, name + TMP_SUFFIX),
                       os.path.join(model_save_dir, name))
    except (OSError, RuntimeError) as e:
        for tmp in written:
            if os.path.exists(tmp):
                os.remove(tmp)
        reason = getattr(e, 'strerror', None) or str(e).splitlines()[0]
        if not complete_iters(model_save_dir):  # the run's first set: nothing to resume from
            raise errors.CheckpointError(
                f'cannot write checkpoint set {iters} into {model_save_dir} ({reason}); no '
                f'checkpoint set was saved before it, so there is nothing to resume. Free space '
                f'or choose another --model_save_dir, then start the run again with '
                f'--overwrite true') from None
        raise errors.CheckpointError(
            f'cannot write checkpoint set {iters} into {model_save_dir} ({reason}); '
            f'the earlier checkpoint sets there are intact. Free space or choose '
            f'another --model_save_dir, then resume with --resume_iters latest') from None


def remove_stale_temporaries(model_save_dir):
    """Delete <file>.tmp left by a killed save (the lock says no other run writes here)."""
    removed = []
    if os.path.isdir(model_save_dir):
        for name in os.listdir(model_save_dir):
            if name.endswith(TMP_SUFFIX) and SET_MEMBER.match(name[:-len(TMP_SUFFIX)]):
                os.remove(os.path.join(model_save_dir, name))
                removed.append(name)
    if removed:
        warn(f'removed {len(removed)} unfinished temporary file(s) of an interrupted save in '
             f'{model_save_dir}: {", ".join(sorted(removed))}')
    return removed


def looks_like_torch_file(path):
    """True for what torch.save writes: a zip archive, or (torch < 1.6) a pickle stream."""
    try:
        with open(path, 'rb') as f:
            head = f.read(2)
    except OSError:
        return False
    return head == b'PK' or head[:1] == b'\x80'


def load_weights_only(path, what='checkpoint'):
    """torch.load(weights_only=True) with one line naming the file and why it is refused."""
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols: not the user's
            warnings.simplefilter('ignore')
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError:
        if not looks_like_torch_file(path):
            raise errors.CheckpointError(
                f'{what} {path} is not a PyTorch file (neither a zip archive nor a pickle: e.g. '
                f'a web page saved in place of the file, or a broken download); fetch it '
                f'again') from None
        raise errors.CheckpointError(
            f'{what} {path} holds Python objects other than tensors, so it is not '
            f'a file this program wrote; refused without running it (use the '
            f'checkpoints HealthyGAN saved)') from None
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise errors.CheckpointError(
            f'cannot read {what} {path}: {first}. The file is truncated or not a '
            f'PyTorch state dict.') from None


def run_files(model_save_dir):
    """Names of another run's files in the folder (checkpoints, states, run records)."""
    if not os.path.isdir(model_save_dir):
        return []
    return sorted(n for n in os.listdir(model_save_dir) if RUN_FILE.match(n))


def fitted_files(model_save_dir):
    """{name: the checkpoints it was fitted with (None: the whole run)} of the FITTED files."""
    found = {}
    for n in sorted(os.listdir(model_save_dir)) if os.path.isdir(model_save_dir) else []:
        m = FITTED.match(n)
        if m:
            members = m.group(1) or m.group(2)
            found[n] = [int(i) for i in members.split('-')] if members else None
    return found


def later_files(model_save_dir, iters):
    """Names of the set files of iterations after `iters` and of the files fitted with any of
    them (a resume from an earlier set)."""
    later = [n for n in os.listdir(model_save_dir)
             if SET_MEMBER.match(n) and int(SET_MEMBER.match(n).group(1)) > iters]
    later += [n for n, members in fitted_files(model_save_dir).items()
              if members and max(members) > iters]
    return sorted(later)


def move_aside(model_save_dir, names, now=None):
    """Move `names` into <model_save_dir>/replaced-<timestamp>/ (never deleted); its path."""
    stamp = (now or datetime.datetime.now()).strftime('%Y%m%d-%H%M%S')
    dest = os.path.join(model_save_dir, f'replaced-{stamp}')
    k = 1
    while os.path.exists(dest):
        k += 1
        dest = os.path.join(model_save_dir, f'replaced-{stamp}-{k}')
    os.makedirs(dest)
    for name in names:
        shutil.move(os.path.join(model_save_dir, name), os.path.join(dest, name))
    return dest


def available_iters(model_save_dir, suffix='-G.ckpt'):
    """Sorted iteration numbers N for which <N><suffix> exists (e.g. '-G.ckpt', '-state.pt')."""
    if not os.path.isdir(model_save_dir):
        return []
    stems = (n[:-len(suffix)] for n in os.listdir(model_save_dir) if n.endswith(suffix))
    return sorted(int(stem) for stem in stems if stem.isdigit())


def saved_iters(value, model_save_dir, flag):
    """The iteration a checkpoint flag names: a number, or 'latest' (the newest complete
    checkpoint set in model_save_dir); else one clear error."""
    found = available_iters(model_save_dir)
    if value == 'latest':
        # the newest complete set (G with its D); a G left alone by a cut-short save is skipped
        complete = complete_iters(model_save_dir)
        newer = [i for i in incomplete_iters(model_save_dir)
                 if not complete or i > complete[-1]]
        if newer:
            warn(f'{flag} latest: skipping the incomplete checkpoint set(s) '
                 f'{", ".join(map(str, newer))} in {model_save_dir} (no -D.ckpt)')
        if not complete:
            raise errors.CheckpointError(f'{flag} latest: no complete checkpoint set (<N>-G.ckpt '
                                         f'with <N>-D.ckpt) in {model_save_dir}')
        return complete[-1]
    if not str(value).isdigit():
        raise errors.ConfigError(f'{flag} {value}: give a checkpoint number or latest')
    if int(value) not in found:
        listing = ', '.join(map(str, found)) if found else 'none'
        raise errors.CheckpointError(
            f'{flag} {value}: {os.path.join(model_save_dir, f"{value}-G.ckpt")} does not exist. '
            f'Checkpoints in {model_save_dir}: {listing}')
    return int(value)
