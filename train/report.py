"""What a run leaves for people: PNG grids and the README model card."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from vae_triton.io import atomic_path, write_text_atomic
from vae_triton.likelihoods import likelihood_for
from vae_triton.metrics import ACTIVE_UNIT_THRESHOLD
from vae_triton.model import VAEConfig


def save_grid(images: torch.Tensor, path: Path, cols: int = 8, scale: int = 1) -> Path:
    """Float images (N, C, H, W) in [0, 1] → one PNG with `cols` columns (N must be a multiple)."""
    if images.shape[0] % cols:
        raise ValueError(f"{images.shape[0]} images do not fill rows of {cols}")
    grid = rearrange(images.detach().float().clamp(0, 1).cpu(), "(r c) ch h w -> (r h) (c w) ch", c=cols)
    arr = (grid.numpy() * 255.0 + 0.5).astype(np.uint8)
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def interleave_rows(originals: torch.Tensor, recons: torch.Tensor, cols: int = 8) -> torch.Tensor:
    """Rows alternate originals / reconstructions, `cols` images each."""
    a = rearrange(originals, "(r c) ch h w -> r c ch h w", c=cols)
    b = rearrange(recons, "(r c) ch h w -> r c ch h w", c=cols)
    return rearrange(torch.stack([a, b], dim=1), "r two c ch h w -> (r two c) ch h w")


def model_card(run: dict, final: dict, command: str, model_cfg: dict) -> str:
    """A README for the output directory: what was trained, how, and what it measured."""
    likelihood = likelihood_for(VAEConfig.from_dict(model_cfg)).label
    latent_dim = model_cfg["latent_dim"]
    bpd = f"\n| bits/dim (ELBO bound) | {final['eval_bpd']:.4f} |" if "eval_bpd" in final else ""
    lines = f"""---
library_name: vae-triton
tags: [vae, variational-autoencoder, {run["dataset"]}]
---

# {objective_title(run)}, `{run["preset"]}` preset, β = {run["beta"]:g}, trained on {run["dataset"]}

Trained with vae-triton's `python -m train`. {objective_text(run)}

## Reproduce

```bash
{command}
```

## Final numbers

Measured on the first {final["eval_images"]} images of the `{final["eval_split"]}` split with the model kept
({_kept_words(final)}), with one posterior sample per image (the ELBO is a lower bound on log p(x)).

| quantity | value |
|---|---|
| reconstruction NLL (nats/image) | {final["eval_recon"]:.2f} |
| KL[q(z\\|x) ‖ p(z)] (nats/image) | {final["eval_kl"]:.2f} |
| −ELBO (nats/image) | {final["eval_recon"] + final["eval_kl"]:.2f} |{iw_row(final)}{bpd}
| active units (Var_x E_q[z] > {ACTIVE_UNIT_THRESHOLD:g}) | {final["active_units"]} / {latent_dim} |
| training throughput (median over logging windows) | {final["img_per_s"]:.0f} img/s on {final["device"]} |
| steps × batch | {final["step"]} × {run["batch_size"]} |

Per-dimension KL (nats, sorted): {", ".join(f"{v:.2f}" for v in sorted(final["kl_per_dim"], reverse=True))}
{splits_note(run, final)}

Likelihood: {likelihood};
latent {model_cfg["latent_dim"]}; data {model_cfg["image_channels"]}×{model_cfg["image_size"]}².

Reconstructions (odd rows: data, even rows: reconstruction from μ) and prior samples (seed 0):

![reconstructions](reconstructions.png) ![samples](samples.png)

## Load

```python
from vae_triton.model import VAE
model = VAE.from_pretrained("path/to/this/folder")   # eval mode, metadata in model.metadata
images = model.sample(16)                            # (16, C, H, W) in [0, 1]
```

Files: `model.safetensors` + `config.json` (architecture and metadata), `run_config.json` (every flag),
`metrics.jsonl` (training curves), `grids/` (reconstructions and samples during training).
"""
    return lines


def objective_title(run: dict) -> str:
    return f"IWAE (K = {run['iw_k']})" if run.get("objective") == "iwae" else "β-VAE"


def objective_text(run: dict) -> str:
    """The card's sentence on what the run maximised (`--objective`, train/objectives.py)."""
    if run.get("objective") != "iwae":
        return "Loss = mean over images of\n(reconstruction NLL + β · KL), both per-image sums in **nats**."
    k = run["iw_k"]
    return (
        f"\nObjective: `--objective iwae --iw-k {k}`, the importance-weighted bound (Burda et al. 2016).\n"
        f"Loss = −mean over images of log (1/K) Σ_k p(x|z_k) · (p(z_k) / q(z_k|x))^β with K = {k} samples\n"
        "z_k ~ q(z|x) per image, in **nats** per image (β = 1: the IW bound on log p(x))."
    )


def iw_row(final: dict) -> str:
    """The held-out IW bound row of an iwae run's card (`train.objectives.final_numbers`)."""
    if "eval_iw_bound" not in final:
        return ""
    k = final["iw_k"]
    return f"\n| −IW bound, K = {k} (nats/image, ≥ −log p(x)) | {-final['eval_iw_bound']:.2f} |"


def splits_note(run: dict, final: dict) -> str:
    """Which split each number of the card is on, the held-out tracking and a --time-limit stop."""
    lines = [
        "",
        f"Splits: the table above is on the `{final['eval_split']}` split; the training curves in "
        f"`metrics.jsonl` (`loss`, `recon`, `kl`) are on training batches of the `{run['split']}` split, "
        f"its `eval_*` lines on fixed training images and its `heldout_*` lines on the "
        f"{final.get('heldout_split', 'test')} split.",
    ]
    lines.append(kept_note(run, final))
    if "heldout_trend_change" in final:
        start, change = final["heldout_trend_from"], final["heldout_trend_change"]
        lines.append(
            f"Held-out ELBO over the last 20 % of the steps: {start:.2f} at step "
            f"{final['heldout_trend_from_step']} → {start + change:.2f} at step {final['step']}, "
            f"a change of {change:+.2f} nats ({100 * change / abs(start):+.1f} %). This is the convergence "
            "check: the closer to 0, the flatter the end of the run."
        )
    if final.get("plan"):
        lines.append(
            f"Length: {run.get('steps')} steps, {final['plan']}, with a {run.get('lr_schedule')} learning "
            "rate over them; the reproduce line gives them as `--steps`."
        )
    if "time_limit_s" in final:
        lines.append(
            f"Stopped by `--time-limit {final['time_limit_s']:g}` after {final['step']} of "
            f"{final['planned_steps']} planned steps."
        )
    return "\n".join(lines)


def kept_note(run: dict, final: dict) -> str:
    """The card's sentence on which model OUT/ holds: the step, the split that chose it, why, and what the
    held-out curve did after it (`after_kept`)."""
    step, last = final.get("kept_step", final["step"]), final["step"]
    split = final.get("heldout_split")
    if final.get("kept_by") != "best":
        why = (
            "`--no-keep-best`"
            if run.get("keep_best") is False and split == "valid"
            else "the data has no held-out split to choose on"
            if split is None
            else f"the data has no validation split (`--keep-best` would choose on the `{split}` split)"
        )
        text = f"**Model kept: the last step's ({last})**, not chosen by a held-out number: {why}."
        if "best_heldout_elbo" in final:
            text += (
                f" Its best held-out ELBO during training was {final['best_heldout_elbo']:.2f} nats/image on "
                f"the `{split}` split at step {final['best_step']}."
            )
        return text
    where = _split_words(run, split, final)
    count = final.get("heldout_evaluations", "?")
    evaluations = "its only evaluation" if count == 1 else f"{count} evaluations"
    text = (
        f"**Model kept: step {step} of {last}**, the best held-out ELBO ({final['best_heldout_elbo']:.2f} "
        f"nats/image) of {evaluations} (every {run.get('eval_every')} steps) on {where}."
    )
    if final.get("after_kept_evaluations"):
        change = final["after_kept_change"]
        share = 100 * change / abs(final["best_heldout_elbo"])
        text += (
            f" After it the held-out ELBO {'fell' if change < 0 else 'moved'} to "
            f"{final['after_kept_last']:.2f} at step {final['after_kept_last_step']} ({share:+.2f} % over "
            f"{final['after_kept_evaluations']} evaluations): the later weights were not better."
        )
    elif count == 1:
        text += " One evaluation shows no trend: give a longer run or a smaller `--eval-every` to choose."
    else:
        text += " It was the last evaluation: the held-out ELBO was still improving at the end of the run."
    return text


def _kept_words(final: dict) -> str:
    if final.get("kept_by") == "best" and final.get("kept_step") is not None:
        return f"step {final['kept_step']}, the best held-out step"
    return f"the last step, {final.get('step', '?')}"


def _split_words(run: dict, split: str, final: dict) -> str:
    words = f"{final.get('heldout_images', '?')} images of the `{split}` split"
    if split == "valid" and run.get("val_fraction"):
        words += f" (held out of the training files by `--val-fraction {run['val_fraction']:g}`)"
    elif split == "valid":
        words += " (the data's own validation split)"
    if split == final.get("eval_split"):
        words += ", the split of the table above: its numbers there are optimistic"
    return words


def after_kept(records: list[dict], kept_step: int) -> dict:
    """What the held-out ELBO did after the kept step, from the `heldout_*` lines of metrics.jsonl: the
    number of later evaluations, the last one's step and ELBO, and its change from the kept step's (nats).
    Empty when the kept step has no held-out line."""
    points = [(r["step"], r["heldout_elbo"]) for r in records if "heldout_elbo" in r]
    kept = [e for s, e in points if s == kept_step]
    if not kept:
        return {}
    later = [(s, e) for s, e in points if s > kept_step]
    if not later:
        return {"after_kept_evaluations": 0}
    return {
        "after_kept_evaluations": len(later),
        "after_kept_last_step": later[-1][0],
        "after_kept_last": later[-1][1],
        "after_kept_change": later[-1][1] - kept[-1],
    }


def heldout_trend(records: list[dict], last_share: float = 0.2) -> dict:
    """The held-out ELBO's change over the last `last_share` of the steps, from the `heldout_*` lines of
    metrics.jsonl (`--eval-every`): the convergence check (a flat curve changes by ~0 nats). Empty when
    fewer than two evaluations span that window."""
    points = [(r["step"], r["heldout_elbo"]) for r in records if "heldout_elbo" in r]
    if not points:
        return {}
    end_step, end = points[-1]
    before = [p for p in points if p[0] <= (1 - last_share) * end_step]
    if not before:
        return {}
    start_step, start = before[-1]
    return {
        "heldout_trend_from_step": start_step,
        "heldout_trend_from": start,
        "heldout_trend_change": end - start,
    }


def write_model_card(out: Path, run: dict, final: dict, command: str, model_cfg: dict) -> None:
    write_text_atomic(out / "README.md", model_card(run, final, command, model_cfg))


def read_metrics(path: Path, *, warn=None) -> list[dict]:
    """metrics.jsonl as a list of records. A torn last line (a crash mid-append) is dropped with a notice
    naming the file; a bad line anywhere else raises ValueError naming the file and the line."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.exists() else []
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if number == len(lines):
                message = f"{path}: dropped a torn last line ({len(line)} characters; {e})"
                (warn or (lambda m: print(f"warning: {m}", file=sys.stderr)))(message)
                break
            raise ValueError(
                f"{path} line {number} is not a JSON record ({e}); fix or delete that line"
            ) from None
        records.append(record)
    return records


def failure_card(run: dict, command: str, reason: str) -> str:
    """The model card of a run that failed: the reason and the command, and no numbers to quote."""
    return f"""---
library_name: vae-triton
tags: [vae, failed-run]
---

# Failed run: `{run["preset"]}` preset, β = {run["beta"]:g}, on {run["dataset"]}

**This run failed and its weights are not a result.** {reason}

No model was saved (no `model.safetensors`) and no numbers are reported. `checkpoints/` holds the last
state for inspection; `metrics.jsonl` the training curve up to the failure.

## Command

```bash
{command}
```
"""
