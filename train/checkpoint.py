"""Trainer checkpoints: weights in safetensors, the rest via torch.load(weights_only=True). No pickle.

Layout of `<out>/checkpoints/`:
    step-00001000.safetensors   model state (parameters and buffers)
    step-00001000.state.pt      optimizer state, step, RNG states, run config (tensors and primitives)
    latest.json                 {"step": 1000, "weights": ..., "state": ...}
Each file is written to a temp name and renamed; `latest.json` moves only after both files of the new
checkpoint are complete, and the old pair is deleted only after that. A crash at any point leaves the
previous checkpoint loadable.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vae_triton.io import atomic_path, remove_stale_temps, write_json_atomic

CHECKPOINT_DIR = "checkpoints"
POINTER = "latest.json"
STATE_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, or not one of ours."""


def rng_state(device: torch.device | str = "cpu") -> torch.Tensor:
    """This process's random state as one uint8 vector: the CPU generator, then `device`'s if CUDA."""
    device = torch.device(device)
    parts = [torch.get_rng_state()]
    if device.type == "cuda":
        parts.append(torch.cuda.get_rng_state(device))
    return torch.cat(parts)


def set_rng_state(state: torch.Tensor, device: torch.device | str = "cpu") -> None:
    device = torch.device(device)
    n = torch.get_rng_state().numel()
    torch.set_rng_state(state[:n].clone())
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[n:].clone(), device)


def save_checkpoint(
    out_dir: Path, model: torch.nn.Module, optimizer, step: int, run_config: dict, *, rng=None, extra=None
) -> Path:
    """Write the checkpoint for `step` under `out_dir/checkpoints` and drop the older ones.

    `rng`: every rank's random state, (world, n) uint8 (default: this process's, as world 1).
    """
    ckpt_dir = Path(out_dir) / CHECKPOINT_DIR
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(ckpt_dir)  # temp files of a writer killed mid-checkpoint
    stem = f"step-{step:08d}"
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(ckpt_dir / f"{stem}.safetensors") as tmp:
        save_file(weights, tmp, metadata={"step": str(step), "format": "pt"})
    state = {
        "format": STATE_FORMAT,
        "step": step,
        "optimizer": optimizer.state_dict(),
        "rng": rng_state()[None] if rng is None else rng,
        "run_config": json.dumps(run_config),
        "extra": json.dumps(extra or {}),
    }
    with atomic_path(ckpt_dir / f"{stem}.state.pt") as tmp:
        torch.save(state, tmp)
    pointer = {"step": step, "weights": f"{stem}.safetensors", "state": f"{stem}.state.pt"}
    write_json_atomic(ckpt_dir / POINTER, pointer)
    for f in ckpt_dir.glob("step-*"):
        if not f.name.startswith(stem):
            f.unlink(missing_ok=True)
    return ckpt_dir


def find_checkpoint(path: Path) -> Path:
    """`path` is an output dir or its checkpoints dir; return the checkpoints dir holding latest.json."""
    path = Path(path)
    for cand in (path / CHECKPOINT_DIR, path):
        if (cand / POINTER).is_file():
            return cand
    raise CheckpointError(f"no checkpoint found in {path} (expected {path / CHECKPOINT_DIR / POINTER})")


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Read and validate a checkpoint.

    Returns {"step", "model" (state dict), "optimizer", "rng", "run_config", "extra"}.
    """
    ckpt_dir = find_checkpoint(path)
    remove_stale_temps(ckpt_dir)  # temp files of a writer killed mid-checkpoint
    try:
        pointer = json.loads((ckpt_dir / POINTER).read_text())
        weights_file, state_file = ckpt_dir / pointer["weights"], ckpt_dir / pointer["state"]
        step = int(pointer["step"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt_dir / POINTER} is damaged ({e}); delete it to start over") from None
    try:
        model_state = load_file(str(weights_file), device=str(map_location))
    except Exception as e:  # safetensors' own error type for truncated or foreign bytes
        raise CheckpointError(f"{weights_file} is truncated or not a safetensors file ({e})") from None
    try:
        state = torch.load(state_file, map_location=map_location, weights_only=True)
    except Exception as e:  # zip errors for truncation, UnpicklingError for anything that is not plain data
        raise CheckpointError(
            f"{state_file} is truncated or not a vae-triton trainer state "
            f"(only tensors and plain values are accepted): {type(e).__name__}: {str(e).splitlines()[0]}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or state.get("step") != step:
        raise CheckpointError(f"{state_file} is not a vae-triton trainer state for step {step}")
    return {
        "step": step,
        "model": model_state,
        "optimizer": state["optimizer"],
        "rng": state["rng"],
        "run_config": json.loads(state["run_config"]),
        "extra": json.loads(state["extra"]),
    }
