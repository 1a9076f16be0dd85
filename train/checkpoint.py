"""Trainer checkpoints: weights in safetensors, the rest via torch.load(weights_only=True). No pickle.

Layout of `<out>/checkpoints/`:
    step-00001000.safetensors   model state (parameters and buffers)
    step-00001000.state.pt      optimizer state, step, RNG states, run config (tensors and primitives)
    latest.json                 {"step": 1000, "weights": ..., "state": ..., "weights_sha256": ...}
Each file is written to a temp name and renamed; `latest.json` moves only after both files of the new
checkpoint are complete, and the old pair is deleted only after that. A crash at any point leaves the
previous checkpoint loadable.

The two files prove that they belong together: the trainer state and `latest.json` record the SHA-256 of
the weights file (byte-deterministic, `vae_triton.io.write_safetensors`), and loading compares them, so a
weights file and an optimizer state from two runs (or two steps) are refused instead of resumed.

Both files are serialized in memory first, so the free space for the pair is checked before either is
written: a full disk ends in one `DiskFullError` line that names the file and the checkpoint kept.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch
from safetensors.torch import load

from vae_triton.io import (
    ensure_free_space,
    remove_stale_temps,
    safetensors_bytes,
    write_bytes_atomic,
    write_json_atomic,
)

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
    out_dir: Path,
    model: torch.nn.Module,
    optimizer,
    step: int,
    run_config: dict,
    *,
    rng=None,
    extra=None,
    best_model: dict | None = None,
) -> Path:
    """Write the checkpoint for `step` under `out_dir/checkpoints` and drop the older ones.

    `rng`: every rank's random state, (world, n) uint8 (default: this process's, as world 1).
    `best_model`: the weights of the best held-out evaluation so far (`--keep-best`), a state dict kept in
    the trainer state so that `--resume` continues the selection.
    Raises `vae_triton.io.DiskFullError` (an OSError) when the pair does not fit; the previous checkpoint
    is then still the one `latest.json` names, and no part of the new one is left on disk.
    """
    ckpt_dir = Path(out_dir) / CHECKPOINT_DIR
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(ckpt_dir)  # temp files of a writer killed mid-checkpoint
    stem = f"step-{step:08d}"
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    weights_bytes = safetensors_bytes(weights, {"step": str(step), "format": "pt"})
    sha = hashlib.sha256(weights_bytes).hexdigest()
    state = {
        "format": STATE_FORMAT,
        "step": step,
        "weights_sha256": sha,
        "optimizer": optimizer.state_dict(),
        "rng": rng_state()[None] if rng is None else rng,
        "run_config": json.dumps(run_config),
        "extra": json.dumps(extra or {}),
    }
    if best_model is not None:
        state["best_model"] = {k: v.detach().contiguous().cpu() for k, v in best_model.items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    state_bytes = buffer.getbuffer()
    files = (ckpt_dir / f"{stem}.safetensors", ckpt_dir / f"{stem}.state.pt")
    kept = _kept(ckpt_dir)
    ensure_free_space(files[0], len(weights_bytes) + len(state_bytes), kept)
    try:
        write_bytes_atomic(files[0], weights_bytes, kept=kept)
        write_bytes_atomic(files[1], state_bytes, kept=kept)
        pointer = {"step": step, "weights": files[0].name, "state": files[1].name, "weights_sha256": sha}
        write_json_atomic(ckpt_dir / POINTER, pointer)
    except BaseException:  # a full disk, Ctrl-C: half a pair is no checkpoint, drop it
        if _pointed_stem(ckpt_dir) != stem:  # (unless latest.json names them: a re-save of its step)
            for f in files:
                f.unlink(missing_ok=True)
        raise
    for f in ckpt_dir.glob("step-*"):
        if not f.name.startswith(stem):
            f.unlink(missing_ok=True)
    return ckpt_dir


def _pointed_stem(ckpt_dir: Path) -> str | None:
    try:
        return Path(json.loads((ckpt_dir / POINTER).read_text())["weights"]).name.split(".")[0]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _kept(ckpt_dir: Path) -> str:
    """What survives a failed checkpoint write, for the error message."""
    try:
        step = int(json.loads((ckpt_dir / POINTER).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return "no earlier checkpoint exists, so none is kept"
    return f"the previous checkpoint (step {step}) in {ckpt_dir} is kept"


def find_checkpoint(path: Path) -> Path:
    """`path` is an output dir or its checkpoints dir; return the checkpoints dir holding latest.json."""
    path = Path(path)
    for cand in (path / CHECKPOINT_DIR, path):
        if (cand / POINTER).is_file():
            return cand
    raise CheckpointError(f"no checkpoint found in {path} (expected {path / CHECKPOINT_DIR / POINTER})")


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Read and validate a checkpoint.

    Returns {"step", "model" (state dict), "optimizer", "rng", "run_config", "extra", "best_model" (the
    best held-out weights, a state dict, or None)}.
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
        weights_bytes = weights_file.read_bytes()
        model_state = {k: v.to(map_location) for k, v in load(weights_bytes).items()}
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
    _check_pair(weights_file, state_file, hashlib.sha256(weights_bytes).hexdigest(), state, pointer)
    return {
        "step": step,
        "model": model_state,
        "optimizer": state["optimizer"],
        "rng": state["rng"],
        "run_config": json.loads(state["run_config"]),
        "extra": json.loads(state["extra"]),
        "best_model": state.get("best_model"),
    }


def _check_pair(weights_file: Path, state_file: Path, actual: str, state: dict, pointer: dict) -> None:
    """The weights file is the one the trainer state (and latest.json) recorded; checkpoints written
    before the hash was recorded carry none and are accepted as they are."""
    for source, recorded in (
        (state_file.name, state.get("weights_sha256")),
        (POINTER, pointer.get("weights_sha256")),
    ):
        if recorded is not None and recorded != actual:
            raise CheckpointError(
                f"{weights_file} and {state_file.name} are not one checkpoint: {source} records weights with "
                f"SHA-256 {str(recorded)[:12]}…, the file has {actual[:12]}… (two runs wrote into one "
                f"folder?). Delete {weights_file.parent} to start over, or restore a matching pair"
            )
