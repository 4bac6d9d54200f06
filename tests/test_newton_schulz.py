"""Newton–Schulz (orthogonalize, NewtonSchulz, inverse_sqrt) and the
skeleton's ways of running stacks, against the NumPy reference of
ALGORITHMS.md (tests/reference.py, float64, one matrix at a time).

Tests of float32 math pin ``dtype=jnp.float32`` (``Precision.HIGHEST``), so
they mean the same on CPU, GPU and TPU; tolerances of bfloat16 compute follow
from its 8-bit mantissa.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_muon as om
from optax_muon import _newton_schulz, _skeleton
from tests import reference as ref

# wide, tall, square and batched (a leading axis of separate matrices)
SHAPES = [(24, 80), (80, 24), (40, 40), (3, 24, 64), (2, 64, 24)]


def _rand(shape, seed):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _reference(x, preset="quintic", steps=5):
  flat = x.reshape((-1,) + x.shape[-2:])
  return np.stack([ref.newton_schulz(m, steps, preset)
                   for m in flat]).reshape(x.shape)


def _rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.linalg.norm(got - want) / np.linalg.norm(want)

@pytest.mark.parametrize("preset", ["quintic", "polar_express"])
@pytest.mark.parametrize("form", ["standard", "gram", "auto"])
def test_every_form_float32_matches_reference(form, preset):
  fn = jax.jit(lambda x: om.orthogonalize(
      x, ns_coeffs=preset, dtype=jnp.float32, form=form))
  for i, shape in enumerate(SHAPES):
    x = _rand(shape, seed=i)
    got = fn(x)
    assert got.shape == x.shape and got.dtype == jnp.float32
    # The Gram form squares the condition number of what it iterates on;
    # on a square Gaussian matrix (smallest singular value near 0) that
    # costs a few digits, still far below what float32 training notices.
    tol = 1e-4 if form == "gram" and shape[-1] == shape[-2] else 1e-5
    assert _rel_err(got, _reference(x, preset)) < tol, (form, shape)


@pytest.mark.parametrize("form", ["standard", "gram", "auto"])
def test_gram_form_on_ill_conditioned_wide_matrix(form):
  """Singular values from 1 to 1e-4. The Gram form iterates on ``X X^T``,
  whose float32 rounding (``1e-7`` of its largest eigenvalue) blurs the
  smallest singular directions: its error is about ``3e-4`` where the
  standard form's is ``1e-5`` -- still 100x below bfloat16's (the GPU
  default), and the singular values stay within ``5e-4`` of the
  reference's."""
  rng = np.random.default_rng(7)
  m, n = 32, 128
  u, _ = np.linalg.qr(rng.standard_normal((m, m)))
  v, _ = np.linalg.qr(rng.standard_normal((n, m)))
  x = ((u * np.logspace(0, -4, m)) @ v.T).astype(np.float32)
  got = om.orthogonalize(x, dtype=jnp.float32, form=form)
  gram = form != "standard"  # auto: Gram form for this wide float32 matrix
  assert _rel_err(got, _reference(x)) < (1e-3 if gram else 2e-5)
  # the polynomial of ALGORITHMS.md applied to each singular value: the
  # reference's singular values, not 1 (5 quintic steps lift the smallest
  # one, 1e-4 of the largest, only to about 0.03).
  np.testing.assert_allclose(
      np.linalg.svd(np.asarray(got, np.float64), compute_uv=False),
      np.linalg.svd(_reference(x), compute_uv=False), rtol=0, atol=5e-4)


@pytest.mark.parametrize("form", ["standard", "gram"])
def test_scale_invariant_zero_safe_and_nan_propagating(form):
  """Both forms normalise relative to the largest entry (the Gram form
  through the trace of its Gram matrix): entries near 1e-30 or 1e30 give
  the same result, zeros give zeros, a NaN gives NaNs."""
  x = _rand((24, 80), seed=8)
  want = _reference(x)
  for scale in (1e-30, 1e-20, 1.0, 1e20, 1e30):
    got = om.orthogonalize(x * np.float32(scale), dtype=jnp.float32, form=form)
    assert _rel_err(got, want) < 1e-5, scale
  zeros = om.orthogonalize(np.zeros((24, 80), np.float32), form=form)
  np.testing.assert_array_equal(zeros, 0.0)
  bad = x.copy()
  bad[3, 5] = np.nan
  assert np.all(np.isnan(om.orthogonalize(bad, form=form)))


@pytest.mark.slow
@pytest.mark.parametrize("form", ["standard", "auto"])
def test_bfloat16_close_to_reference(form):
  for i, shape in enumerate(SHAPES):
    x = _rand(shape, seed=10 + i)
    got = om.orthogonalize(x, dtype=jnp.bfloat16, form=form)
    assert got.dtype == jnp.float32  # the input's dtype
    assert _rel_err(got, _reference(x)) < 0.1, shape


@pytest.mark.slow
def test_bfloat16_gram_form_on_wide_gaussian():
  """The Gram form in bfloat16 is only usable where the matrix is well
  conditioned (auto never picks it): a wide Gaussian matrix."""
  x = _rand((2, 32, 128), seed=20)
  got = om.orthogonalize(x, dtype=jnp.bfloat16, form="gram")
  assert _rel_err(got, _reference(x)) < 0.1


def test_auto_form_is_gram_when_cheaper_in_float32_only():
  x = _rand((24, 96), seed=3)
  auto = om.orthogonalize(x, dtype=jnp.float32)
  np.testing.assert_array_equal(
      auto, om.orthogonalize(x, dtype=jnp.float32, form="gram"))
  no_half_gram = om.Tuning(gram_in_half=False)  # the CPU default
  np.testing.assert_array_equal(
      om.NewtonSchulz(dtype=jnp.bfloat16, tuning=no_half_gram)(x),
      om.orthogonalize(x, dtype=jnp.bfloat16, form="standard"))
  square = _rand((24, 24), seed=4)
  np.testing.assert_array_equal(
      om.orthogonalize(square, dtype=jnp.float32),
      om.orthogonalize(square, dtype=jnp.float32, form="standard"))


def test_ns_flops_counts():
  m, n, k = 384, 1536, 5
  assert om.ns_flops(m, n, k) == k * (4 * m * m * n + 2 * m**3)
  assert om.ns_flops(n, m, k) == om.ns_flops(m, n, k)  # tall = its transpose
  assert om.ns_flops(m, n, k, "gram") == 4 * m * m * n + 2 * m**3 * (4 * k - 3)
  # a restart after step 2: two segments (2 and 3 steps), each touching X
  assert om.ns_flops(m, n, k, "gram", (2,)) == (
      8 * m * m * n + 2 * m**3 * (5 + 9))



@pytest.mark.parametrize("jit", [True, False])
def test_presets_user_table_and_steps_beyond_the_table(jit):
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
    fn = lambda a, kw=kwargs: om.orthogonalize(a, dtype=jnp.float32, **kw)
    got = (jax.jit(fn) if jit else fn)(x)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5,
                               err_msg=str(kwargs))


def test_result_in_input_dtype_and_close_to_polar_factor():
  """Whatever the compute dtype (the backend's default included), the
  result comes back in the input's dtype inside the quintic's band."""
  x = _rand((64, 128), seed=3)
  for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
    got = om.orthogonalize(jnp.asarray(x, dtype))
    assert got.dtype == dtype
    s = np.linalg.svd(np.asarray(got, np.float64), compute_uv=False)
    # The quintic's documented band: singular values in about [0.7, 1.2].
    assert 0.6 < s.min() and s.max() < 1.25, dtype
  exact = ref.polar_factor(x)
  got = np.asarray(om.orthogonalize(x), np.float64)
  cos = np.sum(got * exact) / np.linalg.norm(got) / np.linalg.norm(exact)
  assert cos > 0.97


def test_default_dtype_is_the_backends():
  """``dtype=None`` is float32 on CPU and bfloat16 on GPU/TPU."""
  want = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  assert om.NewtonSchulz().compute_dtype() == want
  x = _rand((8, 16), seed=0)
  np.testing.assert_array_equal(
      om.orthogonalize(x), om.orthogonalize(x, dtype=want))


def _dots(fn, *args):
  """(precision, operand dtypes) of every dot_general in ``fn``'s jaxpr."""
  out = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        out.append((eqn.params["precision"],
                    tuple(str(v.aval.dtype) for v in eqn.invars)))
      for p in eqn.params.values():
        if hasattr(p, "jaxpr") and hasattr(p.jaxpr, "eqns"):
          walk(p.jaxpr)
        elif hasattr(p, "eqns"):
          walk(p)
  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return out


@pytest.mark.parametrize("form", ["standard", "gram"])
def test_float32_means_highest_precision_in_every_matmul(form):
  """The precision contract, visible in the jaxpr: float32 compute passes
  Precision.HIGHEST to every product (GPUs would otherwise use TF32);
  bfloat16 compute multiplies bfloat16 operands at DEFAULT precision."""
  x = _rand((2, 24, 80), seed=0)
  highest = jax.lax.Precision.HIGHEST
  dots = _dots(lambda a: om.orthogonalize(a, dtype=jnp.float32, form=form), x)
  assert dots and all(
      p is not None and set(p) == {highest} and set(d) == {"float32"}
      for p, d in dots), dots
  dots = _dots(lambda a: om.orthogonalize(a, dtype=jnp.bfloat16, form=form), x)
  assert dots and all(set(d) == {"bfloat16"} and (
      p is None or highest not in p) for p, d in dots), dots
  y = np.eye(8, dtype=np.float32) * 0.5
  dots = _dots(lambda a: om.inverse_sqrt(a, 3), y)
  assert dots and all(set(p) == {highest} and set(d) == {"float32"}
                      for p, d in dots), dots


def _hlo_ops(text):
  """``[(name, op, operand names, types)]`` of a lowered module (operand
  types first where printed, the result's last)."""
  ops = []
  for line in text.splitlines():
    m = re.match(r"\s*(%[\w#]+) = (?:stablehlo|chlo)\.(\w+)(.*)", line)
    if m:
      types = re.findall(r"tensor<([^>]*)>", m.group(3))
      ops.append((m.group(1), m.group(2), re.findall(r"%[\w#]+", m.group(3)),
                  types or [""]))
  return ops


@pytest.mark.parametrize("shape", [(2, 64, 256), (256, 64)])
def test_bfloat16_standard_iteration_hlo_has_no_float32_iterates(shape):
  """Between the first and the last product, no ``m x n`` float32 tensor
  exists except a product's float32 accumulator, whose only use is its cast
  to bfloat16 (so nothing float32 of the matrix's size is computed on or
  written); every product multiplies bfloat16 operands; the normalisation
  adds no pass of its own (one ``max`` reduction before the products); a
  tall matrix is iterated without a transpose."""
  ns = om.NewtonSchulz(dtype=jnp.bfloat16,
                       tuning=om.Tuning(form="standard", symmetric_blocks=1))
  text = jax.jit(ns).lower(jnp.zeros(shape, jnp.float32)).as_text()
  ops = _hlo_ops(text)
  dots = [i for i, o in enumerate(ops) if o[1] == "dot_general"]
  assert len(dots) == 3 * 5  # A, A A and P X per step: nothing else
  assert "stablehlo.transpose" not in text
  matrix = "x".join(str(d) for d in shape[-2:]) + "xf32"
  users = {}
  for name, _, args, _ in ops:
    for a in args:
      users.setdefault(a, []).append(name)
  kind = {name: op for name, op, _, _ in ops}
  for name, op, _, types in ops[dots[0]:dots[-1] + 1]:
    if op == "dot_general":
      assert all(t.endswith("xbf16") for t in types[:2]), (name, types)
    if types[-1].endswith(matrix):
      assert op == "dot_general", (name, op)
      assert [kind[u] for u in users[name]] == ["convert"], (name, users[name])
  # the one pass before the products: |G|'s max, then G / max cast to bf16
  assert [o[1] for o in ops[:dots[0]]].count("reduce") == 1


def test_auto_picks_gram_without_restarts_only_in_float32():
  """Without restarts the Gram form needs float32 arithmetic; half
  precision gets it only with ``gram_in_half`` (and then restarts)."""
  wide = om.NewtonSchulz(dtype=jnp.float32)
  assert wide.form_for(24, 96) == "gram"
  assert om.NewtonSchulz(dtype=jnp.bfloat16, tuning=om.Tuning(
      gram_in_half=False)).form_for(24, 96) == "standard"
  tf32 = om.NewtonSchulz(dtype=jnp.float32,
                         precision=jax.lax.Precision.DEFAULT)
  assert tf32.form_for(24, 96) == "standard"
  assert om.NewtonSchulz(dtype=jnp.float32, steps=8).form_for(
      24, 96) == "standard"  # more steps than gram_max_steps


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gram_restarts_match_reference(dtype):
  """A restart (``X = Q X``, fresh Gram matrix, ``Q = I``) changes nothing
  but rounding: restarted after steps 1, 2 or 3, wide and tall (no
  transposes), the Gram form is the reference's iteration."""
  tol = 1e-5 if dtype == jnp.float32 else 0.1
  for i, shape in enumerate([(24, 80), (80, 24), (2, 16, 48)]):
    x = _rand(shape, seed=40 + i)
    want = _reference(x)
    for restarts in ((1,), (2,), (1, 3)):
      ns = om.NewtonSchulz(dtype=dtype, tuning=om.Tuning(
          form="gram", gram_restarts=restarts))
      assert _rel_err(ns(x), want) < tol, (shape, restarts)


def test_half_precision_gram_form_restarts_and_wins_by_shape():
  """Tuning resolves the Gram form's backend defaults: in half precision
  segments of at most 3 steps, the last of at most 2; none in float32;
  "auto" picks the Gram form in half precision where allowed (GPU/TPU by
  default) and only where it has fewer flops."""
  assert om.NewtonSchulz(dtype=jnp.bfloat16).restarts() == (3,)
  assert om.NewtonSchulz(dtype=jnp.float16, steps=8).restarts() == (3, 6)
  assert om.NewtonSchulz(dtype=jnp.bfloat16, steps=2).restarts() == ()
  assert om.NewtonSchulz(dtype=jnp.float32).restarts() == ()
  half = om.NewtonSchulz(dtype=jnp.bfloat16,
                         tuning=om.Tuning(gram_in_half=True))
  assert half.form_for(768, 3072) == "gram"  # fc: 0.67x the flops
  assert half.form_for(768, 768) == "standard"  # square: more flops
  assert om.NewtonSchulz(dtype=jnp.bfloat16, tuning=om.Tuning(
      gram_in_half=False)).form_for(768, 3072) == "standard"
  want = jax.default_backend() != "cpu"
  assert om.Tuning().half_gram() == want
  with pytest.raises(ValueError, match="gram_restarts"):
    om.Tuning(gram_restarts=(0,))
  with pytest.raises(ValueError, match="gram_in_half"):
    om.Tuning(gram_in_half="yes")


def test_inverse_sqrt_matches_numpy():
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
  y = (q * np.linspace(0.2, 2.0, 12)) @ q.T
  want = (q * np.linspace(0.2, 2.0, 12) ** -0.5) @ q.T
  got = om.inverse_sqrt(jnp.asarray(y, jnp.float32), 20)
  assert _rel_err(got, want) < 1e-4


def test_bad_arguments():
  x = _rand((4, 8), seed=0)
  with pytest.raises(ValueError, match="Unknown ns_coeffs"):
    om.orthogonalize(x, ns_coeffs="cubic")
  with pytest.raises(ValueError, match=r"one \(a, b, c\) row per step"):
    om.orthogonalize(x, ns_coeffs=[(3.0, -3.0, 1.0)], ns_steps=2)
  with pytest.raises(ValueError, match=r"\(\.\.\., m, n\)"):
    om.orthogonalize(np.ones(4, np.float32))
  with pytest.raises(ValueError, match="ns_steps must be an int, got 2.5"):
    om.NewtonSchulz(steps=2.5)
  with pytest.raises(ValueError, match="ns_steps must be >= 1"):
    om.NewtonSchulz(steps=0)
  with pytest.raises(ValueError, match="ns_dtype must be a floating dtype"):
    om.NewtonSchulz(dtype=jnp.int32)
  with pytest.raises(ValueError, match="Tuning.form"):
    om.orthogonalize(x, form="fast")
  with pytest.raises(ValueError, match="tuning must be"):
    om.NewtonSchulz(tuning="fast")

@pytest.mark.parametrize("blocks", [1, 2, 3, 4])
def test_symmetric_matmul_is_the_product(blocks):
  """Block upper triangle + mirror == the full product, for commuting
  symmetric matrices (polynomials in one Gram matrix), any split (10 rows
  in 4 blocks: 2, 3, 2, 3), batched."""
  rng = np.random.default_rng(5)
  x = rng.standard_normal((2, 10, 30))
  a = x @ np.swapaxes(x, -1, -2)
  b = 0.5 * np.eye(10) + 0.1 * a - 0.01 * a @ a
  got = _newton_schulz._symmetric_matmul(
      jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), blocks,
      jax.lax.Precision.HIGHEST)
  np.testing.assert_allclose(got, a @ b, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["standard", "gram"])
def test_symmetric_blocks_match_reference(form):
  """The CPU default (4 blocks) for m >= 256, asked for here on small
  matrices: wide, tall and square (30 rows: an uneven 7/8/7/8 split);
  test_symmetric_matmul_is_the_product covers 2 and 3 blocks. The blocks
  compute the products, the preset only the coefficients that multiply
  them: each shape runs one preset (each case is a compile of its own)."""
  tuning = om.Tuning(form=form, symmetric_blocks=4)
  for shape, seed, preset in [((24, 80), 30, "quintic"),
                              ((80, 24), 31, "polar_express"),
                              ((30, 30), 33, "quintic")]:
    x = _rand(shape, seed=seed)
    ns = om.NewtonSchulz(coeffs=preset, dtype=jnp.float32, tuning=tuning)
    got = jax.jit(ns)(x)
    tol = 1e-4 if form == "gram" and shape == (30, 30) else 1e-5
    assert _rel_err(got, _reference(x, preset)) < tol, (shape, preset)


# --------------------------------------------------- the skeleton's stacks ----

# a, b and the transposed c stack together (canonical 24 x 64); d is two
# matrices of that shape along a batch axis; e is square.
LEAVES = {"a": (24, 64), "b": (24, 64), "c": (64, 24), "d": (2, 24, 64),
          "e": (40, 40)}
BATCH_AXES = lambda path, leaf: (0,) if path[-1].key == "d" else None

VARIANTS = {
    "muon": (om.scale_by_muon, {}, ref.Muon, {}, 1e-4),
    "adamuon": (om.scale_by_adamuon, {}, ref.AdaMuon, {}, 1e-4),
    "ogsignmuon": (om.scale_by_ogsignmuon, {}, ref.OGSignMuon, {}, 1e-4),
    "normuon": (om.scale_by_normuon, {}, ref.NorMuon, {}, 1e-4),
    "mommuon_every_2": (om.scale_by_mommuon, {"ns_every": 2}, ref.MomMuon,
                        {"ns_every": 2}, 1e-3),
}


@pytest.mark.slow
@pytest.mark.parametrize("loop", [True, False])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_stacked_and_looped_directions_match_reference(name, loop):
  """Both ways of running a stack -- one batched call, or a loop over its
  matrices (CPU's default for matrices of 128 x 128 entries or more, asked
  for here for small ones) -- give every leaf the reference's update."""
  scale_by, kwargs, ref_cls, ref_kwargs, tol = VARIANTS[name]
  if scale_by is not om.scale_by_mommuon:  # always float32
    kwargs = dict(kwargs, ns_dtype=jnp.float32)
  tx = scale_by(batch_axes=BATCH_AXES, tuning=om.Tuning(
      loop_stacks=loop, loop_min_entries=0), **kwargs)
  rng = np.random.default_rng(0)
  params = {k: rng.standard_normal(s).astype(np.float32)
            for k, s in LEAVES.items()}
  refs = {k: [ref_cls(s[1:], **ref_kwargs) for _ in range(s[0])]
          if k == "d" else ref_cls(s, **ref_kwargs) for k, s in LEAVES.items()}
  state = tx.init(params)
  update = jax.jit(tx.update)
  for t in range(3):
    grads = {k: rng.standard_normal(s).astype(np.float32)
             for k, s in LEAVES.items()}
    updates, state = update(grads, state, params)
    for k, g in grads.items():
      want = (np.stack([r(gi) for r, gi in zip(refs[k], g)]) if k == "d"
              else refs[k](g))
      assert _rel_err(updates[k], want) < tol, (name, k, t)


def test_loop_runs_large_matrices_one_at_a_time():
  """With loop_stacks (the CPU default) a stack of large matrices runs as a
  loop (lax.map): the direction sees one matrix at a time."""
  seen = []

  class Probe(_skeleton.Direction):
    name = "probe"

    def __call__(self, m, states, count, transposed):
      seen.append(m.shape)
      return m, states

  params = {"a": jnp.zeros((128, 256)), "b": jnp.zeros((256, 128)),
            "small": jnp.zeros((8, 16)), "small2": jnp.zeros((16, 8))}
  for loop, want in ((True, {(1, 128, 256), (2, 8, 16)}),
                     (False, {(2, 128, 256), (2, 8, 16)})):
    seen.clear()
    tx = _skeleton.scale_by_muon_family(
        Probe(), tuning=om.Tuning(loop_stacks=loop))
    jax.jit(tx.update)(params, tx.init(params))
    assert set(seen) == want, loop
  assert om.Tuning().loops_stacks() == (jax.default_backend() == "cpu")


@pytest.mark.slow
def test_alias_step_with_large_matrices_matches_reference():
  """Large enough for the CPU defaults (loop over the stack, symmetric
  block products in the Gram form): a full om.muon step is the reference's
  Muon step."""
  rng = np.random.default_rng(1)
  params = {"w1": rng.standard_normal((256, 512)).astype(np.float32),
            "w2": rng.standard_normal((512, 256)).astype(np.float32)}
  grads = jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(
      np.float32), params)
  labels = jax.tree.map(lambda _: "muon", params)
  tx = om.muon(0.02, ns_dtype=jnp.float32, param_labels=labels)
  looped, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  want = {k: ref.Muon(p.shape)(grads[k]) * -0.02 for k, p in params.items()}
  for k in params:
    assert _rel_err(looped[k], want[k]) < 1e-4, k
