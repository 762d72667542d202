"""Translate and score: the one pass behind testAUC, score, the validation thresholds and the
AUCp of every checkpoint. G stays in training mode, as in the original: InstanceNorm normalises
every image with its own statistics, and the running statistics stored in the checkpoint are
never used (calling eval() would change the released model's scores)."""
import torch

from healthygan.detection import anomaly
from healthygan.training.fast import generate_amp


class Scorer:
    """G's translation of a batch and every score variant of it, with the --amp /
    --channels_last / --compile fast paths of the networks (build.Networks), or eager and fp32
    (eager=True); with a snapshot ensemble (states), the mean over its members."""

    def __init__(self, nets, eager=False):
        self.nets, self.eager = nets, eager
        self.states = []  # --ensemble N > 1: the members' G weights, the tested one last

    def translate(self, x):
        """x_hat, x_raw, mask for a batch, under inference_mode (the original: no_grad; same
        values)."""
        n = self.nets
        n.G.train()
        with torch.inference_mode():
            if self.eager:
                x_hat, x_raw, mask, _ = generate_amp(n.G, x)
            else:
                x_hat, x_raw, mask, _ = generate_amp(n.G_run, n.to_layout(x), n.amp_dtype)
        return x_hat, x_raw, mask

    def translate_scored(self, x, region=None, pixels=None):
        """(x_hat, mask, anomaly map [N,1,H,W], {variant: score [N]}) for a batch.

        With a snapshot ensemble the map and every score are the means over the members'
        translations; x_hat and mask are the tested (last) checkpoint's. region: the lung
        prior ('lung'); pixels: the healthy pixel reference (mu, scale) ('ref_z', computed from
        the ensemble's map, as its reference was).
        """
        states = self.states or [None]
        amap, variants = 0, {}
        for state in states:
            if state is not None:
                self.nets.G.load_state_dict(state)
            x_hat, _, mask = self.translate(x)
            amap = amap + anomaly.anomaly_map(x, x_hat)
            for v, s in anomaly.score_variants(x, x_hat, mask, region).items():
                variants[v] = variants.get(v, 0) + s
        n = len(states)
        amap, variants = amap / n, {v: s / n for v, s in variants.items()}
        if pixels is not None:
            variants['ref_z'] = anomaly.ref_z_score(amap, *pixels)
        return x_hat, mask, amap, variants

    def load_members(self, members, load):
        """Load each member's G weights with load(member), oldest first, so that the tested
        (last) checkpoint stays loaded; with more than one, keep every member's weights."""
        self.states = []
        for member in members:
            load(member)
            if len(members) > 1:
                self.states.append({k: v.clone() for k, v in self.nets.G.state_dict().items()})

    @torch.no_grad()
    def score_images(self, x, batch_size, device, region=None):
        """Every score variant of each image of a CPU tensor, {name: [N]}, leaving G's running
        statistics as they were (so that scoring during training changes nothing of the run,
        and a resumed run equals an unbroken one)."""
        buffers = [b.clone() for b in self.nets.G.buffers()]
        scores = {}
        for batch in torch.split(x, batch_size):
            _, _, _, variants = self.translate_scored(batch.to(device), region)
            for name, s in variants.items():
                scores.setdefault(name, []).append(s.cpu())
        for b, saved in zip(self.nets.G.buffers(), buffers):
            b.copy_(saved)
        return {name: torch.cat(s) for name, s in scores.items()}
