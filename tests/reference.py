"""An independent NumPy implementation of ALGORITHMS.md, for the tests.

Written from the specification, one matrix at a time, in float64, and --
for Muon -- in the PyTorch ``(out, in)`` layout of Keller Jordan's
``muon_update``, so that the Flax-layout library is checked against a
different code path (transposes, conv flattening order and all).
"""

from __future__ import annotations

import numpy as np

QUINTIC = (3.4445, -4.7750, 2.0315)
POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
POLAR_TAIL = (1.875, -1.25, 0.375)


def coeff_rows(preset, steps):
  if preset == "quintic":
    return [QUINTIC] * steps, 1.0
  if preset == "polar_express":
    rows = list(POLAR_EXPRESS[:steps])
    rows += [POLAR_TAIL] * (steps - len(rows))
    return rows, 1.02
  return [tuple(r) for r in preset][:steps], 1.0


def newton_schulz(g, steps=5, preset="quintic", eps=1e-7, relative_eps=False):
  """Step 1-4 of ALGORITHMS.md on one 2-D matrix.

  ``relative_eps=True`` guards the normalisation with ``eps * max|G_ij|``
  instead of ``eps``, so that the result does not depend on the scale of
  ``G`` at all (``G`` and ``1e-30 G`` give the same matrix); for ordinary
  gradients the two differ by about ``eps`` relative.
  """
  rows, scale = coeff_rows(preset, steps)
  x = np.asarray(g, np.float64)
  tall = x.shape[0] > x.shape[1]
  if tall:
    x = x.T
  if relative_eps:
    if not np.any(x):
      return np.zeros_like(np.asarray(g, np.float64))
    eps = eps * np.abs(x).max()
  x = x / (scale * np.linalg.norm(x) + eps)
  for a, b, c in rows:
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x.T if tall else x


def polar_factor(g):
  u, _, vt = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
  return u @ vt


# --- layouts ---------------------------------------------------------------


def flax_to_torch(p):
  """Flax ``(in, out)`` / ``(H, W, C_in, C_out)`` -> PyTorch ``(out, in)`` /
  ``(C_out, C_in, H, W)``."""
  p = np.asarray(p)
  if p.ndim == 2:
    return p.T
  if p.ndim == 4:
    return np.transpose(p, (3, 2, 0, 1))
  raise ValueError(p.shape)


def torch_to_flax(p):
  if p.ndim == 2:
    return p.T
  return np.transpose(p, (2, 3, 1, 0))


def flax_matrix(p):
  """The matrix view of ALGORITHMS.md: ``(fan_in, fan_out)``."""
  p = np.asarray(p, np.float64)
  return p.reshape(-1, p.shape[-1])


def spectral_scale(fan_in, fan_out):
  return np.sqrt(max(1.0, fan_out / fan_in))


# --- Keller Jordan's PyTorch Muon, re-expressed in NumPy --------------------


class KellerMuon:
  """``muon_update`` + decoupled decay, on one parameter in PyTorch layout."""

  def __init__(self, p_torch, lr, momentum=0.95, nesterov=True, ns_steps=5,
               weight_decay=0.0):
    self.p = np.asarray(p_torch, np.float64).copy()
    self.buf = np.zeros_like(self.p)
    self.lr, self.beta, self.nesterov = lr, momentum, nesterov
    self.ns_steps, self.wd = ns_steps, weight_decay

  def step(self, grad_torch):
    g = np.asarray(grad_torch, np.float64)
    self.buf = self.buf + (1 - self.beta) * (g - self.buf)  # lerp
    if self.nesterov:
      update = g + self.beta * (self.buf - g)  # lerp(g, buf, beta)
    else:
      update = self.buf
    if update.ndim == 4:
      update = update.reshape(len(update), -1)
    update = newton_schulz(update, self.ns_steps)
    # Literally the reference: rows/cols of the raw gradient. For a 4-D
    # kernel that is H/W, where ALGORITHMS.md uses the matrix view; the two
    # agree whenever C_out <= H*W*C_in and H == W (the tests' conv shapes).
    update = update * max(1, g.shape[-2] / g.shape[-1]) ** 0.5
    self.p = self.p * (1 - self.lr * self.wd)
    self.p = self.p - self.lr * update.reshape(self.p.shape)
    return self.p


# --- The variants of ALGORITHMS.md, in the Flax layout ----------------------


class Momentum:
  def __init__(self, shape, beta=0.95, nesterov=True):
    self.buf = np.zeros(shape)
    self.beta, self.nesterov = beta, nesterov

  def __call__(self, g):
    g = np.asarray(g, np.float64)
    self.buf = self.beta * self.buf + (1 - self.beta) * g
    if self.nesterov:
      return (1 - self.beta) * g + self.beta * self.buf
    return self.buf


class Variant:
  """One leaf's update direction ``u`` (before the learning rate)."""

  def __init__(self, shape, momentum=0.95, nesterov=True, shape_scale="spectral"):
    self.shape = tuple(shape)
    self.mom = Momentum(shape, momentum, nesterov)
    self.t = 0
    fan_in = int(np.prod(self.shape[:-1]))
    fan_out = self.shape[-1]
    if shape_scale == "spectral":
      self.s = spectral_scale(fan_in, fan_out)
    elif shape_scale == "rms":
      self.s = 0.2 * np.sqrt(max(fan_in, fan_out))
    else:
      self.s = 1.0

  def __call__(self, g):
    self.t += 1
    m = flax_matrix(self.mom(g))
    return (self.direction(m) * self.s).reshape(self.shape)


class Muon(Variant):
  def __init__(self, shape, ns_steps=5, preset="quintic", **kw):
    super().__init__(shape, **kw)
    self.ns_steps, self.preset = ns_steps, preset

  def direction(self, m):
    return newton_schulz(m, self.ns_steps, self.preset)


class AdaMuon(Muon):
  """``relative_eps=False``: the formula of ALGORITHMS.md,
  ``n / (sqrt(v_hat) + eps)``. ``relative_eps=True``: its scale-free guard,
  ``n / (sqrt(v_hat) + eps * max(n, sqrt(v_hat)))`` with ``0/0 = 0``, and
  Newton-Schulz normalised with a relative ``eps`` too, so that the steps of
  ``g`` and ``1e-30 g`` are the same."""

  def __init__(self, shape, beta2=0.995, eps=1e-8, bias_correction=True,
               relative_eps=False, **kw):
    super().__init__(shape, **kw)
    self.v, self.beta2, self.eps, self.bc = 0.0, beta2, eps, bias_correction
    self.relative_eps = relative_eps

  def direction(self, m):
    n = np.linalg.norm(m)
    self.v = self.beta2 * self.v + (1 - self.beta2) * n**2
    v_hat = self.v / (1 - self.beta2**self.t) if self.bc else self.v
    o = newton_schulz(m, self.ns_steps, relative_eps=self.relative_eps)
    if not self.relative_eps:
      return o * n / (np.sqrt(v_hat) + self.eps)
    den = np.sqrt(v_hat) + self.eps * max(n, np.sqrt(v_hat))
    return o * (n / den if den > 0 else 0.0)


def inverse_sqrt(y, steps):
  """SWAN's coupled iteration, ``Z = I`` at the start."""
  eye = np.eye(len(y))
  z = eye.copy()
  for _ in range(steps):
    t = 3 * eye - z @ y
    y = 0.5 * y @ t
    z = 0.5 * t @ z
  return z


class MomMuon(Variant):
  """``average="gram"`` (the default): average ``G_n G_n^T`` every step,
  whiten it on refreshes; ``"preconditioner"``: the seed's average of inverse
  roots. ``rescale``: bring ``P G_n`` to Frobenius norm ``sqrt(k)``."""

  def __init__(self, shape, ns_steps=15, ns_every=5, ns_beta=0.5,
               average="gram", damping=0.0, rescale=True, **kw):
    super().__init__(shape, **kw)
    self.damping, self.rescale = damping, rescale
    self.ns_steps, self.every, self.beta = ns_steps, ns_every, ns_beta
    self.average = average
    self.p = self.ybar = None

  def direction(self, m):
    g = m / (np.linalg.norm(m) + 1e-7)
    wide = g.shape[0] <= g.shape[1]
    y = g @ g.T if wide else g.T @ g
    t = self.t
    damp = lambda a: a + self.damping * np.trace(a) / len(a) * np.eye(len(a))
    refresh = t == 1 or (self.every > 0 and (t - 1) % self.every == 0)
    if self.average == "gram":
      self.ybar = y if t == 1 else self.beta * self.ybar + (1 - self.beta) * y
      if refresh:
        self.p = inverse_sqrt(damp(self.ybar), self.ns_steps)
    elif refresh:
      z = inverse_sqrt(damp(y), self.ns_steps)
      self.p = z if self.p is None else self.beta * self.p + (1 - self.beta) * z
    u = self.p @ g if wide else g @ self.p
    if self.rescale:
      u = u * np.sqrt(min(u.shape)) / np.linalg.norm(u)
    return u


class OGSignMuon(Muon):
  def direction(self, m):
    o = newton_schulz(m, self.ns_steps, self.preset)
    return np.abs(o) * np.sign(m)


class NorMuon(Muon):
  def __init__(self, shape, beta2=0.95, **kw):
    super().__init__(shape, **kw)
    self.beta2 = beta2
    self.v = np.zeros(shape[-1])

  def direction(self, m):
    o = newton_schulz(m, self.ns_steps, self.preset)
    # Output neurons are the columns of (fan_in, fan_out): mean over fan-in.
    self.v = self.beta2 * self.v + (1 - self.beta2) * np.mean(o**2, axis=0)
    o2 = o / (np.sqrt(self.v)[None, :] + 1e-10)
    return o2 * np.linalg.norm(o) / np.linalg.norm(o2)


def sgd_step(p, u, lr, wd=0.0, cautious=False):
  """``p <- p - lr * (u + wd * mask * p)``, mask = 1 or ``[u * p > 0]``."""
  mask = (u * p > 0).astype(np.float64) if cautious else 1.0
  return p - lr * (u + wd * mask * p)


def adamw_step(state, p, g, lr, b1=0.9, b2=0.95, eps=1e-8, wd=0.0):
  """Plain AdamW, for the leaves the aliases route to it."""
  m, v, t = state
  t += 1
  m = b1 * m + (1 - b1) * g
  v = b2 * v + (1 - b2) * g * g
  mh, vh = m / (1 - b1**t), v / (1 - b2**t)
  return (m, v, t), p - lr * (mh / (np.sqrt(vh) + eps) + wd * p)


# --- Hyperball (ALGORITHMS.md, "Hyperball") ---------------------------------


def hyperball_radius(w, zero_init_rms=None):
  """``(R, from_zero)`` of one ``(fan_in, fan_out)`` matrix at init: its
  Frobenius norm, or for an all-zero matrix ``rms * sqrt(fan_in * fan_out)``
  with ``rms = zero_init_rms`` (default ``1 / sqrt(fan_in)``)."""
  w = flax_matrix(w)
  r = float(np.sqrt(np.sum(w * w)))
  if r > 0:
    return r, False
  fan_in, fan_out = w.shape
  rms = 1 / np.sqrt(fan_in) if zero_init_rms is None else zero_init_rms
  return float(rms * np.sqrt(fan_in * fan_out)), True


def hyperball_step(w, u, lr, radius, from_zero=False):
  """One Hyperball step of one matrix, in float64:
  ``W' = W - lr R U / ||U||``, then ``W' R / ||W'||`` (a matrix that started
  at zero: ``W' min(1, R / ||W'||)``); ``W`` itself for a zero ``U``."""
  w = np.asarray(w, np.float64)
  u = np.asarray(u, np.float64)
  u_norm = np.sqrt(np.sum(u * u))
  if u_norm == 0:
    return w
  w1 = w - lr * radius * u / u_norm
  scale = radius / np.sqrt(np.sum(w1 * w1))
  if from_zero:
    scale = min(scale, 1.0)
  return w1 * scale
