"""The demo's models and computations, without Gradio: a β ladder of VAEs and what each tab computes.

Where the models come from (`resolve_ladder`), in order:
1. `checkpoint` (`--checkpoint` / `VAE_CHECKPOINT`): a run directory (`config.json` + `model.safetensors`,
   what `python -m train` or `VAE.save_pretrained` writes), or a folder of run directories (a β ladder).
   A path that does not exist is an error (a typo); one that holds no usable model → the bundled ladder,
   with a notice on the page and in the log.
2. `hub_repo` (`--hub-repo` / `VAE_HUB_REPO`), when given: the same layout in a Hugging Face model repo,
   fetched with `huggingface_hub`. Offline or unreachable → the bundled ladder, with a visible notice.
3. The bundled ladder in `demo/models/dsprites` (the default).
4. Nothing loadable: an untrained dSprites model, flagged `untrained` so the page says so loudly.
Weights load only from safetensors (`VAE.from_pretrained`): no pickle, and nothing is allocated before
the file's header matches its config. A run directory whose files the app cannot use (a β that is not a
finite number > 0, a list where a number belongs) is skipped with a notice naming the file and the field
(`Ladder.notices`); a broken `eval.json` only hides that model's evaluation.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vae_triton.latent import INTERPOLATION_MODES, interpolate, traverse
from vae_triton.metrics import (
    gap_decomposition,
    importance_weighted,
    is_binary,
    iw_bounds_by_k,
    kl_per_dim,
    log_importance_weights,
)
from vae_triton.model import CONFIG_NAME, VAE, WEIGHTS_NAME, VAEConfig

from .images import InputError

log = logging.getLogger("vae_triton.demo")

BUNDLED_DIR = Path(__file__).resolve().parent / "models" / "dsprites"
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
EVAL_NAME = "eval.json"  # written by `python -m train.evaluate` next to the model, when it was run

# Importance samples for the ELBO panel: the IW bound's K. 128 decodes answer in ~0.1–0.2 s for the
# dSprites net on 2 CPU cores; the gap it shows is a slight underestimate (the bound tightens with K).
DEFAULT_IW_SAMPLES = 128
IW_SAMPLE_CHOICES = (16, 128, 512, 2048)
ACTIVE_KL = 0.1  # nats: a latent dimension of one image with less KL than this is shown as inactive

LIMITS = {
    "frames": (2, 32),
    "n": (1, 64),
    "temperature": (0.0, 3.0),
    "num_dims": (1, 32),
    "span": (0.5, 6.0),
    "steps": (3, 15),
}


def check_range(name: str, value, *, integer: bool = False) -> float | int:
    """A UI/API number within LIMITS[name], or InputError naming it and the allowed range."""
    lo, hi = LIMITS[name]
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number in [{lo}, {hi}], got {value!r}") from None
    if not math.isfinite(number) or not lo <= number <= hi or (integer and number != int(number)):
        kind = "an integer" if integer else "a number"
        raise InputError(f"{name} must be {kind} in [{lo}, {hi}], got {value!r}")
    return int(number) if integer else number


# ---- the ladder -----------------------------------------------------------------------------------
@dataclass
class Rung:
    """One model of the ladder: its β, where it came from, and what it measured."""

    beta: float
    model: VAE
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict, repr=False)  # per-model results (the latent map)
    notices: list[str] = field(default_factory=list)  # what the page should say about it (a bad eval.json)

    @property
    def dataset(self) -> str:
        return str(self.metadata.get("dataset") or "unknown")


@dataclass
class Ladder:
    """Models of one dataset and image shape at different β, sorted by β."""

    rungs: list[Rung]
    origin: str  # "checkpoint" | "hub" | "bundled" | "untrained"
    location: str
    notices: list[str] = field(default_factory=list)
    # Models of the same data trained with another objective that the Posterior tab can switch to, by
    # label (the bundled ELBO- and IWAE-trained digits models); empty: no switch.
    objectives: dict[str, Rung] = field(default_factory=dict)

    def __post_init__(self):
        if not self.rungs:
            raise ValueError("a Ladder needs at least one model")
        bad = [r.beta for r in self.rungs if not (math.isfinite(r.beta) and r.beta > 0)]
        if bad:  # the β slider needs finite bounds (inf reaches the browser as null)
            raise ValueError(f"every β of a Ladder must be finite and > 0, got {bad}")
        self.rungs.sort(key=lambda r: r.beta)

    @property
    def untrained(self) -> bool:
        return self.origin == "untrained"

    @property
    def betas(self) -> list[float]:
        return [r.beta for r in self.rungs]

    @property
    def config(self) -> VAEConfig:
        return self.rungs[0].model.config

    @property
    def dataset(self) -> str:
        return self.rungs[0].dataset

    def pick(self, beta) -> Rung:
        """The rung whose β is nearest to `beta` (the slider snaps to it; ties go to the smaller β)."""
        try:
            b = float(beta)
        except (TypeError, ValueError):
            raise InputError(f"beta must be a number (one of {self.betas}), got {beta!r}") from None
        if not math.isfinite(b):
            raise InputError(f"beta must be finite (one of {self.betas}), got {beta!r}")
        return min(self.rungs, key=lambda r: abs(r.beta - b))


# ---- what a run directory's JSON files may hold -----------------------------------------------------
MAX_JSON_BYTES = 2**20  # eval.json and run_config.json are a few kB; a bigger file is not ours
# config.json "metadata" fields the app reads, by kind. Null (or NaN, which older runs wrote) in a number
# means undefined: the field is dropped. Other fields are kept and never shown.
METADATA_FIELDS = {
    "beta": "beta",
    "steps": "count",
    "batch_size": "count",
    "eval_images": "count",
    "active_units": "count",
    "eval_recon": "number",
    "eval_kl": "number",
    "dataset": "text",
    "eval_split": "text",
    "data_description": "text",
    "finished": "flag",
}
# eval.json (`python -m train.evaluate`): "split", and the numbers of "settings" and "metrics". A number
# may be null: undefined (train.evaluate writes null, with a sibling key saying why).
EVAL_SETTINGS_FIELDS = {"iw_samples": "count", "num_images": "count", "latent_images": "count"}
EVAL_METRICS_FIELDS = {
    "images": "count",
    "iw_samples": "count",
    "active_units": "count",
    "latent_dim": "count",
    **{
        name: "number"
        for base in ("recon_nll", "kl", "elbo", "iw_log_likelihood", "gap")
        for name in (base, f"{base}_sem")
    },
    **{name: "number" for name in ("mse", "psnr", "bpd_elbo", "bpd_iw", "mig", "active_unit_threshold")},
}
_KINDS = {
    "beta": "a finite number > 0",
    "count": "a non-negative integer or null",
    "number": "a number or null",
    "text": "a string or null",
    "flag": "true, false or null",
}


class FieldError(ValueError):
    """A value of a model folder's JSON file the app cannot use; the message names the file and field."""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_fields(doc: dict, kinds: dict[str, str], where: str) -> dict:
    """`doc` with each field of `kinds` checked: nulls and non-finite numbers dropped (undefined), other
    fields kept as they are. Raises FieldError "<where>.<field> = <value> must be <kind>"."""
    out = dict(doc)
    for name, kind in kinds.items():
        if name not in doc:
            continue
        value = doc[name]
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if value is None or (kind == "number" and is_number and not math.isfinite(value)):
            del out[name]
            continue
        ok = {
            "beta": is_number and math.isfinite(value) and value > 0,
            "count": isinstance(value, int) and not isinstance(value, bool) and value >= 0,
            "number": is_number,
            "text": isinstance(value, str),
            "flag": isinstance(value, bool),
        }[kind]
        if not ok:
            raise FieldError(f"field {where}.{name} = {_short(value)} must be {_KINDS[kind]}")
    return out


def _read_json(path: Path) -> dict | None:
    """A JSON object file; None when there is none. Raises FieldError naming the file when it is unreadable,
    larger than MAX_JSON_BYTES, not JSON, or not an object."""
    if not path.is_file():
        return None
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise FieldError(f"{path}: {size:,} bytes, more than the {MAX_JSON_BYTES:,} the app reads")
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as e:  # bad UTF-8, a 5000-digit integer, [[[[…
        raise FieldError(f"{path}: not readable JSON ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(doc, dict):
        raise FieldError(f"{path}: the top level must be a JSON object, got {type(doc).__name__}")
    return doc


def load_rung(folder: Path, device: str = "cpu") -> Rung:
    """A run directory → Rung. β comes from the model's metadata, else from `run_config.json`.

    Raises ValueError (naming the file and the field) for a model that does not load or metadata the app
    cannot show (β must be finite and > 0). A broken `eval.json` only loses the evaluation: the rung
    keeps a notice saying why (`Rung.notices`).
    """
    model = VAE.from_pretrained(folder, map_location=device)
    try:
        meta = _check_fields(dict(model.metadata), METADATA_FIELDS, "metadata")
    except FieldError as e:
        raise FieldError(f"{folder / CONFIG_NAME}: {e}") from None
    if "beta" not in meta:
        run_file = folder / "run_config.json"
        run = _read_json(run_file) or {}
        try:
            run = _check_fields(run, {"beta": "beta", "dataset": "text"}, "run_config")
        except FieldError as e:
            raise FieldError(f"{run_file}: {e}") from None
        if "beta" in run:
            meta["beta"] = run["beta"]
        meta.setdefault("dataset", run.get("dataset"))
    if "beta" not in meta:  # a bare save_pretrained folder: say so on the page rather than guess quietly
        meta["beta"], meta["beta_assumed"] = 1.0, True
    notices = []
    try:
        evaluation = read_evaluation(folder / EVAL_NAME, steps=meta.get("steps"))
    except FieldError as e:
        evaluation = {}
        notices.append(
            f"{folder.name}/{EVAL_NAME}: {_after_path(e, folder / EVAL_NAME)}; evaluation not shown"
        )
    return Rung(float(meta["beta"]), model, str(folder), meta, evaluation, notices=notices)


def _after_path(error: Exception, path: Path) -> str:
    """The message without its leading path (the notice names the file relative to the ladder)."""
    return str(error).removeprefix(f"{path}: ").removeprefix(f"{path} ")


def read_evaluation(path: Path, steps: int | None = None) -> dict:
    """`eval.json` of `python -m train.evaluate` flattened: its metrics plus the split and settings.

    {} when there is no file. Undefined numbers (null, NaN) are left out. Raises FieldError naming the file
    and the field for a value of the wrong type, or when it evaluated another step than the model's `steps`
    (the weights were replaced after the evaluation).
    """
    doc = _read_json(path)
    if doc is None or doc.get("metrics") is None:
        return {}
    evaluated = (doc.get("model") or {}).get("steps") if isinstance(doc.get("model"), dict) else None
    if steps is not None and isinstance(evaluated, int) and evaluated != steps:
        raise FieldError(
            f"{path}: field model.steps = {evaluated} is not the model's step {steps}: it evaluated earlier "
            "weights; run python -m train.evaluate again"
        )
    metrics, settings = doc["metrics"], doc.get("settings") or {}
    try:
        for name, value in (("metrics", metrics), ("settings", settings)):
            if not isinstance(value, dict):
                raise FieldError(f"field {name} = {_short(value)} must be a JSON object")
        split = _check_fields(doc, {"split": "text"}, "eval").get("split", "")
        metrics = _check_fields(metrics, EVAL_METRICS_FIELDS, "metrics")
        settings = _check_fields(settings, EVAL_SETTINGS_FIELDS, "settings")
    except FieldError as e:
        raise FieldError(f"{path}: {e}") from None
    return {**settings, **metrics, "split": split}


def find_run_dirs(path: Path) -> tuple[list[Path], list[str]]:
    """`path` itself when it is a run directory, else its sub-directories that are; plus notes on the
    sub-directories skipped (a run still training has no `model.safetensors` yet)."""
    if (path / CONFIG_NAME).is_file():
        return [path], []
    runs, skipped = [], []
    for sub in sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []:
        if (sub / CONFIG_NAME).is_file() and (sub / WEIGHTS_NAME).is_file():
            runs.append(sub)
        elif (sub / "run_config.json").is_file() or (sub / "checkpoints").is_dir():
            skipped.append(f"{sub.name}: no {WEIGHTS_NAME} yet (training unfinished?), skipped")
    return runs, skipped


def load_ladder(path: str | os.PathLike, origin: str, device: str = "cpu") -> Ladder:
    """Every run directory at `path` as one β ladder. Raises ValueError when none loads or they disagree."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"{path} does not exist: give a run directory or a folder of run directories")
    dirs, notices = find_run_dirs(path)
    rungs: list[Rung] = []
    for d in dirs:
        try:
            rungs.append(load_rung(d, device))
        except Exception as e:  # one bad rung (hostile or damaged files) must not take the ladder down
            kind = "" if isinstance(e, OSError | ValueError) else f"{type(e).__name__}: "
            notices.append(f"{d.name}: not loaded ({kind}{e})")
            log.warning(notices[-1], exc_info=bool(kind))  # an unexpected error: keep its traceback
            continue
        notices += rungs[-1].notices
        if rungs[-1].metadata.get("beta_assumed"):
            notices.append(f"{d.name}: no β in its metadata or run_config.json, shown as β = 1")
    if not rungs:
        detail = "; ".join(notices) or f"no sub-directory has {CONFIG_NAME} and {WEIGHTS_NAME}"
        raise ValueError(f"no model could be loaded from {path}: {detail}")
    shapes = {(r.model.config.image_channels, r.model.config.image_size) for r in rungs}
    datasets = {r.dataset for r in rungs}
    if len(shapes) > 1 or len(datasets) > 1:
        listing = ", ".join(
            f"{Path(r.source).name} ({r.dataset}, {r.model.config.image_channels}×"
            f"{r.model.config.image_size}²)"
            for r in rungs
        )
        raise ValueError(
            f"the models in {path} are not one ladder (different data or image shape): {listing}"
        )
    by_beta: dict[float, Rung] = {}
    for r in rungs:  # two runs at one β: keep the longer-trained one
        kept = by_beta.get(r.beta)
        if kept is None or int(r.metadata.get("steps") or 0) > int(kept.metadata.get("steps") or 0):
            if kept is not None:
                notices.append(
                    f"β={r.beta:g}: {Path(kept.source).name} ignored, {Path(r.source).name} has more steps"
                )
            by_beta[r.beta] = r
        else:
            notices.append(
                f"β={r.beta:g}: {Path(r.source).name} ignored, {Path(kept.source).name} has more steps"
            )
    return Ladder(list(by_beta.values()), origin, str(path), notices)


def download_hub_ladder(repo_id: str) -> Path:
    """Fetch the configs, weights and eval files of a Hub model repo (a run dir or a ladder of them)."""
    from huggingface_hub import snapshot_download

    patterns = [CONFIG_NAME, WEIGHTS_NAME, EVAL_NAME, "run_config.json"]
    patterns += [f"*/{p}" for p in patterns]
    return Path(snapshot_download(repo_id, allow_patterns=patterns))


def untrained_ladder(reason: str, device: str = "cpu") -> Ladder:
    model = VAE(VAEConfig.preset("dsprites")).to(device).eval()
    rung = Rung(1.0, model, "random initialisation", {"dataset": "dsprites", "steps": 0})
    return Ladder([rung], "untrained", "random initialisation", [reason])


def resolve_ladder(
    checkpoint: str | os.PathLike | None = None,
    hub_repo: str | None = None,
    bundled_dir: str | os.PathLike | None = BUNDLED_DIR,
    device: str = "cpu",
) -> Ladder:
    """The models the app serves (see the module docstring for the order)."""
    notices = []
    if checkpoint:
        if not Path(checkpoint).expanduser().exists():  # a typo: say so instead of serving something else
            raise ValueError(
                f"{checkpoint} does not exist: give a run directory or a folder of run directories"
            )
        try:
            return load_ladder(checkpoint, "checkpoint", device)
        except ValueError as e:  # nothing usable there: serve the bundled models, and say so loudly
            notices.append(
                f"⚠️ No usable model in --checkpoint `{checkpoint}` ({e}); showing the bundled dSprites "
                "models instead."
            )
            log.warning(notices[-1])
    if hub_repo:
        try:
            ladder = load_ladder(download_hub_ladder(hub_repo), "hub", device)
            ladder.location = f"huggingface.co/{hub_repo}"
            return ladder
        except Exception as e:  # offline, no such repo, or a repo without models: fall back, visibly
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
            notices.append(
                f"Could not load the Hub repo `{hub_repo}` ({type(e).__name__}: {first_line}); "
                "showing the bundled dSprites models instead."
            )
            log.warning(notices[-1])
    try:
        if bundled_dir is None:
            raise ValueError("no bundled models configured")
        ladder = load_ladder(bundled_dir, "bundled", device)
    except ValueError as e:
        return untrained_ladder(" ".join(notices + [f"No trained model found ({e})."]), device)
    ladder.notices = notices + ladder.notices
    return ladder


# ---- what the tabs compute ------------------------------------------------------------------------
def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed))


def _check_image(x: torch.Tensor, model: VAE) -> torch.Tensor:
    c, s = model.config.image_channels, model.config.image_size
    if x.shape != (1, c, s, s):
        raise InputError(
            f"internal: image tensor {tuple(x.shape)} does not match the model's (1, {c}, {s}, {s})"
        )
    return x.to(next(model.parameters()).device)


@torch.no_grad()
def reconstruct(rung: Rung, x: torch.Tensor, iw_samples: int = DEFAULT_IW_SAMPLES, seed: int = 0):
    """Reconstruction from μ(x) and every term of log p(x) = ELBO + KL[q(z|x) ‖ p(z|x)] for one image.

    Returns (reconstruction (1, C, H, W), stats). The K posterior samples are seeded, so the same image
    gives the same numbers; the recon term and the IW bound share those K samples (a low-noise gap).
    """
    model = rung.model
    x = _check_image(x, model)
    try:
        number = float(iw_samples)
    except (TypeError, ValueError):
        number = 0.5  # not a count: rejected below
    k = int(number) if number.is_integer() else 0
    if not 1 <= k <= max(IW_SAMPLE_CHOICES):
        raise InputError(
            f"iw_samples must be an integer in [1, {max(IW_SAMPLE_CHOICES)}], got {iw_samples!r}"
        )
    generator = _generator(seed) if x.device.type == "cpu" else torch.Generator(x.device).manual_seed(seed)
    est = importance_weighted(model, x, k, generator=generator)
    recon_image = model.reconstruct(x)
    recon, kl = est.recon_nll.item(), est.kl.item()
    stats = {
        "beta": rung.beta,
        "recon_nll": recon,
        "kl": kl,
        "beta_kl": rung.beta * kl,
        "loss": recon + rung.beta * kl,
        "elbo": est.elbo.item(),
        "iw_log_likelihood": est.log_likelihood.item(),
        "gap": est.gap.item(),
        "iw_samples": k,
        "num_pixels": int(x[0].numel()),
        "likelihood": model.config.likelihood,
        "binary_input": is_binary(x),
    }
    return recon_image.cpu(), stats


@torch.no_grad()
def interpolate_images(
    rung: Rung, xa: torch.Tensor, xb: torch.Tensor, frames: int, mode: str
) -> torch.Tensor:
    """Decode `frames` evenly spaced points between μ(a) and μ(b): (frames, C, H, W) in [0, 1]."""
    frames = check_range("frames", frames, integer=True)
    if mode not in INTERPOLATION_MODES:
        raise InputError(f"mode must be one of {INTERPOLATION_MODES}, got {mode!r}")
    model = rung.model
    mu_a, _ = model.encode(_check_image(xa, model))
    mu_b, _ = model.encode(_check_image(xb, model))
    path = interpolate(mu_a[0], mu_b[0], frames, mode=mode)
    return model.output_to_image(model.decode(path)).cpu()


@torch.no_grad()
def sample_images(rung: Rung, n: int, temperature: float, seed: int) -> torch.Tensor:
    """n prior samples z ~ N(0, temperature²·I), decoded to mean images: (n, C, H, W)."""
    n = check_range("n", n, integer=True)
    temperature = check_range("temperature", temperature)
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise InputError(f"seed must be an integer, got {seed!r}") from None
    if not 0 <= seed < 2**63:
        raise InputError(f"seed must be in [0, 2**63), got {seed}")
    return rung.model.sample(n, temperature=temperature, generator=_generator(seed)).cpu()


@torch.no_grad()
def traverse_image(rung: Rung, x: torch.Tensor, num_dims: int, span: float, steps: int):
    """Vary each of the `num_dims` latent dimensions with the most KL for this image over [−span, span]
    (the others stay at μ(x)). Returns (images (rows, steps, C, H, W), [(dim, kl_nats), ...], values)."""
    num_dims = check_range("num_dims", num_dims, integer=True)
    span = check_range("span", span)
    steps = check_range("steps", steps, integer=True)
    model = rung.model
    mu, logvar = model.encode(_check_image(x, model))
    kl = kl_per_dim(mu, logvar, model.config.logvar_clamp)
    order = torch.argsort(kl, descending=True)[: min(num_dims, kl.numel())].tolist()
    values = torch.linspace(-span, span, steps)
    latents = traverse(mu[0], order, values.to(mu.device, mu.dtype))
    images = model.output_to_image(model.decode(latents.reshape(-1, latents.shape[-1])))
    ranked = [(d, float(kl[d])) for d in order]
    return images.reshape(len(order), steps, *images.shape[1:]).cpu(), ranked, values.tolist()


# ---- the Posterior tab: 2-latent models only --------------------------------------------------------
POSTERIOR_DIR = Path(__file__).resolve().parent / "models" / "digits2d"
# The same data, network and budget trained on the IWAE bound; the tab offers a switch when it is there.
POSTERIOR_IWAE_DIR = Path(__file__).resolve().parent / "models" / "digits2d_iwae"
IW_KS = (1, 10, 100, 1000)  # the IW bounds the tab shows
IW_DRAWS = 10  # independent draws of each bound shown, so one draw's luck is visible as spread
# Log weights drawn per image: IW_DRAWS disjoint groups of the largest K (K = 1 gets 10,000 draws).
IW_WEIGHTS = IW_DRAWS * max(IW_KS)
# The posterior grid: 24² coarse points per zoom level, then 64² (vae_triton.posterior).
GRID_OPTIONS = {"n": 64, "coarse": 24}
MAP_TILES, MAP_EXTENT = 15, 3.0  # the latent map decodes 15 × 15 codes over [−3, 3]²
WINDOW_TILES = 8  # the decoded map behind the posterior window


def objective_label(rung: Rung) -> str:
    """ "ELBO-trained" or "IWAE-trained (K = k)", from the model's metadata (`objective`, `iw_k`), else
    from its folder's name."""
    meta = rung.metadata
    objective = str(meta.get("objective") or "").lower()
    if "iwae" not in objective and (objective or "iwae" not in Path(rung.source).name.lower()):
        return "ELBO-trained"
    k = next((meta[f] for f in ("iw_k", "iwae_k", "k") if isinstance(meta.get(f), int)), None)
    return "IWAE-trained" + (f" (K = {k})" if k else "")


def posterior_ladder(
    ladder: Ladder,
    bundled_dir: str | os.PathLike | None = POSTERIOR_DIR,
    iwae_dir: str | os.PathLike | None = None,
):
    """The models the Posterior tab explores, or (None, why not).

    The served ladder when its latent space is 2-D (β then picks the model as on every tab); with the
    bundled dSprites ladder (10-D), the bundled 2-latent digits model, and when `iwae_dir` (default
    POSTERIOR_IWAE_DIR, read when called) holds a model of the same data and shape, both by training
    objective (`Ladder.objectives`); otherwise None and a message saying how to get a 2-latent model.
    """
    dim = ladder.config.latent_dim
    if dim == 2:
        return ladder, ""
    if ladder.origin in ("bundled", "untrained") and bundled_dir is not None:
        try:
            digits = load_ladder(bundled_dir, "bundled")
        except ValueError as e:
            log.warning("no bundled 2-latent model for the Posterior tab: %s", e)
        else:
            digits.objectives = _objectives(digits, POSTERIOR_IWAE_DIR if iwae_dir is None else iwae_dir)
            return digits, ""
    return None, (
        f"The Posterior tab computes the exact posterior on a 2-D grid, so it needs a model with 2 latent "
        f"dimensions; this one has {dim}. Train one with `python -m train ... --latent-dim 2` and start the "
        "app with `--checkpoint` pointing at it."
    )


def _objectives(digits: Ladder, iwae_dir) -> dict[str, Rung]:
    """{label: rung} for the switch: the bundled model and the IWAE-trained one, or {} when that one is
    missing or does not fit (another image shape, data or latent size: said in the log)."""
    if not Path(iwae_dir).is_dir():
        return {}
    try:
        other = load_ladder(iwae_dir, "bundled").rungs[0]
    except ValueError as e:
        log.warning("the IWAE-trained digits model is not offered: %s", e)
        return {}
    first, cfg = digits.rungs[0], digits.config
    mismatch = [
        name
        for name, a, b in (
            ("latent_dim", other.model.config.latent_dim, 2),
            (
                "image shape",
                (other.model.config.image_channels, other.model.config.image_size),
                (cfg.image_channels, cfg.image_size),
            ),
            ("dataset", other.dataset, first.dataset),
        )
        if a != b
    ]
    if mismatch:
        log.warning("the IWAE-trained digits model in %s is not offered: its %s differ", iwae_dir, mismatch)
        return {}
    labels = [objective_label(first), objective_label(other)]
    if labels[0] == labels[1]:
        labels = [f"{labels[0]} ({Path(r.source).name})" for r in (first, other)]
    return dict(zip(labels, (first, other), strict=True))


def _cell_centres(lo: float, hi: float, n: int) -> torch.Tensor:
    return lo + (torch.arange(n, dtype=torch.float32) + 0.5) * (hi - lo) / n


def _decode_map(model: VAE, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Decode the codes (z1_j, z2_i) and tile them: rows from the largest z₂ down, columns by z₁.
    Returns (H, W) for grey or (H, W, 3) for colour, in [0, 1]."""
    rows = torch.stack(torch.meshgrid(z2.flip(0), z1, indexing="ij"), dim=-1)[..., [1, 0]]  # (r, c, 2)
    device = next(model.parameters()).device
    images = model.output_to_image(model.decode(rows.reshape(-1, 2).to(device))).cpu()
    c, s = images.shape[1], images.shape[-1]
    tiled = images.view(len(z2), len(z1), c, s, s).permute(0, 3, 1, 4, 2).reshape(len(z2) * s, len(z1) * s, c)
    return tiled[..., 0] if c == 1 else tiled


@torch.no_grad()
def latent_map(rung: Rung) -> torch.Tensor:
    """The decoded latent map over [−MAP_EXTENT, MAP_EXTENT]², computed once per model."""
    if "latent_map" not in rung.cache:
        centres = _cell_centres(-MAP_EXTENT, MAP_EXTENT, MAP_TILES)
        rung.cache["latent_map"] = _decode_map(rung.model, centres, centres)
    return rung.cache["latent_map"]


def map_pixel_to_z(x: float, y: float, width: int, height: int) -> tuple[float, float]:
    """A pixel (x right, y down) of the latent map image → the code z = (z₁, z₂) it shows."""
    span = 2 * MAP_EXTENT
    return -MAP_EXTENT + (x + 0.5) / width * span, MAP_EXTENT - (y + 0.5) / height * span


@torch.no_grad()
def decode_code(rung: Rung, z1, z2) -> torch.Tensor:
    """One code → its decoded mean image (1, C, H, W)."""
    try:
        z = torch.tensor([[float(z1), float(z2)]])
    except (TypeError, ValueError):
        raise InputError(f"z must be two numbers, got ({z1!r}, {z2!r})") from None
    if not torch.isfinite(z).all():
        raise InputError(f"z must be finite, got ({z1!r}, {z2!r})")
    model = rung.model
    return model.output_to_image(model.decode(z.to(next(model.parameters()).device))).cpu()


def _log_normal_grid(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; μ, diag e^logvar) on a (n, n, 2) grid: (n, n) nats."""
    return (-0.5 * (z - mu) ** 2 / logvar.exp() - 0.5 * logvar - 0.5 * math.log(2 * math.pi)).sum(-1)


def iw_draws(log_w: torch.Tensor, k: int, draws: int = IW_DRAWS) -> list[float]:
    """The first `draws` independent K-sample bounds log (1/K) Σ w from disjoint groups of (S,) weights."""
    groups = min(draws, log_w.shape[0] // k)
    return (torch.logsumexp(log_w[: groups * k].view(groups, k), dim=1) - math.log(k)).tolist()


@torch.no_grad()
def explore_posterior(rung: Rung, x: torch.Tensor, seed: int = 0) -> dict:
    """Everything the Posterior tab shows for one image: the grid posterior, q, q*, both gaps, the IW
    bounds by K.

    Returns a dict of tensors/numbers (nats): the `PosteriorGrid` fields of image 0, mu/std of q, the
    best diagonal Gaussian q* (mu_star, std_star, log_q_star on the grid) with the approximation and
    amortisation gaps (`vae_triton.metrics.gap_decomposition`), the decoded map of the grid's window, and
    iw_means / iw_sems for IW_KS from IW_WEIGHTS log weights with IW_DRAWS single draws of each.
    """
    model = rung.model
    x = _check_image(x, model)
    gaps = gap_decomposition(model, x, **GRID_OPTIONS)
    grid = gaps.grid
    mu, logvar = model.encode(x)
    generator = _generator(seed) if x.device.type == "cpu" else torch.Generator(x.device).manual_seed(seed)
    log_w = log_importance_weights(model, x, IW_WEIGHTS, generator=generator)
    bounds = iw_bounds_by_k(log_w, IW_KS)
    z = grid.z[0].float()
    window = _decode_map(
        model,
        _cell_centres(z[0, 0, 0].item(), z[-1, 0, 0].item(), WINDOW_TILES),
        _cell_centres(z[0, 0, 1].item(), z[0, -1, 1].item(), WINDOW_TILES),
    )
    return {
        "log_px": grid.log_px.item(),
        "elbo": grid.elbo.item(),
        "kl_to_posterior": grid.kl_to_posterior.item(),
        "best_elbo": gaps.best_elbo.item(),
        "approximation_gap": gaps.approximation_gap.item(),
        "amortisation_gap": gaps.amortisation_gap.item(),
        "q_mass": grid.q_mass.item(),
        "z": grid.z[0].cpu().numpy(),
        "log_posterior": grid.log_posterior[0].cpu().numpy(),
        "log_q": grid.log_q[0].cpu().numpy(),
        "log_q_star": _log_normal_grid(grid.z[0], gaps.best_mu[0], gaps.best_logvar[0]).cpu().numpy(),
        "mu": mu[0].double().cpu().numpy(),
        "std": (0.5 * logvar[0].double().clamp(*model.config.logvar_clamp)).exp().cpu().numpy(),
        "mu_star": gaps.best_mu[0].cpu().numpy(),
        "std_star": (0.5 * gaps.best_logvar[0]).exp().cpu().numpy(),
        "window_map": window.numpy(),
        "iw_ks": list(IW_KS),
        "iw_means": bounds.mean[:, 0].tolist(),
        "iw_sems": bounds.sem[:, 0].tolist(),
        "iw_draws": [iw_draws(log_w[:, 0], k) for k in IW_KS],
    }


def rate_distortion_points(ladder: Ladder) -> list[tuple[float, float, float]]:
    """(β, rate = KL, distortion = recon NLL) per rung, held-out means in nats: from eval.json
    (`python -m train.evaluate`), else the final held-out evaluation in the model's metadata."""
    points = []
    for r in ladder.rungs:
        ev, meta = r.evaluation, r.metadata
        if "kl" in ev and "recon_nll" in ev:
            points.append((r.beta, float(ev["kl"]), float(ev["recon_nll"])))
        elif "eval_kl" in meta and "eval_recon" in meta:
            points.append((r.beta, float(meta["eval_kl"]), float(meta["eval_recon"])))
    return points
