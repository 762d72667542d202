"""The paper's networks (G with its mask head, the PatchGAN critic) and its losses."""
