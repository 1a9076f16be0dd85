"""vae_triton.latent against references nobody here wrote: torch.lerp, scipy's quaternion Slerp, and the
closed form of a quarter circle."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation, Slerp

from vae_triton.latent import interpolate, lerp, slerp, traverse


def test_lerp_matches_torch_lerp_for_scalar_and_sequence_t():
    z0, z1 = torch.randn(2, 7), torch.randn(2, 7)
    t = torch.rand(5)
    got = lerp(z0, z1, t)
    assert got.shape == (5, 2, 7)
    for i, ti in enumerate(t):
        torch.testing.assert_close(got[i], torch.lerp(z0, z1, ti.item()))
    torch.testing.assert_close(lerp(z0[0], z1[0], 0.3), torch.lerp(z0[0], z1[0], 0.3))


def test_slerp_matches_scipy_quaternion_slerp():
    # Unit quaternions are 4-D unit vectors: scipy's rotation Slerp is the same great-circle formula
    # (it takes the shorter arc, so make the dot product positive first).
    q0, q1 = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    q0, q1 = q0 / q0.norm(), q1 / q1.norm()
    if torch.dot(q0, q1) < 0:
        q1 = -q1
    t = np.sort(np.random.default_rng(int(torch.randint(0, 2**31, ()))).random(6))
    ref = Slerp([0.0, 1.0], Rotation.from_quat(np.stack([q0.numpy(), q1.numpy()])))(t).as_quat()
    got = slerp(q0, q1, torch.from_numpy(t)).numpy()
    # A quaternion and its negative are the same rotation: compare up to sign.
    err = np.minimum(np.abs(got - ref).max(axis=1), np.abs(got + ref).max(axis=1))
    assert err.max() < 1e-9, err


def test_slerp_quarter_circle_closed_form_and_unit_norm():
    d = 9
    basis = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))[0]
    e0, e1 = basis[:, 0], basis[:, 1]
    t = torch.rand(11, dtype=torch.float64)
    got = slerp(e0, e1, t)
    expect = torch.cos(t * math.pi / 2)[:, None] * e0 + torch.sin(t * math.pi / 2)[:, None] * e1
    torch.testing.assert_close(got, expect)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(11, dtype=torch.float64))


def test_slerp_batched_rows_equal_single_rows_and_keep_dtype():
    z0, z1 = torch.randn(3, 16), torch.randn(3, 16)
    t = torch.linspace(0, 1, 4)
    got = slerp(z0, z1, t)
    assert got.shape == (4, 3, 16) and got.dtype == torch.float32
    for b in range(3):
        torch.testing.assert_close(got[:, b], slerp(z0[b], z1[b], t))
    torch.testing.assert_close(got[0], z0)
    torch.testing.assert_close(got[-1], z1)


def test_slerp_falls_back_to_lerp_when_parallel_or_zero():
    z = torch.randn(6, dtype=torch.float64)
    t = torch.rand(5, dtype=torch.float64)
    torch.testing.assert_close(slerp(z, 2.5 * z, t), lerp(z, 2.5 * z, t))
    zero = torch.zeros(6, dtype=torch.float64)
    torch.testing.assert_close(slerp(zero, z, t), lerp(zero, z, t))
    assert torch.isfinite(slerp(z, -z, t)).all()


@pytest.mark.parametrize("mode", ["linear", "spherical"])
def test_interpolate_includes_both_ends(mode):
    z0, z1 = torch.randn(10), torch.randn(10)
    path = interpolate(z0, z1, 7, mode=mode)
    assert path.shape == (7, 10)
    torch.testing.assert_close(path[0], z0)
    torch.testing.assert_close(path[-1], z1)
    if mode == "linear":  # evenly spaced: constant step
        steps = path.diff(dim=0)
        torch.testing.assert_close(steps, steps[:1].expand_as(steps))


def test_interpolate_rejects_bad_arguments():
    z = torch.randn(4)
    with pytest.raises(ValueError, match="mode"):
        interpolate(z, z, 5, mode="cubic")
    with pytest.raises(ValueError, match="steps"):
        interpolate(z, z, 1)
    with pytest.raises(ValueError, match="same shape"):
        lerp(z, torch.randn(5), 0.5)
    with pytest.raises(ValueError, match="z0"):
        slerp(torch.arange(4), z, 0.5)


def test_traverse_sets_one_dimension_per_row():
    z = torch.randn(8)
    before = z.clone()
    values = torch.linspace(-3, 3, 5)
    dims = [5, 0, 2]
    grid = traverse(z, dims, values)
    assert grid.shape == (3, 5, 8)
    for row, d in enumerate(dims):
        torch.testing.assert_close(grid[row, :, d], values)
        others = [i for i in range(8) if i != d]
        torch.testing.assert_close(grid[row][:, others], z[others].expand(5, 7))
    moved = traverse(z, [1], values, relative=True)
    torch.testing.assert_close(moved[0, :, 1], z[1] + values)
    assert torch.equal(z, before)  # the input is untouched


def test_traverse_rejects_bad_arguments():
    z = torch.randn(4)
    with pytest.raises(ValueError, match="out of range"):
        traverse(z, [4], [0.0])
    with pytest.raises(ValueError, match="values"):
        traverse(z, [0], [])
    with pytest.raises(ValueError, match="z must"):
        traverse(z[None], [0], [1.0])
