"""Several processes under torchrun (added; the original trains on one GPU).

G and D stay plain modules: DDP's reducer does not support the gradient penalty's double backward
(create_graph=True) reliably, so, as StyleGAN2-ADA does, each rank runs its own backward and the
gradients are then averaged with one all_reduce per network before the optimizer step. The ranks
start from rank 0's weights and apply identical updates, so they stay identical. Without torchrun
every helper is a no-op and the run is bit for bit what it was.
"""
import os

import torch

from healthygan.device import resolve_device
from healthygan.errors import ConfigError

dist = torch.distributed


def init_distributed(config):
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT in the environment); NCCL on CUDA, gloo on the CPU. Without torchrun: nothing.

    torchrun --nproc_per_node 1 joins a group of one, so that a single GPU runs (and checks)
    every collective of the multi-GPU path.
    """
    if 'RANK' not in os.environ or 'WORLD_SIZE' not in os.environ or dist.is_initialized():
        return
    device = resolve_device(config.device)
    if device.type == 'mps':
        raise ConfigError('--device mps cannot be used with torchrun (no collective backend); '
                          'use --device cpu or cuda, or run one process')
    if device.type == 'cuda':
        local_rank = int(os.environ.get('LOCAL_RANK', '0'))
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f'LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} '
                              f'GPU(s) are visible: use torchrun --nproc_per_node <= '
                              f'{torch.cuda.device_count()}')
        # Every later 'cuda' tensor of this process lands on cuda:LOCAL_RANK.
        torch.cuda.set_device(local_rank)
        dist.init_process_group('nccl', device_id=torch.device('cuda', local_rank))
    else:
        dist.init_process_group('gloo')


def world_size():
    """Number of training processes (1 without torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank():
    """This process's rank (0 without torchrun)."""
    return dist.get_rank() if dist.is_initialized() else 0


def is_main():
    """True on the one process that prints and writes logs, samples and checkpoints."""
    return rank() == 0


def barrier():
    """Wait for every rank (no-op on one process)."""
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's value of a picklable object on every rank (e.g. a seed drawn at random)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_params(*modules):
    """Copy rank 0's parameters and buffers to every rank (same start on every rank)."""
    if not dist.is_initialized():
        return
    with torch.no_grad():
        for module in modules:
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)


def average_gradients(module):
    """Replace each parameter's gradient by its mean over ranks (one flat all_reduce).

    Each rank's losses are means over its own batch and all per-rank batches have the same size,
    so the mean of the per-rank gradients is the gradient of the loss on the concatenated global
    batch, the gradient penalty included (its double backward happened locally already).
    """
    if not dist.is_initialized():
        return
    params = [p for p in module.parameters() if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def average_buffers(*modules):
    """Mean over ranks of the floating-point buffers (InstanceNorm running statistics).

    G is never put in eval mode, so these statistics do not affect training or testing; they
    are averaged before each save so that the checkpoint holds the statistics of the global
    batch (the updates are linear in the batch means) and the ranks stay identical.
    """
    if not dist.is_initialized():
        return
    with torch.no_grad():
        for module in modules:
            for b in module.buffers():
                if b.is_floating_point():
                    dist.all_reduce(b)
                    b /= world_size()


def all_reduce_mean(tensors):
    """{tag: scalar tensor} averaged over ranks (one all_reduce), for logging."""
    if not dist.is_initialized() or not tensors:
        return tensors
    tags = list(tensors)
    flat = torch.stack([tensors[k].detach().float().reshape(()) for k in tags])
    dist.all_reduce(flat)
    return dict(zip(tags, flat / world_size()))


def any_rank(flag, device):
    """True on every rank if flag is true on any rank (to agree on stopping)."""
    if not dist.is_initialized():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gp_alpha(x):
    """The gradient penalty's interpolation weights for this rank's batch x, shape (n, 1, 1, 1).

    One process: torch.rand(n, ...) exactly as before. Several: every rank holds the same
    generator state and draws the global batch's weights, then takes its own slice, so the run
    draws what one process on the concatenated batch would draw.
    """
    n, world = x.size(0), world_size()
    if world == 1:
        return torch.rand(n, 1, 1, 1, device=x.device)
    r = rank()
    return torch.rand(n * world, 1, 1, 1, device=x.device)[r * n:(r + 1) * n]


def sync_rng_state(device):
    """Give every rank rank 0's torch RNG state (CPU, and the current GPU's)."""
    if not dist.is_initialized():
        return
    torch.set_rng_state(broadcast_object(torch.get_rng_state()))
    if device.type == 'cuda':
        torch.cuda.set_rng_state(broadcast_object(torch.cuda.get_rng_state()))
