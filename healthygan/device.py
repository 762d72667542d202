"""The device a run uses: --device, chosen in one place."""
import torch

from healthygan.errors import ConfigError


def resolve_device(name):
    """'auto' picks cuda, then mps, then cpu; an unavailable device is a clear error."""
    mps = getattr(torch.backends, 'mps', None)
    mps_ok = mps is not None and mps.is_available()
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'mps' if mps_ok else 'cpu')
    if name == 'cuda' and not torch.cuda.is_available():
        raise ConfigError('--device cuda was asked for but CUDA is not available '
                           '(use --device cpu or auto)')
    if name == 'mps' and not mps_ok:
        raise ConfigError('--device mps was asked for but MPS is not available '
                           '(use --device cpu or auto)')
    return torch.device(name)
