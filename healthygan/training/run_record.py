"""The run record (added): run_config.json and run_config-resume<K>.json, the flags, processes and
run id of the run that wrote each checkpoint set."""
import json
import os
import re

from healthygan.errors import warn
from healthygan.training.checkpoint_sets import run_files


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
