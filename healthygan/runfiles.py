"""Run folders, checkpoint sets, resume consistency and append-only logs (added).

Small helpers, pure where possible, that keep a run's files whole: a run folder is never
overwritten by another run, a checkpoint set (<N>-G.ckpt, <N>-D.ckpt, <N>-state.pt) is written
as one and only a complete set is ever used, a resume that would change the run is refused, and
a torn last line of an append-only log is skipped when read and repaired before appending.
"""
import datetime
import json
import math
import os
import pickle
import re
import shutil
import socket
import sys
import warnings

import torch

from healthygan import errors
from healthygan.distributed import is_main

LOCK = '.healthygan.lock'
TMP_SUFFIX = '.tmp'  # save_checkpoint_set and checkpoints.save_atomic write <file>.tmp, then rename
# The files that make a folder hold a run: checkpoints, training states, run records.
RUN_FILE = re.compile(r'^(\d+)-(G|D|G_ema)\.ckpt$|^(\d+)-state\.pt$|^run_config(-resume\d+)?\.json$'
                      r'|^aucp\.jsonl$')
# Files a run derives from its data, moved aside with its checkpoints but no conflict alone.
RUN_EXTRA = ('lung_prior.pt',)
SET_MEMBER = re.compile(r'^(\d+)-(G|D|G_ema|state)\.(ckpt|pt)$')


def warn(message):
    print(f'warning: {message}', file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ #
#                                   Checkpoint sets                                                #
# ------------------------------------------------------------------------------------------------ #

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


# ------------------------------------------------------------------------------------------------ #
#                           Run folder: conflict, overwrite, lock                                  #
# ------------------------------------------------------------------------------------------------ #

def run_files(model_save_dir):
    """Names of another run's files in the folder (checkpoints, states, run records)."""
    if not os.path.isdir(model_save_dir):
        return []
    return sorted(n for n in os.listdir(model_save_dir) if RUN_FILE.match(n))


def later_files(model_save_dir, iters):
    """Names of the set files of iterations after `iters` (a resume from an earlier set)."""
    return sorted(n for n in os.listdir(model_save_dir)
                  if SET_MEMBER.match(n) and int(SET_MEMBER.match(n).group(1)) > iters)


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


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """A lock file in the run folder holding {"pid", "host"}: a second run into the folder is
    refused; a lock whose process has died (same host) is stale and taken over with a warning."""

    def __init__(self, folder, flag='--model_save_dir'):
        self.path = os.path.join(folder, LOCK)
        self.flag = flag
        self.held = False

    def acquire(self):
        me = {'pid': os.getpid(), 'host': socket.gethostname()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = self._read()
                if other is not None and (other.get('host') != me['host']
                                          or pid_alive(int(other.get('pid', -1)))):
                    where = '' if other.get('host') == me['host'] else f" on {other.get('host')}"
                    raise errors.ConfigError(
                        f'{self.flag} {os.path.dirname(self.path)} is in use by another '
                        f"run (process {other.get('pid')}{where}, lock file {self.path}); wait "
                        f'for it or choose another {self.flag} (delete the lock file only '
                        f'if that run is gone)')
                warn(f'taking over the stale lock {self.path} of a run that is no longer '
                     f'running (process {other.get("pid") if other else "unknown"})')
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, 'w') as f:
                json.dump(me, f)
            self.held = True
            return self
        raise errors.ConfigError(
            f'could not take the lock {self.path}; another run keeps taking it')

    def _read(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None  # torn or empty: its writer died before finishing it

    def release(self):
        if self.held:
            self.held = False
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass


class RunLocks:
    """One RunLock in each folder a run writes (--model_save_dir, --log_dir, --sample_dir;
    a folder named twice is locked once): two runs sharing any of them would interleave their
    logs or overwrite each other's sample grids. All are taken, or none."""

    FLAGS = ('model_save_dir', 'log_dir', 'sample_dir')

    def __init__(self, config):
        self.locks, seen = [], set()
        for flag in self.FLAGS:
            folder = getattr(config, flag)
            if os.path.realpath(folder) not in seen:
                seen.add(os.path.realpath(folder))
                self.locks.append(RunLock(folder, f'--{flag}'))

    def acquire(self):
        taken = []
        try:
            for lock in self.locks:
                taken.append(lock.acquire())
        except BaseException:
            for lock in taken:
                lock.release()
            raise
        return self

    def release(self):
        for lock in self.locks:
            lock.release()


# What a run writes beside its checkpoints: TensorBoard event files in --log_dir, translation
# grids in --sample_dir. --overwrite true moves them aside with the old run's checkpoints (else
# TensorBoard would draw both runs' curves as one, and old grids would sit among new ones).
EVENTS = re.compile(r'^events\.out\.tfevents\.')
SAMPLE = re.compile(r'^\d+-images\.jpg$')


def move_logs_aside(config, dest):
    """Move the old run's stats.jsonl and TensorBoard events into dest, its sample grids into
    dest/samples/; returns how many files moved."""
    moves = []
    for folder, pattern, into in ((config.log_dir, EVENTS, dest),
                                  (config.sample_dir, SAMPLE, os.path.join(dest, 'samples'))):
        if os.path.isdir(folder):
            moves += [(os.path.join(folder, n), os.path.join(into, n))
                      for n in sorted(os.listdir(folder)) if pattern.match(n)]
    stats = os.path.join(config.log_dir, 'stats.jsonl')
    if os.path.exists(stats):  # the old run's losses, not the new one's
        moves.append((stats, os.path.join(dest, 'stats.jsonl')))
    for src, dst in moves:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.move(src, dst)
    return len(moves)


def check_new_run(model_save_dir, overwrite, move=True):
    """A new run (no --resume_iters) into a folder holding another run's files: refuse, or
    with --overwrite true move them aside. Returns the folder they went to, or None."""
    names = run_files(model_save_dir)
    if not names:
        return None
    if not overwrite:
        done = complete_iters(model_save_dir)
        what = f'checkpoints up to iteration {done[-1]}' if done else 'run files'
        raise errors.ConfigError(
            f'--model_save_dir {model_save_dir} already holds another run ({what}, '
            f'{len(names)} files); resume it with --resume_iters latest, choose another '
            f'--model_save_dir, or pass --overwrite true to move its files aside')
    if not move:
        return None
    names += [n for n in RUN_EXTRA if os.path.exists(os.path.join(model_save_dir, n))]
    dest = move_aside(model_save_dir, names)
    warn(f'--overwrite true: moved the earlier run\'s {len(names)} files to {dest}')
    return dest


def check_resume_point(model_save_dir, iters, num_iters, overwrite, move=True, asked=None):
    """Resuming from set `iters` (asked: the --resume_iters given): refuse an incomplete set, a
    --num_iters with nothing left to train, and later sets that the resumed run would mix with
    its own (or move them aside)."""
    have = set_members(model_save_dir).get(iters, set())
    if 'G' in have and 'D' not in have:
        raise errors.ConfigError(
            f'--resume_iters {iters}: {os.path.join(model_save_dir, f"{iters}-D.ckpt")} (the '
            f'critic) is missing, so the set is incomplete; resume from a complete set '
            f'(--resume_iters latest takes the newest one)')
    if num_iters < iters:  # equal: the run is complete (a script re-running it goes on)
        raise errors.ConfigError(
            f'--num_iters {num_iters} is below the resumed iteration '
            f'{iters}: nothing to train; raise --num_iters')
    later = later_files(model_save_dir, iters)
    if later and not overwrite and asked == 'latest':
        # latest skipped newer incomplete sets: "resume from latest" would be this same advice
        raise errors.ConfigError(
            f'--resume_iters latest is set {iters}, the newest complete one, but {model_save_dir} '
            f'holds files of later, incomplete sets ({", ".join(later[:4])}'
            f'{", ..." if len(later) > 4 else ""}) that this run would mix with its own; pass '
            f'--overwrite true to move them aside into replaced-<time>/ (nothing is deleted)')
    if later and not overwrite:
        raise errors.ConfigError(
            f'--resume_iters {iters}: {model_save_dir} holds later checkpoints '
            f'({", ".join(later[:4])}{", ..." if len(later) > 4 else ""}) that this run would '
            f'mix with its own; resume from latest, or pass --overwrite true to move them aside')
    if later and move:
        dest = move_aside(model_save_dir, later)
        warn(f'--overwrite true: moved the later checkpoints ({len(later)} files) to {dest}')


# ------------------------------------------------------------------------------------------------ #
#                                  Resume consistency                                              #
# ------------------------------------------------------------------------------------------------ #

# Flags that change what a resumed run computes. --batch_size is compared as the global batch
# (batch x processes), which a resume may spread over another number of processes.
RUN_FLAGS = ('dataset', 'image_dir', 'list_dir', 'image_size', 'g_conv_dim', 'd_conv_dim',
             'g_repeat_num', 'd_repeat_num', 'lambda_rec', 'lambda_gp', 'lambda_id',
             'lambda_mask', 'lambda_msmall', 'lambda_mzerone', 'num_iters_decay', 'g_lr',
             'd_lr', 'n_critic', 'beta1', 'beta2', 'lr_schedule', 'lr_update_step',
             'holdout_fraction', 'holdout_stratify', 'bad_images', 'seed', 'batch_size')


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
    from healthygan.fast import SPEED_FLAGS
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


# ------------------------------------------------------------------------------------------------ #
#                                 Append-only JSON-lines logs                                      #
# ------------------------------------------------------------------------------------------------ #

def read_jsonl(path):
    """The records of a JSON-lines log; a torn or unparsable line is skipped with a warning."""
    records = []
    if not os.path.exists(path):
        return records
    with open(path) as f:
        for k, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                warn(f'{path}: line {k} is torn or not JSON (an interrupted write); skipped')
    return records


def repair_jsonl(path):
    """Cut a torn tail (an unfinished or unparsable last line) before appending, so the log's
    next record starts on a line of its own; the cut bytes are reported. Returns their count."""
    if not os.path.exists(path):
        return 0
    with open(path, 'rb') as f:
        data = f.read()
    keep = len(data)
    if data and not data.endswith(b'\n'):
        keep = data.rfind(b'\n') + 1
    else:
        # a complete-looking last line that does not parse (e.g. zeros after a crash)
        start = data.rfind(b'\n', 0, max(len(data) - 1, 0)) + 1
        last = data[start:].strip()
        if last:
            try:
                json.loads(last)
            except ValueError:
                keep = start
    cut = len(data) - keep
    if cut:
        with open(path, 'r+b') as f:
            f.truncate(keep)
        warn(f'{path}: removed a torn last line ({cut} bytes) left by an interrupted write '
             f'before appending')
    return cut


def saved_run_record(model_save_dir, iters):
    """The metadata (config, world_size, run_id, ...) of the run record that wrote set `iters`:
    the newest run_config-resume<K>.json with K < iters, else run_config.json; None when absent."""
    resumes = sorted(int(m.group(1)) for m in (re.match(r'^run_config-resume(\d+)\.json$', n)
                                               for n in run_files(model_save_dir)) if m)
    names = [f'run_config-resume{k}.json' for k in reversed(resumes) if k < iters]
    for name in names + ['run_config.json']:
        path = os.path.join(model_save_dir, name)
        if os.path.exists(path):
            try:
                with open(path) as f:
                    meta = json.load(f)
                return meta if isinstance(meta, dict) else None
            except (OSError, ValueError):
                warn(f'{path} is not readable JSON; the resume is not compared with it')
                return None
    return None


# The flags that fix the networks' shapes: a run's checkpoints load only with these.
ARCHITECTURE_FLAGS = ('image_size', 'g_conv_dim', 'g_repeat_num', 'd_conv_dim', 'd_repeat_num')


def run_architecture(model_save_dir):
    """{flag: value} of ARCHITECTURE_FLAGS from a run folder's run_config.json, the record of
    the run that started it, or None where the folder has no readable record."""
    meta = saved_run_record(model_save_dir, 0) or {}
    config = meta.get('config')
    if not isinstance(config, dict):
        return None
    saved = {k: config[k] for k in ARCHITECTURE_FLAGS if isinstance(config.get(k), int)}
    return saved or None


def saved_run_config(model_save_dir, iters):
    """(config, processes) of the run record that wrote set `iters`; (None, 1) when absent."""
    meta = saved_run_record(model_save_dir, iters) or {}
    return meta.get('config'), meta.get('world_size', 1)


def folder_run_id(model_save_dir):
    """The run id of the run that started in the folder (its run_config.json), or None."""
    path = os.path.join(model_save_dir, 'run_config.json')
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta.get('run_id') if isinstance(meta, dict) else None


def new_run_id():
    """A random hex id, made when a run first starts and kept by every resume of it."""
    return os.urandom(8).hex()


def available_iters(model_save_dir, suffix='-G.ckpt'):
    """Sorted iteration numbers N for which <N><suffix> exists (e.g. '-G.ckpt', '-state.pt')."""
    if not os.path.isdir(model_save_dir):
        return []
    stems = (n[:-len(suffix)] for n in os.listdir(model_save_dir) if n.endswith(suffix))
    return sorted(int(stem) for stem in stems if stem.isdigit())


def prepare_run_folder(config):
    """Train mode: lock the folders the run writes, clear temporaries of a killed save, and
    refuse (or, --overwrite true, move aside) another run's files. Returns the locks, or None."""
    lock = None
    if is_main():
        lock = RunLocks(config).acquire()
    try:
        if is_main():
            remove_stale_temporaries(config.model_save_dir)
        parse_allowed(config.allow_changes)  # a typo fails now, not at resume time
        if config.resume_iters is None:
            dest = check_new_run(config.model_save_dir, config.overwrite,
                                          move=is_main())
            if dest:
                moved = move_logs_aside(config, dest)
                if moved:
                    warn(f'--overwrite true: moved the earlier run\'s logs and sample grids '
                         f'({moved} files) to {dest}')
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock
