"""Public ops (DESIGN §3). PROVISIONAL: dispatches to the torch reference only.

The Triton kernels, torch.library registration and autograd wiring replace the bodies below; the
signatures are the public API and stay.
"""

from __future__ import annotations

import torch

from . import reference


def reparameterize_kl(mu, logvar, *, seed=None, eps=None, logvar_clamp=reference.DEFAULT_LOGVAR_CLAMP):
    gen = None
    if seed is not None and eps is None:
        gen = torch.Generator(device=mu.device)
        gen.manual_seed(int(seed))
    return reference.reparameterize_kl(mu, logvar, eps=eps, generator=gen, logvar_clamp=logvar_clamp)


def gaussian_nll(mean, x, log_sigma=0.0):
    return reference.gaussian_nll(mean, x, log_sigma)


def bernoulli_nll(logits, x):
    return reference.bernoulli_nll(logits, x)
