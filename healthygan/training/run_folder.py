"""A run folder at the start of training (added): another run's files are refused or, with
--overwrite true, moved aside with its logs; a resume from an earlier set moves later sets aside."""
import os
import re
import shutil

from healthygan import errors
from healthygan.errors import warn
from healthygan.training.checkpoint_sets import (RUN_EXTRA, complete_iters, later_files, move_aside,
                                                 remove_stale_temporaries, run_files, set_members)
from healthygan.training.distributed import is_main
from healthygan.training.resume_checks import parse_allowed
from healthygan.training.run_lock import RunLocks


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
