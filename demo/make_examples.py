"""Render the demo's example images from the procedural dSprites generator (no dataset files needed).

    python -m demo.make_examples        # rewrites demo/examples/*.png

Each example is one dSprites factor row (shape, scale, orientation, posX, posY), saved as the 64×64
grayscale PNG the bundled models were trained on.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from train.data import dsprites_images
from vae_triton.io import atomic_path

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"

# name → (shape 0 square / 1 ellipse / 2 heart, scale 0–5, orientation 0–39, posX 0–31, posY 0–31)
EXAMPLES = {
    "square-large-centre": (0, 5, 0, 16, 16),
    "ellipse-tilted-left": (1, 4, 8, 7, 12),
    "heart-small-bottom-right": (2, 1, 0, 25, 25),
    "square-rotated-top": (0, 3, 6, 20, 5),
    "heart-large-left": (2, 5, 30, 8, 18),
    "ellipse-small-right": (1, 0, 20, 27, 10),
}


def write_png_atomic(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", optimize=True)


def main() -> None:
    EXAMPLES_DIR.mkdir(parents=True, exist_ok=True)
    images = dsprites_images([list(f) for f in EXAMPLES.values()])
    for name, pixels in zip(EXAMPLES, images, strict=True):
        write_png_atomic(Image.fromarray(pixels[0], mode="L"), EXAMPLES_DIR / f"dsprites-{name}.png")
        print(EXAMPLES_DIR / f"dsprites-{name}.png")


if __name__ == "__main__":
    main()
