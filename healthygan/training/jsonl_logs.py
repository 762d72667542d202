"""Append-only JSON-lines logs (added): a torn last line is skipped when read and repaired before
appending."""
import json
import os

from healthygan.errors import warn

AUCP_LOG = 'aucp.jsonl'  # beside the checkpoints: one {"iter", "AUCp", ...} line per checkpoint

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
