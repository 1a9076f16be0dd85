"""Held-out numbers during training: the ELBO terms on fixed images with fixed noise (`evaluate_fixed`),
the held-out ELBO curve and the model kept by it (`HeldOutTracker`, `--eval-every`, `--keep-best`), the
splits they are measured on (`selection_split` picks the model, `held_out_dataset` reports it), and the
reconstruction/sample grids."""

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
    """The held-out ELBO during training (`--eval-every`), and the model kept by it (`--keep-best`).

    Evaluates the first `eval_images` images of the run's selection split (`selection_split`: the
    validation split, else the test split) in batches, without gradients, with a fixed noise seed
    (`evaluate_fixed`), outside the training step. With no held-out split it tracks nothing (a
    training-split number is not held out). With `cfg.keep_best`, each new best ELBO copies the weights
    (`best_state`, on the device: no host sync); `train.loop` checkpoints them and writes them to OUT/.
    """

    def __init__(self, cfg: RunConfig, model: VAE, device):
        self.cfg, self.model = cfg, model
        found = selection_split(cfg, cfg.eval_images)
        self.split = found[0] if found else None
        self.x = found[1].tensor(range(len(found[1])), device) if found else None
        self.select = bool(cfg.keep_best) and self.x is not None
        self.best: dict | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.evaluations = 0

    def evaluate(self, step: int) -> dict | None:
        """The held-out record of `step` (also kept as the best when it beats the best so far), or None."""
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
        self.evaluations += 1
        if self.best is None or record["heldout_elbo"] > self.best["heldout_elbo"]:
            self.best = record
            if self.select:
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return record

    def restore(self, best: dict | None, weights: dict | None, evaluations: int, device) -> None:
        """Continue from a checkpoint's best record, its weights (when selecting) and evaluation count."""
        self.best, self.evaluations = best, evaluations
        if self.select and best is not None and weights is not None:
            self.best_state = {k: v.to(device) for k, v in weights.items()}

    def keep_best_weights(self) -> dict | None:
        """Load the best weights into the model; returns the best record, or None when selection is off or
        nothing was evaluated (the model keeps the last step's weights)."""
        if not self.select or self.best_state is None:
            return None
        self.model.load_state_dict(self.best_state)
        return self.best

    def describe(self, record: dict) -> str:
        return (
            f"held-out ELBO {record['heldout_elbo']:.2f} nats on {record['heldout_images']} {self.split} "
            f"images (recon {record['heldout_recon']:.2f}, KL {record['heldout_kl']:.2f})"
        )

    def summary(self, last_step: int) -> dict:
        """Numbers for the final metadata and model card: the best evaluation and the kept model."""
        kept = {"kept_step": last_step, "kept_by": "last"}
        if self.best is None:
            return kept
        best = {f"best_{k}": v for k, v in self.best.items() if k not in ("heldout_split", "heldout_images")}
        if self.select and self.best_state is not None:
            kept = {"kept_step": self.best["step"], "kept_by": "best"}
        return {
            "heldout_split": self.split,
            "heldout_images": self.best["heldout_images"],
            "heldout_evaluations": self.evaluations,
            **best,
            **kept,
        }


def _load(cfg: RunConfig, split: str, limit: int | None) -> ImageDataset | None:
    """`split` of the run's data, or None when the data has no such split (a loader without splits hands
    back everything under its own name: that is no such split either)."""
    try:
        ds = dataset_for_split(cfg.to_dict(), split, limit=limit, progress=cfg.progress and not cfg.quiet)
    except (DataUnavailableError, ValueError):
        return None
    return ds if ds.split == split else None


def selection_split(cfg: RunConfig, limit: int | None = None) -> tuple[str, ImageDataset] | None:
    """The split the evaluations at --eval-every measure and pick the model on: `valid` (a folder's
    valid/ subfolder or --val-fraction, CelebA's official one), else `test`; never the training split.
    Returns (split name, first `limit` images) or None."""
    for split in ("valid", "test"):
        ds = _load(cfg, split, limit) if split != cfg.split else None
        if ds is not None:
            return split, ds
    return None


def held_out_dataset(cfg: RunConfig, limit: int | None = None) -> tuple[str, ImageDataset]:
    """The split of the run's reported numbers (first `limit` images): the test split, else the validation
    split, else the training split (e.g. a folder without either): returns (split name, dataset)."""
    for split in ("test", "valid"):
        ds = _load(cfg, split, limit) if split == "test" or split != cfg.split else None
        if ds is not None:
            return split, ds
    return cfg.split, dataset_for_split(
        cfg.to_dict(), cfg.split, limit=limit, progress=cfg.progress and not cfg.quiet
    )
