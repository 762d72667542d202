"""TensorBoard logging through torch.utils.tensorboard (the original used TensorFlow's writer)."""
import json
import os


class Logger:
    """Scalar logger with the original's interface: ``scalar_summary(tag, value, step)``."""

    def __init__(self, log_dir):
        from torch.utils.tensorboard import SummaryWriter  # imported lazily: it is slow to load
        os.makedirs(log_dir, exist_ok=True)
        self.writer = SummaryWriter(log_dir)

    def scalar_summary(self, tag, value, step):
        """Add a scalar (e.g. tag 'D/loss_gp') at a training step."""
        self.writer.add_scalar(tag, value, step)

    def close(self):
        self.writer.close()


class JsonlLogger:
    """Appends one JSON object per logging step to a file (``stats.jsonl``), readable without TB."""

    def __init__(self, path):
        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
        self.path = path

    def write(self, record):
        try:
            with open(self.path, 'a') as f:
                f.write(json.dumps(record) + '\n')
        except OSError as e:  # a full disk: name the file (a write's error names none)
            raise OSError(e.errno, e.strerror, self.path) from None
