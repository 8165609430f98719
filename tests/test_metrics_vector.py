"""The vector metrics (metrics/vector.py): sliced Wasserstein in closed form, AUC and the ideal density's."""

import numpy as np

from dxmi_jax.metrics import vector


def test_sliced_wasserstein_closed_form():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((5000, 2))
  c = np.array([3.0, -4.0])
  # W2 between a set and its translate is |theta . c| per direction; E(theta.c)^2 = |c|^2 / 2 in 2D
  sw = vector.sliced_wasserstein(x, x + c, num_projections=20000, p=2)
  np.testing.assert_allclose(sw, np.linalg.norm(c) / np.sqrt(2), rtol=0.01)
  assert vector.sliced_wasserstein(x, x, 100) == 0.0
  assert vector.sliced_wasserstein(x, x[::-1], 100) < 1e-12  # permutation-invariant


def test_auc_and_ideal_density():
  assert vector.auc([2, 3, 4], [0, 1]) == 1.0
  assert vector.auc([0, 1], [2, 3]) == 0.0
  from dxmi_jax.data import toy2d  # pylint: disable=import-outside-toplevel

  x = toy2d.sample2d("8gaussians", 4000, np.random.default_rng(0))
  # the true density integrates to 1 over the plane (grid check) and peaks on the data
  g = np.linspace(-6, 6, 401)
  grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
  mass = np.exp(toy2d.log_density_8gaussians(grid)).sum() * (g[1] - g[0]) ** 2
  np.testing.assert_allclose(mass, 1.0, rtol=1e-3)
  noise = vector.uniform_box(4000, 2, seed=1)
  ideal = vector.auc(toy2d.log_density_8gaussians(x), toy2d.log_density_8gaussians(noise))
  assert 0.85 < ideal < 0.95
