"""Flax NNX end to end: models train, and each leaf went where it should."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optax_muon as om
from tests import _flax_compat, _sweeps

# `make test` only (NNX training runs);
# `make test-fast` keeps the reference checks of the math.
pytestmark = pytest.mark.slow

# Every alias of the registry (the Hyperball ones in the integration tier).
ALIASES = _sweeps.sweep(om.ALIASES.values(), fast=None)
# Those with a Newton–Schulz compute dtype (MomMuon has no ns_dtype: its
# inverse square root always runs in float32 -- in bfloat16 it gave NaN from
# step 2 -- so its accelerator run is the float32 one of
# test_mlp_trains_with_every_alias[mommuon]).
NS_DTYPE_ALIASES = _sweeps.sweep(
    [a for a in om.ALIASES.values()
     if "ns_dtype" in inspect.signature(a).parameters], fast=None)


class MLP(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Embed(16, 32, rngs=rngs)
    self.hidden1 = nnx.Linear(32, 64, rngs=rngs)
    self.hidden2 = nnx.Linear(64, 32, rngs=rngs)
    self.norm = nnx.LayerNorm(32, rngs=rngs)
    self.head = nnx.Linear(32, 16, rngs=rngs)

  def __call__(self, tokens):
    x = self.embed(tokens)
    h = jax.nn.gelu(self.hidden1(x))
    x = self.norm(x + self.hidden2(h))
    return self.head(x)


class ConvNet(nnx.Module):
  def __init__(self, rngs):
    self.conv1 = nnx.Conv(1, 8, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(8, 16, (3, 3), strides=2, rngs=rngs)
    self.classifier = nnx.Linear(16, 4, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.conv1(x))
    x = jax.nn.relu(self.conv2(x))
    return self.classifier(x.mean(axis=(1, 2)))


def _train(model, tx, batch, labels, steps):
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  def loss_fn(m):
    return optax.softmax_cross_entropy_with_integer_labels(m(batch), labels).mean()

  @nnx.jit
  def step(m, opt):
    loss, grads = nnx.value_and_grad(loss_fn)(m)
    opt.update(m, grads)
    return loss

  losses = [float(step(model, optimizer)) for _ in range(steps)]
  return losses, optimizer


@pytest.mark.parametrize("alias", ALIASES)
def test_mlp_trains_with_every_alias(alias):
  model = MLP(nnx.Rngs(0))
  tokens = jnp.arange(64) % 16
  targets = (tokens * 3 + 1) % 16
  losses, _ = _train(model, alias(0.02, adamw_learning_rate=3e-3), tokens,
                     targets, 30)
  assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("alias", NS_DTYPE_ALIASES)
def test_mlp_trains_with_every_alias_in_bfloat16(alias):
  # bfloat16 Newton-Schulz is the default on GPU and TPU; here it is asked
  # for explicitly, so that the CPU suite covers what an accelerator runs.
  model = MLP(nnx.Rngs(0))
  tokens = jnp.arange(64) % 16
  targets = (tokens * 3 + 1) % 16
  tx = alias(0.02, adamw_learning_rate=3e-3, ns_dtype=jnp.bfloat16)
  losses, _ = _train(model, tx, tokens, targets, 30)
  assert np.all(np.isfinite(losses)), losses
  assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.integration
def test_convnet_trains_and_conv_kernels_go_through_muon():
  model = ConvNet(nnx.Rngs(1))
  rng = np.random.default_rng(0)
  images = rng.standard_normal((32, 8, 8, 1)).astype(np.float32)
  targets = (images[:, :4, :4, 0].mean(axis=(1, 2)) > 0).astype(np.int32) + 2 * (
      images[:, 4:, 4:, 0].mean(axis=(1, 2)) > 0).astype(np.int32)
  losses, opt = _train(model, om.muon(0.02, adamw_learning_rate=3e-3), images,
                       targets, 40)
  assert losses[-1] < 0.75 * losses[0], losses
  state = _flax_compat.pure(opt.opt_state)
  muon_mu = state.inner_states["muon"].inner_state[0].mu
  assert muon_mu["conv1"]["kernel"].shape == (3, 3, 1, 8)
  assert np.abs(muon_mu["conv2"]["kernel"]).sum() > 0
  assert isinstance(muon_mu["classifier"]["kernel"], optax.MaskedNode)


def test_embedding_and_head_go_through_adamw():
  model = MLP(nnx.Rngs(0))
  tokens = jnp.arange(32) % 16
  _, opt = _train(model, om.muon(0.02), tokens, tokens, 2)
  state = _flax_compat.pure(opt.opt_state)
  muon_state = state.inner_states["muon"].inner_state[0]
  adam_state = state.inner_states["adamw"].inner_state[0]
  assert isinstance(muon_state, om.ScaleByMuonState)
  assert int(muon_state.count) == 2
  for name in ("embed", "head", "norm"):
    assert all(isinstance(x, optax.MaskedNode)
               for x in jax.tree.leaves(muon_state.mu[name],
                                        is_leaf=lambda x: isinstance(
                                            x, optax.MaskedNode)))
  assert np.abs(adam_state.mu["embed"]["embedding"]).sum() > 0
  assert np.abs(adam_state.nu["head"]["kernel"]).sum() > 0
  assert np.abs(adam_state.nu["hidden1"]["bias"]).sum() > 0
  assert isinstance(adam_state.mu["hidden1"]["kernel"], optax.MaskedNode)
  assert np.abs(muon_state.mu["hidden1"]["kernel"]).sum() > 0
  assert np.abs(muon_state.mu["hidden2"]["kernel"]).sum() > 0
