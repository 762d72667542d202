"""The run lock (added): one run at a time writes a folder; a dead run's stale lock is taken over."""
import json
import os
import socket

from healthygan import errors
from healthygan.errors import warn


LOCK = '.healthygan.lock'



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
