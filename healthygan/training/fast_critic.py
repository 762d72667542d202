"""The critic's opt-in fast paths (added): the same PatchGAN as model.Discriminator, with its
small convolutions as matrix multiplies (--critic_matmul) and the gradient penalty's input
gradient as an explicit backward pass (--gp_explicit). Same state dict, same sums in another
order."""
import torch
import torch.nn.functional as F
from torch import nn

from healthygan.model.networks import Discriminator


def weight_matrix(conv):
    """conv.weight as an O x (k*k*C) or O x (C*k*k) matrix, whichever is a view of its memory.

    A channels-last weight (O, kh, kw, C in memory) reshaped the usual way (C*k*k) would be
    copied, 8 MB for the critic's last layer, forward and backward, at every pass; the columns
    of im2col, a few rows, are reordered instead. Returns (matrix, channels_last).
    """
    o = conv.out_channels
    permuted = conv.weight.permute(0, 2, 3, 1)
    if permuted.is_contiguous() and not conv.weight.is_contiguous():
        return permuted.reshape(o, -1), True
    return conv.weight.reshape(o, -1), False


def conv2d_as_matmul(x, conv):
    """conv(x) computed as im2col (F.unfold) and one matrix multiply (added, a CPU fast path).

    The same sums as the convolution, in another order. On the critic's last layer (maps of
    4x4 and smaller, hundreds of channels) oneDNN's direct kernels, and their double backward
    in the gradient penalty, run far below the CPU's matmul speed; one (N*L) x (C*k*k) by
    (C*k*k) x O product does not (docs/speed.md). Returns a channels-last view.
    """
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    cols = F.unfold(x, (kh, kw), padding=(ph, pw), stride=(sh, sw))  # N x C*kh*kw x L
    weight, channels_last = weight_matrix(conv)
    if channels_last:  # columns ordered (kh, kw, C), as the weight's memory
        cols = cols.view(n, c, kh * kw, ho * wo).permute(0, 3, 2, 1)
    else:
        cols = cols.transpose(1, 2)
    cols, weight = cols.reshape(n * ho * wo, -1), weight.t()
    out = cols @ weight if conv.bias is None else torch.addmm(conv.bias, cols, weight)
    return out.view(n, ho, wo, conv.out_channels).permute(0, 3, 1, 2)


def conv_input_gradient(grad_out, conv, in_size, matmul=False):
    """The gradient of sum(grad_out * conv(x)) with respect to x (of spatial size in_size).

    A transposed convolution with conv's weight (output_padding restores the rows and columns
    a strided convolution of an odd-sized map dropped), or, with matmul, one matrix multiply
    and F.fold (col2im). Differentiable in grad_out and in conv.weight.
    """
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    if matmul:
        n, o, ho, wo = grad_out.shape
        weight, channels_last = weight_matrix(conv)
        cols = grad_out.permute(0, 2, 3, 1).reshape(n * ho * wo, o) @ weight
        if channels_last:  # (kh, kw, C) -> F.fold's (C, kh, kw)
            cols = cols.view(n, ho * wo, kh * kw, -1).permute(0, 3, 2, 1)
        else:
            cols = cols.view(n, ho * wo, -1).transpose(1, 2)
        return F.fold(cols.reshape(n, -1, ho * wo), in_size, (kh, kw), padding=(ph, pw),
                      stride=(sh, sw))
    ho, wo = grad_out.shape[-2:]
    output_padding = (in_size[0] - ((ho - 1) * sh - 2 * ph + kh),
                      in_size[1] - ((wo - 1) * sw - 2 * pw + kw))
    return F.conv_transpose2d(grad_out, conv.weight, stride=(sh, sw), padding=(ph, pw),
                              output_padding=output_padding)


class FastCritic(Discriminator):
    """model.Discriminator, with the fast paths switched by matmul_side and the penalty form."""

    # --critic_matmul: the convolutions whose input maps are at most this many pixels on a
    # side run as conv2d_as_matmul (their input gradients in input_gradient as a matmul and
    # F.fold); 0 (the default) runs every one as nn.Conv2d. Larger maps stay convolutions:
    # oneDNN's kernels are faster there (docs/speed.md).
    MATMUL_SIDE = 4

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.matmul_side = 0

    def forward(self, x):
        if not self.matmul_side:
            h = self.main(x)
        else:
            h = x
            for layer in self.main:
                h = self.run_conv(layer, h) if isinstance(layer, nn.Conv2d) else layer(h)
        return h, self.conv1(h)

    def as_matmul(self, size):
        """Whether a convolution of maps of this (height, width) runs as a matmul."""
        return bool(self.matmul_side) and max(size) <= self.matmul_side

    def run_conv(self, layer, h):
        """One of the main convolutions on h, as conv2d_as_matmul where as_matmul says so."""
        return conv2d_as_matmul(h, layer) if self.as_matmul(h.shape[-2:]) else layer(h)

    def set_inplace_activations(self, inplace):
        """LeakyReLU in place (True) or not (False, the original's); the same values either way."""
        for layer in self.main:
            if isinstance(layer, nn.LeakyReLU):
                layer.inplace = inplace

    def input_gradient(self, x):
        """d(sum of patch logits)/dx as an explicit backward pass, differentiable in D's weights.

        The gradient penalty needs this gradient and its derivative with respect to D's weights.
        autograd gets them by a double backward through the forward pass; here the backward
        pass is written out (LeakyReLU's backward, then each convolution's input gradient as a
        transposed convolution, last layer first), so one first-order backward of the penalty
        gives the weight gradients. The same products and sums as autograd's, in another order;
        it also skips autograd's second backward through the forward pass, which carries only
        zeros (LeakyReLU's gradient does not depend on its input's value, only on its sign).
        The forward pass runs without a graph and keeps LeakyReLU's inputs.
        """
        convs = [m for m in self.main if isinstance(m, nn.Conv2d)]
        slopes = [m.negative_slope for m in self.main if isinstance(m, nn.LeakyReLU)]
        pre_activations, in_sizes = [], []
        with torch.no_grad():
            h = x
            for conv, slope in zip(convs, slopes):
                in_sizes.append(tuple(h.shape[-2:]))
                z = self.run_conv(conv, h)
                pre_activations.append(z)
                h = F.leaky_relu(z, slope)
        g = torch.ones(x.size(0), 1, *h.shape[-2:], dtype=x.dtype, device=x.device)
        g = conv_input_gradient(g, self.conv1, tuple(h.shape[-2:]))
        for conv, slope, z, size in reversed(list(zip(convs, slopes, pre_activations, in_sizes))):
            # autograd's own LeakyReLU backward, whose derivative in g is itself again
            g = torch.ops.aten.leaky_relu_backward(g, z, slope, False)
            g = conv_input_gradient(g, conv, size, self.as_matmul(size))
        return g
