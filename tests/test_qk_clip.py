"""QK-clip: only the heads whose max logit exceeds tau have their query and
key kernels rescaled, by sqrt(tau / max_logit), on the new params."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optax_muon as om

HEADS, HEAD_DIM, D = 4, 8, 32


class Net(nnx.Module):
  """One Flax multi-head attention layer and a readout."""

  def __init__(self, rngs):
    self.attn = nnx.MultiHeadAttention(
        num_heads=HEADS, in_features=D, qkv_features=HEADS * HEAD_DIM,
        decode=False, rngs=rngs)
    self.head = nnx.Linear(D, 3, rngs=rngs)

  def __call__(self, x):
    return self.head(self.attn(x))


def max_logits(attn_params, x):
  """Per-head largest pre-softmax logit ``q . k / sqrt(head_dim)`` of
  ``nnx.MultiHeadAttention`` (self-attention) on ``x``, in float64."""
  x = np.asarray(x, np.float64)
  q = np.einsum("btd,dhk->bthk", x, np.asarray(attn_params["query"]["kernel"]))
  q = q + np.asarray(attn_params["query"]["bias"])
  k = np.einsum("btd,dhk->bthk", x, np.asarray(attn_params["key"]["kernel"]))
  k = k + np.asarray(attn_params["key"]["bias"])
  logits = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(HEAD_DIM)
  return logits.max(axis=(0, 2, 3))


def _setup(plant):
  model = Net(nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  kq = np.array(params["attn"]["query"]["kernel"])
  kk = np.array(params["attn"]["key"]["kernel"])
  for h, factor in plant.items():  # plant large logits in these heads
    kq[:, h] *= factor
    kk[:, h] *= factor
  params["attn"]["query"]["kernel"] = jnp.asarray(kq)
  params["attn"]["key"]["kernel"] = jnp.asarray(kk)
  # NumPy draws: eager jax.random compiles a program per shape (seconds).
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 6, D)), jnp.float32)
  grads = jax.tree.map(
      lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)
  return params, grads, x


def _with_and_without_clip(tau, params, grads, logits):
  """Updates of ``chain(muon, qk_clip(tau))`` and of ``muon`` alone, from
  one jitted program (Newton–Schulz op by op, unjitted, costs seconds)."""
  tx = optax.chain(om.muon(0.02), om.qk_clip(tau))
  base = om.muon(0.02)

  @jax.jit
  def run(grads, params, logits):
    u, _ = tx.update(grads, tx.init(params), params,
                     max_logits={"attn": logits})
    u0, _ = base.update(grads, base.init(params), params)
    return u, u0

  return run(grads, params, jnp.asarray(logits, jnp.float32))


def _flat(tree):
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_planted_large_logit_rescales_only_that_heads_q_and_k():
  params, grads, x = _setup({2: 6.0})
  logits = max_logits(params["attn"], x)
  tau = float(np.sort(logits)[-2] * 1.5)  # only head 2 is above tau
  assert logits[2] > tau and (np.delete(logits, 2) < tau).all()
  u, u0 = _with_and_without_clip(tau, params, grads, logits)
  new = _flat(optax.apply_updates(params, u))
  want = _flat(optax.apply_updates(params, u0))
  s = np.sqrt(tau / logits[2])
  for key, value in want.items():
    if key.endswith("['query']['kernel']") or key.endswith(
        "['key']['kernel']"):
      np.testing.assert_allclose(new[key][:, 2], s * value[:, 2], rtol=1e-5,
                                 err_msg=key)
      np.testing.assert_array_equal(np.delete(new[key], 2, axis=1),
                                    np.delete(value, 2, axis=1), err_msg=key)
    else:  # value, out, biases, the readout: as Muon/AdamW left them
      np.testing.assert_array_equal(new[key], value, err_msg=key)


def test_clipped_head_has_logit_tau_on_the_same_inputs():
  params, grads, x = _setup({0: 5.0, 3: 4.0})
  # biases at zero, so the logits are exactly bilinear in the kernels
  params["attn"]["query"]["bias"] = jnp.zeros_like(
      params["attn"]["query"]["bias"])
  params["attn"]["key"]["bias"] = jnp.zeros_like(params["attn"]["key"]["bias"])
  logits = max_logits(params["attn"], x)
  tau = float(np.median(logits))
  tx = optax.chain(optax.sgd(0.0), om.qk_clip(tau))
  u, _ = tx.update(grads, tx.init(params), params,
                   max_logits={"attn": jnp.asarray(logits, jnp.float32)})
  after = max_logits(optax.apply_updates(params, u)["attn"], x)
  np.testing.assert_allclose(after, np.minimum(logits, tau), rtol=1e-5)


def test_nothing_changes_when_every_logit_is_below_tau():
  params, grads, x = _setup({})
  logits = max_logits(params["attn"], x)
  u, u0 = _with_and_without_clip(float(logits.max()) + 1.0, params, grads,
                                 logits)
  jax.tree.map(np.testing.assert_array_equal, u, u0)


@pytest.mark.slow
@pytest.mark.integration
def test_works_with_nnx_optimizer_and_every_alias():
  for alias in (om.muon, om.adamuon, om.mommuon, om.ogsignmuon, om.normuon):
    model = Net(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.chain(alias(0.02), om.qk_clip(1e-3)),
                        wrt=nnx.Param)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 6, D)),
                    jnp.float32)
    before = np.asarray(model.attn.query.kernel[...])

    @nnx.jit
    def step(model, opt, x):
      grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
      opt.update(model, grads, max_logits={
          "attn": jnp.full((HEADS,), 1.0)})

    step(model, opt, x)
    after = np.asarray(model.attn.query.kernel[...])
    assert np.isfinite(after).all()
    # every head clipped by sqrt(1e-3 / 1): the kernel shrinks ~30x
    assert np.abs(after).max() < 0.1 * np.abs(before).max(), alias.__name__


def test_stacked_layers_and_fused_kernels():
  layers, heads, hd, d = 3, 2, 4, 8
  rng = np.random.default_rng(0)
  params = {
      "stack": {  # scanned MultiHeadAttention: (layers, in, heads, head_dim)
          "query": {"kernel": jnp.asarray(rng.normal(size=(layers, d, heads, hd)),
                                          jnp.float32)},
          "key": {"kernel": jnp.asarray(rng.normal(size=(layers, d, heads, hd)),
                                        jnp.float32)},
          "value": {"kernel": jnp.asarray(rng.normal(size=(layers, d, heads, hd)),
                                          jnp.float32)}},
      "fused": {  # nnx.Linear q / k projections: (in, heads * head_dim)
          "query": {"kernel": jnp.asarray(rng.normal(size=(d, heads * hd)),
                                          jnp.float32)},
          "key": {"kernel": jnp.asarray(rng.normal(size=(d, heads * hd)),
                                        jnp.float32)}},
  }
  grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.1, params)
  tau = 10.0
  stacked_logits = np.full((layers, heads), 5.0, np.float32)
  stacked_logits[1, 0] = 40.0  # layer 1, head 0: s = 1/2
  fused_logits = np.array([1.0, 90.0], np.float32)  # head 1: s = 1/3
  tx = optax.chain(optax.sgd(1.0), om.qk_clip(tau))
  u, _ = tx.update(grads, tx.init(params), params, max_logits={
      "stack": jnp.asarray(stacked_logits), "fused": jnp.asarray(fused_logits)})
  new = optax.apply_updates(params, u)
  plain = jax.tree.map(lambda p, g: np.asarray(p - g), params, grads)
  for name in ("query", "key"):
    got, want = np.asarray(new["stack"][name]["kernel"]), plain["stack"][name][
        "kernel"].copy()
    want[1, :, 0] *= 0.5
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    got, want = np.asarray(new["fused"][name]["kernel"]), plain["fused"][name][
        "kernel"].copy()
    want[:, hd:] /= 3.0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new["stack"]["value"]["kernel"],
                             plain["stack"]["value"]["kernel"], rtol=1e-6)


@pytest.mark.parametrize("max_logits, match", [
    (None, "needs the per-head max attention logits"),
    ({}, r"no max_logits entry for the attention module 'attn'"),
    ({"attn": jnp.ones(HEADS), "other": jnp.ones(HEADS)},
     r"entries \['other'\] match no attention module"),
    ({"attn": jnp.ones(HEADS + 1)}, r"does not fit max_logits of shape \(5,\)"),
])
def test_bad_max_logits_are_clear_errors(max_logits, match):
  params, grads, _ = _setup({})
  tx = om.qk_clip(10.0)
  with pytest.raises(ValueError, match=match):
    tx.update(grads, tx.init(params), params, max_logits=max_logits)


def test_tau_must_be_positive():
  with pytest.raises(ValueError, match="tau must be > 0"):
    om.qk_clip(0.0)
  with pytest.raises(ValueError, match=r"tau must be in \[0.0, inf\]"):
    om.qk_clip(-1.0)
