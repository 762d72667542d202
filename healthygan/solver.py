"""Solver: builds G and D and drives them: train (WGAN-GP with the identity, reconstruction and
mask terms), test (translation grids) and testAUC (anomaly scores and AUROC).

The Solver reads as the original's and composes parts, each built from what it uses:
- build.Networks: G, D, their optimizers and the fast paths the flags ask for;
- steps.TrainStep: the critic step and the generator step with the paper's loss weights;
- checkpoints.CheckpointStore: the checkpoint files and the training state of exact resume;
- lung.LungPrior: the 'lung' score's region, saved with the run;
- scoring.Scorer: translate and score a batch, the one pass of testAUC, score and AUCp;
- aucp.AUCpLog: the label-free AUCp of every checkpoint (selection.py chooses by it);
- training.Trainer: the loop; evaluation.Evaluator: test, testAUC and score.
"""
from healthygan.detection.lung import LungPrior
from healthygan.detection.scoring import Scorer
from healthygan.device import resolve_device
from healthygan.model.losses import loss_weights
from healthygan.reports.evaluation import Evaluator
from healthygan.training.aucp import AUCpLog
from healthygan.training.build import Networks
from healthygan.training.checkpoints import CheckpointStore
from healthygan.training.loop import Trainer
from healthygan.training.steps import TrainStep


class Solver:
    """Solver for training and testing HealthyGAN; keeps the parsed flags as one config."""

    def __init__(self, config, split=None):
        self.config = config
        self.device = resolve_device(config.device)
        self.split = split  # the image sets of the mode (data_loader.resolve_split)
        self.build_model()

    def build_model(self):
        """Create G, D and their Adam optimizers, and the parts that use them."""
        c, device = self.config, self.device
        self.nets = Networks(c, device)
        self.step = TrainStep(self.nets, c.lambda_gp, loss_weights(c, 'G'))
        self.store = CheckpointStore(c, self.nets)
        self.lung = LungPrior(c, self.split, device)
        self.scorer = Scorer(self.nets)
        aucp = AUCpLog(c, self.split, Scorer(self.nets, eager=True), self.lung, device)
        self.trainer = Trainer(c, self.split, device, self.nets, self.step, self.store, self.lung,
                               aucp)
        self.evaluator = Evaluator(c, self.split, device, self.nets, self.scorer, self.store,
                                   self.lung)

    # The networks, as the original's Solver.G / Solver.D (and the optimizers beside them).
    G = property(lambda self: self.nets.G)
    D = property(lambda self: self.nets.D)
    g_optimizer = property(lambda self: self.nets.g_optimizer)
    d_optimizer = property(lambda self: self.nets.d_optimizer)
    speed = property(lambda self: self.nets.speed)
    kept_fake = property(lambda self: self.step.kept_fake)  # --reuse_fake's kept translation

    @property
    def G_run(self):
        """G as the steps run it (compiled under --compile)."""
        return self.nets.G_run

    @G_run.setter
    def G_run(self, module):
        self.nets.G_run = module

    @property
    def D_run(self):
        """D as the steps run it (compiled under --compile)."""
        return self.nets.D_run

    @D_run.setter
    def D_run(self, module):
        self.nets.D_run = module

    def to_layout(self, x):
        return self.nets.to_layout(x)

    def set_lr(self, g_lr, d_lr):
        self.nets.set_lr(g_lr, d_lr)

    def d_step(self, x_A, x_B, keep_fake=False):
        return self.step.d_step(x_A, x_B, keep_fake)

    def g_step(self, x_A, x_B):
        return self.step.g_step(x_A, x_B)

    def restore_model(self, iters, load_D=True):
        self.store.restore_model(iters, load_D)

    def translate(self, x):
        """x_hat, x_raw, mask of a test batch (scoring.Scorer.translate)."""
        return self.scorer.translate(x)

    def read_lung_prior(self):
        return self.lung.read()

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
