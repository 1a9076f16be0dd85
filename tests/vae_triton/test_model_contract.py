"""The model's input contract: float inputs of another dtype are cast, anything else is refused with a
ValueError naming the argument; half and bfloat16 models work for inference; non-finite inputs to the
inference methods are refused instead of decoding to NaN images."""

import copy
import glob
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vae_triton import latent
from vae_triton.metrics import posterior_on_grid
from vae_triton.model import VAE, VAEConfig

ROOT = Path(__file__).resolve().parents[2]
DSPRITES = ROOT / "demo" / "models" / "dsprites" / "beta4"
DIGITS = ROOT / "demo" / "models" / "digits2d"
LOW_PRECISION = (torch.float16, torch.bfloat16)
# Measured on the bundled dSprites β=4 model (6 example images, 64 prior samples) against float32:
# fp16 max |Δ image| 4e-3 to 6e-3, |Δ ELBO| ≤ 0.09 nats; bf16 2.5e-2 to 4.5e-2 and ≤ 0.46 nats. The bounds
# leave about 5× headroom; the ELBO is about −82 nats per image.
BOUNDS = {torch.float16: (0.03, 0.5), torch.bfloat16: (0.25, 3.0)}


def small_model() -> VAE:
    return VAE(VAEConfig.preset("small", image_size=8, channels=(4,), hidden_dim=0, latent_dim=3))


def example_images(pattern: str) -> torch.Tensor:
    files = sorted(glob.glob(str(ROOT / pattern)))
    return torch.stack(
        [torch.from_numpy((np.asarray(Image.open(f)) > 127).astype(np.float32))[None] for f in files]
    )


@pytest.fixture(scope="module")
def dsprites():
    return VAE.from_pretrained(DSPRITES)


# ---- dtypes: cast where the intent is clear --------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_float_images_of_another_dtype_are_cast(dtype):
    model = small_model()
    x = torch.rand(2, 3, 8, 8).to(dtype)
    mu, logvar = model.encode(x)
    assert mu.dtype == logvar.dtype == torch.float32
    torch.testing.assert_close(mu, model.encode(x.float())[0])
    out = model(x)
    assert torch.isfinite(out.loss) and out.recon_nll.dtype == torch.float32
    assert model.reconstruct(x).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64], ids=str)
def test_float_latents_of_another_dtype_are_cast(dtype):
    model = small_model()
    z = torch.randn(2, 3)
    torch.testing.assert_close(model.decode(z.to(dtype)), model.decode(z.to(dtype).float()))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool], ids=str)
def test_integer_and_bool_inputs_are_refused_by_name(dtype):
    model = small_model()
    with pytest.raises(ValueError, match=r"^x must be a float tensor.*255"):
        model.encode(torch.zeros(2, 3, 8, 8, dtype=dtype))
    with pytest.raises(ValueError, match=r"^z must be a float tensor"):
        model.decode(torch.zeros(2, 3, dtype=dtype))


def test_empty_batches_are_refused_by_name():
    model = small_model()
    with pytest.raises(ValueError, match=r"^x is an empty batch"):
        model.encode(torch.rand(0, 3, 8, 8))
    with pytest.raises(ValueError, match=r"^z must be .*B ≥ 1"):
        model.decode(torch.randn(0, 3))
    digits = VAE.from_pretrained(DIGITS)
    with pytest.raises(ValueError, match=r"`x` must be a batch of at least one image"):
        posterior_on_grid(digits, torch.rand(0, 1, 28, 28))


@pytest.mark.parametrize("n", [2.5, 2.0, True, "3", None])
def test_sample_needs_an_integer_count(n):
    with pytest.raises(ValueError, match=r"^n must be a positive integer"):
        small_model().sample(n)


def test_sample_takes_numpy_integers():
    assert small_model().sample(np.int64(2)).shape == (2, 3, 8, 8)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_low_precision_models_run_inference_close_to_float32(dsprites, dtype):
    x = example_images("demo/examples/dsprites-*.png")
    eps = torch.randn(len(x), dsprites.config.latent_dim)
    low = copy.deepcopy(dsprites).to(dtype)
    image_bound, elbo_bound = BOUNDS[dtype]

    mu, logvar = low.encode(x)  # float32 images on a low-precision model: cast
    assert mu.dtype == logvar.dtype == dtype
    for a, b in (
        (low.reconstruct(x), dsprites.reconstruct(x)),
        (low.decode(mu.float()), dsprites.decode(mu.float())),
    ):
        assert a.dtype == torch.float32 and a.shape == b.shape
    assert (low.reconstruct(x) - dsprites.reconstruct(x)).abs().max() < image_bound
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    samples = low.sample(16, generator=gen())
    assert samples.dtype == torch.float32 and torch.isfinite(samples).all()
    assert (samples - dsprites.sample(16, generator=gen())).abs().max() < image_bound
    low_out, ref_out = low(x, eps=eps), dsprites(x, eps=eps)
    elbo_error = ((low_out.recon_nll + low_out.kl) - (ref_out.recon_nll + ref_out.kl)).abs().max()
    assert elbo_error < elbo_bound


# ---- non-finite inputs -----------------------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_beta_and_free_bits_are_refused(value):
    model, x = small_model(), torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"^beta must be a finite number"):
        model(x, beta=value)
    with pytest.raises(ValueError, match=r"^free_bits must be a finite number"):
        model(x, free_bits=value)


def test_a_tensor_beta_is_not_inspected():
    # The training step passes β as a device tensor: checking it would cost a host sync per step.
    out = small_model()(torch.rand(2, 3, 8, 8), beta=torch.tensor(math.nan))
    assert torch.isnan(out.loss)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_latents_are_refused(value):
    model = small_model()
    z = torch.randn(2, 3)
    z[1, 2] = value
    with pytest.raises(ValueError, match=r"^z holds NaN or infinite"):
        model.decode(z)


@pytest.mark.parametrize("temperature", [1e38, math.inf, math.nan, -1.0, "hot", True])
def test_sample_refuses_temperatures_that_give_no_image(dsprites, temperature):
    with pytest.raises(ValueError, match=r"temperature"):
        dsprites.sample(2, temperature)


def test_sample_refuses_a_temperature_that_overflows_half_precision(dsprites):
    half = copy.deepcopy(dsprites).half()
    assert torch.isfinite(half.sample(2, temperature=3.0)).all()
    with pytest.raises(ValueError, match=r"temperature=1000000.0 is too large.*float16"):
        half.sample(2, temperature=1e6)  # 1e6·z overflows float16 (max 65504)


@pytest.mark.parametrize("fn", [latent.lerp, latent.slerp])
@pytest.mark.parametrize("t", [math.nan, [0.0, math.inf]], ids=["nan", "inf-in-list"])
def test_interpolation_refuses_non_finite_fractions(fn, t):
    z0, z1 = torch.randn(4), torch.randn(4)
    with pytest.raises(ValueError, match=r"^t holds NaN or infinite"):
        fn(z0, z1, t)


@pytest.mark.parametrize("fn", [latent.lerp, latent.slerp])
def test_interpolation_refuses_non_finite_latents(fn):
    z0, z1 = torch.randn(4), torch.randn(4)
    z1[0] = math.nan
    with pytest.raises(ValueError, match=r"^z1 holds NaN or infinite"):
        fn(z0, z1, 0.5)
    with pytest.raises(ValueError, match=r"^z1 holds NaN or infinite"):
        latent.interpolate(z0, z1, 3)


def test_traversal_refuses_non_finite_values():
    with pytest.raises(ValueError, match=r"^values holds NaN or infinite"):
        latent.traverse(torch.zeros(3), [0], [0.0, math.nan])
    with pytest.raises(ValueError, match=r"^z holds NaN or infinite"):
        latent.traverse(torch.tensor([0.0, math.inf, 0.0]), [0], [1.0])
