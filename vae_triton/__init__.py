"""vae-triton: a Variational Auto-Encoder toolkit with fused Triton ELBO kernels."""

__version__ = "0.1.0"
