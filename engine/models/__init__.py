"""Models as self-contained modules: the latent diffusion generator (VAE + class-conditional UNet), the
SD-style paper path, classifiers, MAE. They import torch; nothing under engine/api or engine/store imports them."""
