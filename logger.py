"""TensorBoard logging with the original's interface (``Logger.scalar_summary``) and the
``stats.jsonl`` writer; both live in healthygan/training/logs.py, where the training loop uses them."""
from healthygan.training.logs import JsonlLogger, Logger

__all__ = ['Logger', 'JsonlLogger']
