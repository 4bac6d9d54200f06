"""orthogonalize against the NumPy reference of ALGORITHMS.md."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

import optax_muon as om
from tests import reference as ref


def _rand(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


class OrthogonalizeTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_reference_on_shapes(self):
    for shape in [(16, 48), (40, 12), (24, 24), (3, 10, 30), (2, 2, 30, 10)]:
      x = _rand(shape, seed=sum(shape))
      fn = self.variant(lambda a: om.orthogonalize(a, dtype=jnp.float32))
      got = fn(x)
      chex.assert_shape(got, shape)
      flat = x.reshape((-1,) + shape[-2:])
      want = np.stack([ref.newton_schulz(m) for m in flat]).reshape(shape)
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_presets_and_user_table(self):
    x = _rand((32, 96), seed=1)
    table = [(3.0, -3.2, 1.2), (2.5, -2.0, 0.6), (2.0, -1.5, 0.5)]
    cases = [
        (dict(ns_coeffs="quintic", ns_steps=5), ref.newton_schulz(x, 5)),
        (dict(ns_coeffs="polar_express", ns_steps=5),
         ref.newton_schulz(x, 5, "polar_express")),
        # beyond the table: the convergent tail rows
        (dict(ns_coeffs="polar_express", ns_steps=8),
         ref.newton_schulz(x, 8, "polar_express")),
        (dict(ns_coeffs=table, ns_steps=3), ref.newton_schulz(x, 3, table)),
    ]
    for kwargs, want in cases:
      got = self.variant(
          lambda a, kw=kwargs: om.orthogonalize(a, dtype=jnp.float32, **kw))(x)
      np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5, err_msg=str(kwargs))

  def test_forms_agree_with_reference(self):
    x = _rand((4, 20, 90), seed=2)
    want = np.stack([ref.newton_schulz(m) for m in x])
    for form in ("standard", "gram", "auto"):
      got = om.orthogonalize(x, dtype=jnp.float32, form=form)
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5, err_msg=form)

  def test_result_in_input_dtype_and_close_to_polar_factor(self):
    x = _rand((64, 128), seed=3)
    for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
      got = om.orthogonalize(jnp.asarray(x, dtype))
      self.assertEqual(got.dtype, dtype)
      s = np.linalg.svd(np.asarray(got, np.float64), compute_uv=False)
      # The quintic's documented band: singular values in about [0.7, 1.2].
      self.assertGreater(s.min(), 0.6)
      self.assertLess(s.max(), 1.25)
    exact = ref.polar_factor(x)
    got = np.asarray(om.orthogonalize(x), np.float64)
    cos = np.sum(got * exact) / np.linalg.norm(got) / np.linalg.norm(exact)
    self.assertGreater(cos, 0.97)

  def test_default_dtype_is_float32_on_cpu(self):
    self.assertEqual(jax.default_backend(), "cpu")
    x = _rand((8, 16))
    np.testing.assert_array_equal(
        om.orthogonalize(x), om.orthogonalize(x, dtype=jnp.float32))

  def test_bad_arguments(self):
    x = _rand((4, 8))
    with self.assertRaisesRegex(ValueError, "Unknown ns_coeffs"):
      om.orthogonalize(x, ns_coeffs="cubic")
    with self.assertRaisesRegex(ValueError, "one \\(a, b, c\\) row per step"):
      om.orthogonalize(x, ns_coeffs=[(3.0, -3.0, 1.0)], ns_steps=2)
    with self.assertRaisesRegex(ValueError, r"\(\.\.\., m, n\)"):
      om.orthogonalize(np.ones(4, np.float32))

  def test_flops_formula(self):
    self.assertEqual(om.ns_flops(384, 1536, 5),
                     5 * (4 * 384**2 * 1536 + 2 * 384**3))
    self.assertEqual(om.ns_flops(1536, 384, 5), om.ns_flops(384, 1536, 5))
