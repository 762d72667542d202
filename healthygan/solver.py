"""Solver: builds G and D and drives them: train (WGAN-GP with the identity, reconstruction and
mask terms), test (translation grids) and testAUC (anomaly scores and AUROC).

The Solver reads as the original's and composes parts, each built from what it uses:
- build.Networks: G, and to train D and their optimizers, with the fast paths the flags ask for;
- loop.TrainStep: the critic step and the generator step with the paper's loss weights;
- checkpoints.CheckpointStore: the checkpoint files and the training state of exact resume;
- lung.LungPrior: the 'lung' score's region, saved with the run;
- aucp.AUCpLog: the label-free AUCp of every checkpoint (selection.py chooses by it), scored by a
  detector.Detector around the training G (testAUC and score build their own from the files);
- loop.Trainer: the loop; evaluation.Evaluator: test, testAUC and score.

Each mode builds only what it uses: train the networks, step, store, lung prior, AUCp log and
loop; test, testAUC and score G, the store (to load it), the lung prior and the Evaluator.
"""
import torch

from healthygan.detection.aucp import AUCpLog
from healthygan.detection.lung import LungPrior
from healthygan.detection.detector import Detector
from healthygan.device import resolve_device
from healthygan.model.losses import loss_weights
from healthygan.reports.evaluation import Evaluator
from healthygan.training.build import Networks
from healthygan.training.checkpoints import CheckpointStore
from healthygan.training.fast import generate_amp
from healthygan.training.loop import Trainer, TrainStep


class Solver:
    """Solver for training and testing HealthyGAN; keeps the parsed flags as one config."""

    def __init__(self, config, split=None):
        self.config = config
        self.device = resolve_device(config.device)
        self.split = split  # the image sets of the mode (data_loader.resolve_split)
        self.build_model()

    def build_model(self):
        """Create G (and, to train, D and their Adam optimizers) and the parts the mode uses."""
        c, device = self.config, self.device
        training = c.mode == 'train'
        self.nets = Networks(c, device, train=training)
        self.store = CheckpointStore(c, self.nets)
        self.lung = LungPrior(c, self.split, device)
        if not training:
            self.evaluator = Evaluator(c, self.split, device, self.nets, self.store, self.lung)
            return
        self.step = TrainStep(self.nets, c.lambda_gp, loss_weights(c, 'G'))
        # AUCp scores the training G as it is, eagerly in fp32 whatever the speed switches
        watcher = Detector(c.g_conv_dim, c.g_repeat_num, c.image_size, [], c.score_variant,
                           generators=[self.nets.G]).to(device)
        aucp = AUCpLog(c, self.split, watcher, self.lung, device)
        self.trainer = Trainer(c, self.split, device, self.nets, self.step, self.store, self.lung,
                               aucp)

    # The original's Solver.G, Solver.D and their optimizers (None outside training but G).
    G = property(lambda self: self.nets.G)
    D = property(lambda self: self.nets.D)
    g_optimizer = property(lambda self: self.nets.g_optimizer)
    d_optimizer = property(lambda self: self.nets.d_optimizer)

    def d_step(self, x_A, x_B, keep_fake=False):
        return self.step.d_step(x_A, x_B, keep_fake)

    def g_step(self, x_A, x_B):
        return self.step.g_step(x_A, x_B)

    def set_lr(self, g_lr, d_lr):
        self.nets.set_lr(g_lr, d_lr)

    def restore_model(self, iters, load_D=True):
        self.store.restore_model(iters, load_D)

    def translate(self, x):
        """x_hat, x_raw, mask of a test batch, under inference_mode (the original: no_grad;
        same values), with the fast paths of the networks."""
        n = self.nets
        n.G.train()
        with torch.inference_mode():
            x_hat, x_raw, mask, _ = generate_amp(n.G_run, n.to_layout(x), n.amp_dtype)
        return x_hat, x_raw, mask

    def train(self):
        """Train HealthyGAN on (mixed, healthy) pairs: the original's loop, resumable."""
        self.trainer.train()

    def test(self):
        """Write translation grids (input, raw, blended, mask for a mixed and a healthy image)."""
        self.evaluator.test()

    def test_auc(self):
        """Score every test image; AUROC and the other metrics, maps, metrics.json, report."""
        return self.evaluator.test_auc()

    testAUC = test_auc  # the original's name for the mode

    def score_folder(self):
        """Score every image below --score_dir, unlabelled (--mode score)."""
        return self.evaluator.score_folder()
