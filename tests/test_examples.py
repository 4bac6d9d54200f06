"""Tests of the examples: data readers, optimizer registry, compare.py."""

import json
import math
import pickle

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optax_muon as om
from examples import compare
from examples import optimizers as registry
from examples.data import DataError, cifar10, fineweb, pydoc_text
from examples.tasks import image, lm

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------- CIFAR-10


def _write_cifar(folder, sizes=(3, 2, 2, 1, 2), test_size=3, seed=0):
  """Writes the six pickles of cifar-10-batches-py; returns what they hold."""
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True)
  written = {}
  names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
  for name, n in zip(names, list(sizes) + [test_size]):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    with open(folder / name, "wb") as f:
      pickle.dump({b"batch_label": name.encode(), b"data": data,
                   b"labels": labels, b"filenames": [b"x.png"] * n}, f)
    written[name] = (data, labels)
  return written


def _pixel(row_of_3072, r, c, ch):
  """CIFAR-10's layout: red plane, green plane, blue plane, each 32x32
  row-major."""
  return row_of_3072[ch * 1024 + r * 32 + c]


def test_cifar10_reader_returns_the_pixels_written(tmp_path):
  written = _write_cifar(tmp_path / "cifar-10-batches-py")
  # Both the folder itself and its parent are accepted.
  for where in (tmp_path, tmp_path / "cifar-10-batches-py"):
    data = cifar10.load(where)
    chex.assert_shape(data["x_train"], (10, 32, 32, 3))
    chex.assert_shape(data["x_test"], (3, 32, 32, 3))
    assert data["x_train"].dtype == np.uint8
    train_rows = np.concatenate(
        [written[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)),
                       [])
    rng = np.random.default_rng(1)
    for _ in range(200):
      i, r, c, ch = (rng.integers(10), rng.integers(32), rng.integers(32),
                     rng.integers(3))
      assert data["x_train"][i, r, c, ch] == _pixel(train_rows[i], r, c, ch)
    expected_test = np.stack([
        np.array([[[_pixel(row, r, c, ch) for ch in range(3)]
                   for c in range(32)] for r in range(32)])
        for row in written["test_batch"][0]])
    np.testing.assert_array_equal(data["x_test"], expected_test)
    np.testing.assert_array_equal(data["y_train"], train_labels)
    np.testing.assert_array_equal(data["y_test"], written["test_batch"][1])


def test_cifar10_reader_rejects_a_bad_pickle(tmp_path):
  folder = tmp_path / "cifar-10-batches-py"
  _write_cifar(folder)
  with open(folder / "data_batch_3", "wb") as f:
    pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
  with pytest.raises(DataError, match="3072"):
    cifar10.load(tmp_path)


def test_image_task_on_cifar10_normalizes_and_flips(tmp_path):
  _write_cifar(tmp_path / "c", sizes=(40, 40, 40, 40, 40), test_size=8)
  task = image.make_task(data_dir=str(tmp_path / "c"), tiny=True)
  x, y = next(task.batches(np.random.default_rng(0)))
  chex.assert_shape(x, (32, 32, 32, 3))
  assert x.dtype == np.float32 and y.shape == (32,)
  raw = cifar10.load(tmp_path / "c")
  pixels = raw["x_train"] / 255
  normalized = (pixels - pixels.mean((0, 1, 2))) / pixels.std((0, 1, 2))
  # Every batch image is a training image, as it is or mirrored left-right,
  # with its label.
  for xb, yb in zip(x, y):
    dist = np.minimum(
        np.abs(normalized - xb).max((1, 2, 3)),
        np.abs(normalized[:, :, ::-1] - xb).max((1, 2, 3)))
    assert dist.min() < 1e-4
    assert raw["y_train"][dist.argmin()] == yb
  logits = task.make_model(nnx.Rngs(0))(x[:2])
  chex.assert_shape(logits, (2, 10))


# ------------------------------------------------------------------ FineWeb


def _write_bin(path, tokens, magic=20240520, version=1, count=None):
  """A shard in modded-nanogpt's format, written here byte by byte."""
  header = np.zeros(256, dtype="<i4")
  header[0], header[1] = magic, version
  header[2] = len(tokens) if count is None else count
  path.write_bytes(header.tobytes() + np.asarray(tokens, "<u2").tobytes())


def test_fineweb_reader_returns_the_tokens_written(tmp_path):
  tokens = np.random.default_rng(0).integers(0, 50257, size=1000)
  _write_bin(tmp_path / "fineweb_train_000001.bin", tokens)
  read = fineweb.read_shard(tmp_path / "fineweb_train_000001.bin")
  assert read.dtype == np.uint16
  np.testing.assert_array_equal(np.asarray(read), tokens)
  # And write_shard writes the same bytes as the test's own writer.
  fineweb.write_shard(tmp_path / "b.bin", tokens)
  assert (tmp_path / "b.bin").read_bytes() == (
      tmp_path / "fineweb_train_000001.bin").read_bytes()


@pytest.mark.parametrize("kwargs, match", [
    ({"magic": 20240521}, "magic"),
    ({"version": 2}, "version"),
    ({"count": 999}, "header says 999 tokens"),
])
def test_fineweb_reader_rejects_a_bad_header(tmp_path, kwargs, match):
  _write_bin(tmp_path / "x_train.bin", np.arange(500), **kwargs)
  with pytest.raises(DataError, match=match):
    fineweb.read_shard(tmp_path / "x_train.bin")


def test_lm_task_on_fineweb_uses_the_shards(tmp_path):
  rng = np.random.default_rng(0)
  train = rng.integers(0, 50257, size=3000)
  val = rng.integers(0, 50257, size=400)
  _write_bin(tmp_path / "fineweb_train_000001.bin", train)
  _write_bin(tmp_path / "fineweb_val_000000.bin", val)
  task = lm.make_task(data_dir=str(tmp_path), tiny=True)
  assert "vocab 50304" in task.summary
  batch = next(task.batches(np.random.default_rng(0)))
  chex.assert_shape(batch, (8, lm.TINY.seq_len + 1))
  windows = np.lib.stride_tricks.sliding_window_view(train, batch.shape[1])
  for row in batch:  # each row is a window of the training tokens
    assert (windows == row).all(axis=1).any()
  # The metric reads the validation shard: a model that predicts the uniform
  # distribution scores log(vocab_size).
  model = task.make_model(nnx.Rngs(0))
  model.head.kernel[...] = jnp.zeros_like(model.head.kernel[...])
  np.testing.assert_allclose(task.evaluate(model), np.log(50304), rtol=1e-5)


def test_pydoc_split_is_disjoint_and_complete():
  tokens = pydoc_text.load_bytes()
  assert len(tokens) > 100_000 and tokens.max() < 256
  train, val = pydoc_text.split(tokens, 0.1)
  np.testing.assert_array_equal(np.concatenate([train, val]), tokens)
  assert abs(len(val) / len(tokens) - 0.1) < 1e-3


# ---------------------------------------------------------------- registry


def test_parse_opt_and_lr():
  assert registry.parse_opt("muon:ns_coeffs=polar_express,ns_steps=6") == (
      "muon", {"ns_coeffs": "polar_express", "ns_steps": 6})
  assert registry.parse_opt("adamuon:nesterov=False, beta2=0.99") == (
      "adamuon", {"nesterov": False, "beta2": 0.99})
  assert registry.parse_opt("muon:ns_coeffs=((3.4,-4.7,2.0),(1.9,-1.3,0.4))"
                            ) == ("muon", {"ns_coeffs": (
                                (3.4, -4.7, 2.0), (1.9, -1.3, 0.4))})
  assert registry.parse_lr("muon=3e-2") == ("muon", 0.03)
  for bad in ("muon", "muon:", "muon:x"):
    with pytest.raises(ValueError):
      registry.parse_opt(bad)
  with pytest.raises(ValueError):
    registry.parse_lr("muon=-1")


def test_default_learning_rates_fall_back_sensibly():
  lrs = {"adamw": 1e-3, "muon": 0.02, "mommuon": 0.05}
  assert registry.default_lr("adamw", lrs) == 1e-3
  assert registry.default_lr("muon_pe", lrs) == 0.02  # its alias, muon
  assert registry.default_lr("mommuon", lrs) == 0.05  # listed by the task
  assert registry.default_lr("normuon", lrs) == 0.02  # not listed: muon's
  assert registry.default_lr("muon_rms", lrs) == 1e-3  # rms: AdamW's
  assert registry.default_lr("muon", lrs, {"shape_scale": "rms"}) == 0.02


def test_presets_pass_their_options_to_the_alias():
  params = {"w": jnp.asarray(
      np.random.default_rng(0).normal(size=(8, 16)), jnp.float32),
            "b": jnp.ones((16,))}
  grads = jax.tree.map(lambda p: jnp.cos(3 * p), params)

  def update(tx):
    return tx.update(grads, tx.init(params), params)[0]

  options = registry.options_for("muon_pe", {"ns_steps": 4})
  assert options == {"ns_coeffs": "polar_express", "ns_steps": 4}
  got = update(registry.build("muon_pe", 0.05, options, 1e-3))
  want = update(om.muon(0.05, ns_coeffs="polar_express", ns_steps=4,
                        adamw_learning_rate=1e-3))
  chex.assert_trees_all_close(got, want)
  plain = update(registry.build("muon", 0.05, {}, 1e-3))
  assert not np.allclose(got["w"], plain["w"], atol=1e-4)
  # The AdamW part uses the task's AdamW rate: its first step is -lr*sign(g).
  np.testing.assert_allclose(plain["b"], -1e-3 * np.sign(grads["b"]),
                             rtol=1e-4)
  with pytest.raises(ValueError, match="bogus"):
    registry.options_for("muon", {"bogus": 1})
  adamw = update(registry.build("adamw", 0.01, {}, 0.0))
  want = update(optax.adamw(0.01, b1=0.9, b2=0.95, weight_decay=0.0))
  chex.assert_trees_all_close(adamw, want)


# -------------------------------------------------------------- compare.py


def _check_results(record, task, steps, optimizers, metric):
  assert record["task"] == task and record["steps"] == steps
  assert [r["optimizer"] for r in record["runs"]] == optimizers
  for run in record["runs"]:
    assert set(run) >= {"optimizer", "learning_rate", "final_train_loss",
                        "eval_metric", "seconds", "history"}
    assert isinstance(run["learning_rate"], float)
    assert run["eval_metric"]["name"] == metric
    assert math.isfinite(run["eval_metric"]["value"])
    assert run["seconds"] > 0
    assert [s for s, _ in run["history"]] == list(range(1, steps + 1))
    losses = [v for _, v in run["history"]]
    assert np.isclose(run["final_train_loss"], np.mean(losses[-10:]))


@pytest.mark.slow
@pytest.mark.parametrize("task, metric, optimizers, steps", [
    ("image", "test_accuracy", "adamw,muon", 12),
    ("implicit", "psnr", "adamw,muon,adamuon,mommuon,ogsignmuon,normuon", 12),
    ("lm", "val_loss", "adamw,muon", 12),
])
def test_compare_trains_every_optimizer(tmp_path, capsys, task, metric,
                                        optimizers, steps):
  out = tmp_path / "out"
  record = compare.main([
      "--task", task, "--tiny", "--steps", str(steps), "--optimizers",
      optimizers, "--out", str(out), "--num-evals", "1", "--no-progress",
      "--seed", "3"])
  names = optimizers.split(",")
  written = json.loads((out / "results.json").read_text())
  assert written == json.loads(json.dumps(record))
  _check_results(written, task, steps, names, metric)
  for run in written["runs"]:
    losses = [v for _, v in run["history"]]
    assert np.mean(losses[-3:]) < losses[0], run["optimizer"]
  # Same seed, same data, same start: every run's first loss is the same.
  first = [run["history"][0][1] for run in written["runs"]]
  np.testing.assert_allclose(first, first[0], rtol=1e-5)
  for png in (f"{task}_loss.png", f"{task}_{metric}.png"):
    assert (out / png).read_bytes()[:8] == PNG_MAGIC
  table = capsys.readouterr().out
  for name in names:
    assert f"| {name} |" in table


@pytest.mark.slow
def test_compare_lr_override_options_and_sweep(tmp_path):
  record = compare.main([
      "--task", "implicit", "--tiny", "--steps", "4", "--optimizers",
      "muon", "--lr-sweep", "--lr-grid", "0.001,0.1", "--out",
      str(tmp_path), "--num-evals", "1", "--no-progress",
      "--opt", "muon:ns_coeffs=polar_express"])
  assert [r["learning_rate"] for r in record["runs"]] == [0.001, 0.1]
  assert record["runs"][0]["options"] == {"ns_coeffs": "polar_express"}
  assert (tmp_path / "implicit_lr_sweep.png").read_bytes()[:8] == PNG_MAGIC
  # A larger step moves the fit further in 4 steps.
  first, last = ([r["history"][0][1] - r["history"][-1][1]]
                 for r in record["runs"])
  assert last > first

  record = compare.main([
      "--task", "implicit", "--tiny", "--steps", "2", "--optimizers",
      "adamw", "--lr", "adamw=0.0123", "--out", str(tmp_path),
      "--num-evals", "1", "--no-progress"])
  assert record["runs"][0]["learning_rate"] == 0.0123


@pytest.mark.parametrize("task, expected", [
    ("image", "cifar-10-batches-py"),
    ("lm", "modded-nanogpt's format"),
    ("implicit", "takes no data directory"),
])
def test_bad_data_dir_is_a_one_line_error(tmp_path, task, expected):
  (tmp_path / "junk.txt").write_text("not a dataset")
  with pytest.raises(SystemExit) as info:
    compare.main(["--task", task, "--data-dir", str(tmp_path), "--out",
                  str(tmp_path / "out"), "--no-progress"])
  message = str(info.value.code)
  assert message.startswith("compare.py: error: --data-dir")
  assert expected in message and "\n" not in message
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, expected", [
    (["--optimizers", "adamw,sgd"], "Unknown optimizer 'sgd'"),
    (["--opt", "muon:bogus=1"], "Unknown option(s) bogus"),
    (["--lr", "muon=abc"], "expected NAME=VALUE"),
    (["--optimizers", "adamw", "--lr", "muon=0.1"], "not in --optimizers"),
])
def test_bad_arguments_are_reported(capsys, argv, expected):
  with pytest.raises(SystemExit) as info:
    compare.main(["--task", "lm", *argv])
  assert info.value.code == 2
  assert expected in capsys.readouterr().err


@pytest.mark.slow
def test_sharded_train_keeps_fsdp_layout_on_8_simulated_devices():
  """examples/sharded_train.py: FSDP params and momentum stay sharded."""
  import os
  import re
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root)
  out = subprocess.run(
      [sys.executable, os.path.join(root, "examples", "sharded_train.py"),
       "--simulate", "8", "--steps", "10", "--d-model", "32"],
      capture_output=True, text=True, env=env, timeout=600, check=True).stdout
  assert "8 devices" in out and "ns_mesh_axis=data" in out
  losses = [float(x) for x in re.findall(r"loss (\d+\.\d+)", out)]
  assert len(losses) >= 2 and losses[-1] < losses[0] - 0.5, out
  assert re.search(r"after training: .*P\(None, 'data'\) its momentum "
                   r"P\(None, 'data'\)", out), out
