"""Held-out numbers during training: the ELBO terms on fixed images with fixed noise (`evaluate_fixed`),
the held-out ELBO curve and the best model by it (`HeldOutTracker`, `--eval-every`, `--keep-best`), the
split they are measured on (`held_out_dataset`), and the reconstruction/sample grids."""

from __future__ import annotations

from pathlib import Path

import torch

from vae_triton.metrics import active_units, bits_per_dim, bpd_convention, is_binary, kl_per_dim
from vae_triton.model import VAE

from .config import RunConfig
from .data import DataUnavailableError, ImageDataset, dataset_for_split
from .report import interleave_rows, save_grid

GRID = 64  # images in the reconstruction and sample grids


@torch.no_grad()
def evaluate_fixed(model: VAE, x: torch.Tensor, *, seed: int = 0) -> dict:
    """ELBO terms, per-dim KL and active units on fixed images with fixed noise (no global RNG use)."""
    was_training = model.training
    model.eval()
    g = torch.Generator(device="cpu").manual_seed(seed)
    recon, kl, mus, lvs = [], [], [], []
    for chunk in x.split(256):
        eps = torch.randn(chunk.shape[0], model.config.latent_dim, generator=g).to(chunk.device)
        out = model(chunk, eps=eps)
        recon.append(out.recon_nll)
        kl.append(out.kl)
        mus.append(out.mu.float())
        lvs.append(out.logvar.float())
    model.train(was_training)
    mu, logvar = torch.cat(mus), torch.cat(lvs)
    recon_m, kl_m = torch.cat(recon).mean().item(), torch.cat(kl).mean().item()
    result = {
        "eval_recon": recon_m,
        "eval_kl": kl_m,
        "eval_elbo": -(recon_m + kl_m),
        "kl_per_dim": [round(v, 4) for v in kl_per_dim(mu, logvar, model.config.logvar_clamp).tolist()],
        "active_units": active_units(mu),
        "eval_images": int(x.shape[0]),
    }
    # bits/dim with D = C·H·W of the data, in the likelihood's convention (none for a Bernoulli decoder on
    # grey pixels: its NLL is no likelihood of that data); train.evaluate asks the same function.
    convention = bpd_convention(model, is_binary(x))
    if convention is not None:
        nll = recon_m + kl_m
        result["eval_bpd"] = bits_per_dim(nll, model.config.num_pixels, dequantized=convention.dequantized)
        result["eval_bpd_convention"] = convention.label
    return result


@torch.no_grad()
def save_grids(model: VAE, x: torch.Tensor, out: Path, step: int | None) -> None:
    """Reconstructions of fixed images and prior samples at a fixed seed."""
    was_training = model.training
    model.eval()
    cols = min(8, len(x))
    half = x[: min(GRID // 2, len(x)) // cols * cols]  # whole rows only (tiny datasets)
    recon = interleave_rows(half.cpu(), model.reconstruct(half).cpu(), cols=cols)
    samples = model.sample(GRID, generator=torch.Generator(device="cpu").manual_seed(0))
    model.train(was_training)
    scale = 2 if model.config.image_size <= 32 else 1
    if step is None:
        save_grid(recon, out / "reconstructions.png", cols=cols, scale=scale)
        save_grid(samples, out / "samples.png", scale=scale)
    else:
        save_grid(recon, out / "grids" / f"recon-{step:07d}.png", cols=cols, scale=scale)
        save_grid(samples, out / "grids" / f"samples-{step:07d}.png", scale=scale)


class HeldOutTracker:
    """The held-out ELBO during training (`--eval-every`), and the best model by it (`--keep-best`).

    Evaluates the first `eval_images` images of the run's test split in batches, without gradients,
    with a fixed noise seed (`evaluate_fixed`), outside the training step. With no test split it
    tracks nothing (a training-split number is not held out).
    """

    def __init__(self, cfg: RunConfig, model: VAE, out: Path, device):
        self.cfg, self.model, self.out = cfg, model, out
        split, ds = held_out_dataset(cfg, cfg.eval_images)
        self.split = split
        self.x = ds.tensor(range(len(ds)), device) if split != cfg.split else None
        self.best: dict | None = None
        self.last: dict | None = None

    def evaluate(self, step: int, metadata: dict) -> dict | None:
        if self.x is None:
            return None
        r = evaluate_fixed(self.model, self.x)
        record = {
            "step": step,
            "heldout_split": self.split,
            "heldout_images": r["eval_images"],
            "heldout_elbo": r["eval_elbo"],
            "heldout_recon": r["eval_recon"],
            "heldout_kl": r["eval_kl"],
        }
        self.last = record
        if self.best is None or record["heldout_elbo"] > self.best["heldout_elbo"]:
            self.best = record
            if self.cfg.keep_best:
                self.model.save_pretrained(
                    self.out / "best", metadata={**metadata, "selected_by": f"{self.split} ELBO", **record}
                )
        return record

    def describe(self, record: dict) -> str:
        return (
            f"held-out ELBO {record['heldout_elbo']:.2f} nats on {record['heldout_images']} {self.split} "
            f"images (recon {record['heldout_recon']:.2f}, KL {record['heldout_kl']:.2f})"
        )

    def summary(self) -> dict:
        """Numbers for the final metadata and model card (empty when nothing was tracked)."""
        if self.best is None:
            return {}
        best = {f"best_{k}": v for k, v in self.best.items() if k not in ("heldout_split", "heldout_images")}
        return {"heldout_split": self.split, **best, "best_saved": self.cfg.keep_best}


def held_out_dataset(cfg: RunConfig, limit: int | None = None) -> tuple[str, ImageDataset]:
    """The run's test split (first `limit` images), or its training split when the data has no test
    split (e.g. a local CelebA copy without one): returns (split name, dataset)."""

    def load(split: str) -> ImageDataset:
        return dataset_for_split(cfg.to_dict(), split, limit=limit, progress=cfg.progress and not cfg.quiet)

    try:
        ds = load("test")
        if ds.split == "test":  # a loader without splits hands back everything under its own name
            return "test", ds
    except (DataUnavailableError, ValueError):
        pass
    return cfg.split, load(cfg.split)
