"""What `python -m train` prints: a start block, log lines, notices and a final block.

Everything a user reads goes through `Console`, so `--quiet` (warnings and errors only) and
non-main DDP ranks (silent) are one decision. Progress bars are tqdm's, switched by `progress=` down to
the cache builders (`--no-progress` and `--quiet` silence them all).
"""

from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def human_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def cache_summary(images, cache_dir: Path) -> str:
    """Where the dataset's uint8 cache lives and how big it is (or that there is no file behind it)."""
    if hasattr(images, "render"):  # dSprites: train.dsprites.RenderedImages
        return "none needed: each batch is rendered from its factors on the training device"
    filename = getattr(images, "filename", None)
    if filename:
        path = Path(filename)
        return f"{path} ({human_bytes(path.stat().st_size)})"
    files = [p for p in Path(cache_dir).rglob("*") if p.is_file()] if Path(cache_dir).is_dir() else []
    total = sum(p.stat().st_size for p in files)
    return f"no cache file for this data (held in memory); {cache_dir} holds {human_bytes(total)}"


def kept_words(final: dict) -> str:
    """Which model the final block's numbers are for: the kept step, the split that chose it, and what
    the held-out curve did after it."""
    if final.get("kept_by") != "best":
        return f"the last step's ({final['step']:,})"
    text = (
        f"step {final['kept_step']:,}, the best ELBO on the {final['heldout_split']} split "
        f"({final['best_heldout_elbo']:.2f})"
    )
    if final.get("after_kept_evaluations"):
        share = 100 * final["after_kept_change"] / abs(final["best_heldout_elbo"])
        text += f"; after it {share:+.2f} % by step {final['after_kept_last_step']:,}"
    elif final.get("heldout_evaluations") == 1:
        text += "; one evaluation: no trend to choose by"
    else:
        text += "; still improving at the last evaluation"
    return text


class Console:
    """stdout for the story of a run, stderr for warnings; `quiet` keeps only warnings and errors."""

    def __init__(self, *, quiet: bool = False, is_main: bool = True):
        self.quiet, self.is_main = quiet, is_main

    def say(self, text: str = "") -> None:
        if self.is_main and not self.quiet:
            print(text, flush=True)

    def warn(self, text: str) -> None:
        if self.is_main:
            print(f"warning: {text}", file=sys.stderr, flush=True)

    def notice(self, text: str) -> None:
        """Something the user should know even in a script (it changes what the run does)."""
        if self.is_main:
            print(f"note: {text}", file=sys.stderr, flush=True)

    def table(self, title: str, rows: list[tuple[str, str]]) -> None:
        width = max(len(k) for k, _ in rows)
        self.say(title)
        for key, value in rows:
            self.say(f"  {key:<{width}}  {value}")

    def start_block(
        self,
        *,
        cfg,
        dataset,
        model,
        device: str,
        total: int,
        start: int,
        cache: str,
        plan: str = "",
        selection: str = "",
    ) -> None:
        c = model.config
        steps = f"{total:,}" if not start else f"{start:,} → {total:,} (resumed)"
        epochs = total * cfg.batch_size / max(len(dataset), 1)
        self.table(
            "python -m train",
            [
                ("device", device),
                (
                    "data",
                    f"{cfg.dataset}/{dataset.split}: {len(dataset):,} images of "
                    f"{'×'.join(map(str, dataset.image_shape))}",
                ),
                (
                    "model",
                    f"{cfg.preset} preset, latent {c.latent_dim}, {c.likelihood} likelihood, "
                    f"{model.num_parameters():,} parameters",
                ),
                ("batch", f"{cfg.batch_size}, β = {cfg.beta:g}, lr {cfg.lr:g}"),
                ("steps", f"{steps} ({epochs:.3g} epochs, {cfg.lr_schedule} learning rate)"),
                *([("plan", plan)] if plan else []),
                *([("kept", selection)] if selection else []),
                ("output", str(Path(cfg.out).resolve())),
                ("cache", cache),
            ],
        )

    def log_line(self, record: dict, total: int, seconds_per_step: float) -> None:
        """One line per logging window when no progress bar shows the numbers."""
        step = record["step"]
        eta = human_seconds((total - step) * seconds_per_step)
        self.say(
            f"step {step:>{len(str(total))}}/{total}  loss {record['loss']:.2f}  "
            f"recon {record['recon']:.2f}  KL {record['kl']:.2f} nats  β {record['beta']:g}  "
            f"{record['img_per_s']:,.0f} img/s  eta {eta}"
        )

    def final_block(
        self,
        *,
        final: dict,
        out: Path,
        elapsed: float,
        reproduce: str,
        likelihood: str,
        lr_schedule: str = "constant",
    ) -> None:
        out = Path(out)
        recon, kl = final["eval_recon"], final["eval_kl"]
        held_out = final["eval_split"] != "train"
        rows = [
            (
                "held-out" if held_out else "training",
                f"{final['eval_images']} images of the {final['eval_split']} split, one "
                "posterior sample each, nats per image",
            ),
            ("recon NLL", f"{recon:.2f}"),
            ("KL", f"{kl:.2f}"),
            ("ELBO", f"{-(recon + kl):.2f}"),
        ]
        if "eval_bpd" in final:
            convention = final.get("eval_bpd_convention", "dequantized 8-bit")
            rows.append(("bits/dim", f"{final['eval_bpd']:.4f} (ELBO bound, {convention})"))
        rows += [
            ("active units", str(final["active_units"])),
            ("elapsed", human_seconds(elapsed)),
            ("throughput", f"{final['img_per_s']:,.0f} img/s (median over logging windows)"),
        ]
        rows.append(("kept", kept_words(final)))
        self.table(f"done: {final['step']:,} steps", rows)
        if not held_out:
            self.warn(
                "the data has no test split, so these numbers are on training images: add a test/ "
                "subfolder or pass --test-fraction 0.2 to hold some out"
            )
        files = [
            ("model", out / "model.safetensors", "+ config.json"),
            ("model card", out / "README.md", "(numbers and the command that reproduces it)"),
            ("metrics", out / "metrics.jsonl", ""),
            ("pictures", out / "reconstructions.png", "samples.png, grids/"),
            (
                "checkpoint",
                out / "checkpoints",
                "(a cosine schedule spans its --steps: train longer as a new run)"
                if lr_schedule == "cosine"
                else "(continue with --resume and a larger --steps)",
            ),
        ]
        self.table("files", [(k, f"{p} {extra}".rstrip()) for k, p, extra in files])
        self.table(
            "next",
            [
                ("evaluate", f"python -m train.evaluate --checkpoint {shlex.quote(str(out))}"),
                ("serve", f"python -m demo --checkpoint {shlex.quote(str(out))}"),
                ("reproduce", reproduce),
            ],
        )
