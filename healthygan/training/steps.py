"""The two updates of the training loop, as in the original code: the WGAN-GP critic step and the
generator step, each on one batch of mixed (x_A) and healthy (x_B) images."""
import torch

from healthygan.model.losses import (critic_loss, generator_loss, gradient_penalty, interpolate,
                                     mask_stats, penalty_of_gradient)
from healthygan.training.distributed import average_gradients, gp_alpha
from healthygan.training.fast import (critic, frozen, generate_amp, repeat_running_stats_update,
                                      running_stats)


class TrainStep:
    """d_step and g_step of the networks (build.Networks) with the loss weights of the flags."""

    def __init__(self, nets, lambda_gp, g_weights):
        self.nets = nets
        self.lambda_gp = lambda_gp
        self.g_weights = g_weights  # losses.loss_weights(config, 'G')
        self.kept_fake = None  # --reuse_fake: the critic step's translation, for the G step

    def d_step(self, x_A, x_B, keep_fake=False):
        """One critic update (WGAN-GP); returns the loss terms as tensors.

        keep_fake (added): a G step on the same batch follows; with --reuse_fake the translation
        of x_A is then kept, with its graph, for g_step instead of being recomputed there.
        """
        n, amp = self.nets, self.nets.amp_dtype
        x_A_given, x_A, x_B = x_A, n.to_layout(x_A), n.to_layout(x_B)
        keep = keep_fake and n.speed['reuse_fake']
        stats = running_stats(n.G) if keep else None
        keep = keep and stats is not None
        # The original ran G here with autograd on and used only the detached output: without
        # --reuse_fake no graph is needed; with it, the G step reuses this pass.
        with torch.set_grad_enabled(keep):
            fake = generate_amp(n.G_run, x_A, amp)
        self.kept_fake = (x_A_given, fake, stats) if keep else None
        x_hat_A = fake[0].detach()
        out_real, out_fake = critic(n.D_run, [x_B, x_hat_A], amp, n.speed['merge_critic'])
        alpha = gp_alpha(x_B)  # torch.rand(n, 1, 1, 1); several ranks: a slice of the global draw
        x_int = interpolate(x_B, x_hat_A, alpha)
        # The penalty's pass stays eager and fp32 under every fast path: compiled graphs do not
        # support autograd's double backward (the default form), and (||grad|| - 1)^2 with
        # ||grad|| near 1 cancels most of a 16-bit gradient's precision.
        if n.speed['gp_explicit']:  # (added) the same penalty without a double backward
            d_loss_gp = penalty_of_gradient(n.D.input_gradient(x_int))
        else:
            d_loss_gp = gradient_penalty(n.D(x_int)[1], x_int)
        d_loss, terms = critic_loss(out_real, out_fake, d_loss_gp, self.lambda_gp)

        self.update(d_loss, n.D, n.d_optimizer)
        return {tag: t.detach() for tag, t in terms.items()}

    def g_step(self, x_A, x_B):
        """One generator update with fresh forward passes; returns the loss terms as tensors."""
        n, amp = self.nets, self.nets.amp_dtype
        kept, self.kept_fake = self.kept_fake, None
        x_A_given, x_A, x_B = x_A, n.to_layout(x_A), n.to_layout(x_B)
        if kept is not None and kept[0] is x_A_given:
            # --reuse_fake (added): the critic step changed only D, so its pass of G on x_A is
            # the pass the original ran again here; only the second update of the (unused)
            # InstanceNorm running statistics is left to do.
            x_hat_A, x_raw_A, mask_A, mask_logit_A = kept[1]
            repeat_running_stats_update(kept[2])
        else:
            x_hat_A, x_raw_A, mask_A, mask_logit_A = generate_amp(n.G_run, x_A, amp)
        x_hat_B, x_raw_B, mask_B, mask_logit_B = generate_amp(n.G_run, x_B, amp)
        # Unlike the original, D's parameters take no gradient here: the G step's backward
        # computed D's weight gradients only for the next critic step to zero them (the G
        # updates are the same bit for bit: tests/test_fast.py).
        with frozen(n.D):
            out_A, out_B = critic(n.D_run, [x_hat_A, x_hat_B], amp, n.speed['merge_critic'])
        g_loss, terms, masks = generator_loss(x_A, x_raw_A, mask_A, out_A, x_B, x_raw_B, mask_B,
                                              out_B, **self.g_weights)

        self.update(g_loss, n.G, n.g_optimizer)
        terms.update({**mask_stats('OT', mask_logit_A, *masks['OT']),
                      **mask_stats('OO', mask_logit_B, *masks['OO'])})
        return {tag: t.detach() for tag, t in terms.items()}

    def update(self, loss, net, optimizer):
        """Backward of loss and one step of net's optimizer; both networks' gradients are
        cleared first, as in the original."""
        self.nets.g_optimizer.zero_grad(set_to_none=True)
        self.nets.d_optimizer.zero_grad(set_to_none=True)
        self.nets.scaler.scale(loss).backward()  # the scaler is a no-op unless --amp fp16
        average_gradients(net)  # several ranks (torchrun): mean over ranks; else no-op
        self.nets.scaler.step(optimizer)
        self.nets.scaler.update()
