"""Tests of the examples: data readers, optimizer registry, compare.py (its
command line, the runs of examples/runs.py, the report of examples/report.py).
"""

import ast
import dataclasses
import json
import math
import pickle
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optax_muon as om
from examples import compare, report, studies, tasks, training
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


@pytest.mark.slow
@pytest.mark.integration
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


@pytest.mark.slow
@pytest.mark.integration
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
  # a ~TAG suffix names one more run of the same preset
  assert registry.default_lr("mommuon~every2", lrs) == 0.05
  assert registry.options_for("mommuon_every10~x", {"ns_beta": 0.0}) == {
      "ns_every": 10, "ns_beta": 0.0}


def test_registry_reads_the_library_aliases_and_imports_no_study():
  # Every alias of the library's registry, under its name, at its defaults.
  for name, alias in om.ALIASES.items():
    assert registry.OPTIMIZERS[name] == (alias, {}), name
  assert set(registry.DEFAULT_OPTIMIZERS) <= set(registry.OPTIMIZERS)
  # The registry module imports no study ...
  source = ast.parse(open(registry.__file__).read())
  imported = [n.module or "" for n in ast.walk(source)
              if isinstance(n, ast.ImportFrom)] + [
                  a.name for n in ast.walk(source)
                  if isinstance(n, ast.Import) for a in n.names]
  assert "optax_muon" in imported
  assert not [m for m in imported if m.startswith("examples")], imported
  # ... the study registers itself, and compare.py's --optimizers offers it.
  studies.load()
  from examples.studies import ogsign_spectral
  assert registry.OPTIMIZERS["ogsignmuon_spectral"] == (
      ogsign_spectral.ogsignmuon_spectral, {})
  assert "ogsignmuon_spectral" in compare.build_parser().format_help()
  compare.parse_args(["--task", "lm", "--optimizers", "ogsignmuon_spectral"])


def test_register_adds_a_preset_and_rejects_bad_ones(monkeypatch):
  monkeypatch.setattr(registry, "OPTIMIZERS", dict(registry.OPTIMIZERS))
  registry.register("muon_four", om.muon, {"ns_steps": 4})
  assert registry.options_for("muon_four~x") == {"ns_steps": 4}
  registry.register("muon_four", om.muon, {"ns_steps": 3})  # a reload
  assert registry.OPTIMIZERS["muon_four"] == (om.muon, {"ns_steps": 3})
  with pytest.raises(ValueError,
                     match=r"register\('muon'\): .*taken by .*muon; choose"):
    registry.register("muon", om.adamuon)
  with pytest.raises(ValueError, match="'muon~x'.*identifier"):
    registry.register("muon~x", om.muon)
  with pytest.raises(ValueError, match="must be a function"):
    registry.register("muon_x", "om.muon")
  with pytest.raises(ValueError, match="does not accept bogus"):
    registry.register("muon_x", om.muon, {"bogus": 1})
  assert "muon_x" not in registry.OPTIMIZERS


@pytest.mark.slow
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


@pytest.mark.slow
def test_ogsignmuon_spectral_has_muons_spectral_norm_and_the_momentums_signs():
  w = jnp.asarray(np.random.default_rng(1).normal(size=(12, 20)), jnp.float32)
  params, grads = {"w": w}, {"w": jnp.cos(3 * w)}

  def update(tx):
    return np.asarray(tx.update(grads, tx.init(params), params)[0]["w"])

  studies.load()  # the study registers its optimizer
  got = update(registry.build("ogsignmuon_spectral", 0.1, {}, 1e-3))
  muon = update(om.muon(0.1, ns_dtype=jnp.float32))
  # 16 power iterations estimate each spectral norm to about 1%
  np.testing.assert_allclose(np.linalg.norm(got, 2), np.linalg.norm(muon, 2),
                             rtol=2e-2)
  np.testing.assert_array_equal(np.sign(got), -np.sign(grads["w"]))


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


def _check_compare_run(out, record, table, task, metric, optimizers, steps):
  """What a compare.py run of several optimizers on one task writes and
  prints: results.json (the returned record), every run's history and
  metric, a loss that falls, the same first loss in every run (same seed,
  same data, same start), both plots and a table row per optimizer."""
  names = optimizers.split(",")
  written = json.loads((out / "results.json").read_text())
  assert written == json.loads(json.dumps(record))
  _check_results(written, task, steps, names, metric)
  for run in written["runs"]:
    losses = [v for _, v in run["history"]]
    assert np.mean(losses[-3:]) < losses[0], run["optimizer"]
  first = [run["history"][0][1] for run in written["runs"]]
  np.testing.assert_allclose(first, first[0], rtol=1e-5)
  for png in (f"{task}_loss.png", f"{task}_{metric}.png"):
    assert (out / png).read_bytes()[:8] == PNG_MAGIC
  for name in names:
    assert f"| {name} |" in table


def _compare(task, optimizers, steps, out, *extra):
  return compare.main([
      "--task", task, "--tiny", "--steps", str(steps), "--optimizers",
      optimizers, "--out", str(out), "--num-evals", "1", "--no-progress",
      "--seed", "3", *extra])


def _compare_defaults(task, steps, out):
  """compare.py --task TASK at its own defaults, --steps shortened."""
  return compare.main(["--task", task, "--steps", str(steps), "--out",
                       str(out)])


DEFAULTS = ",".join(registry.DEFAULT_OPTIMIZERS)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("task, metric", [
    ("image", "test_accuracy"), ("implicit", "psnr"), ("lm", "val_loss")])
def test_compare_at_its_defaults_trains_every_default_optimizer(
    tmp_path, capsys, task, metric):
  """The command a user runs first, compare.py --task TASK, with only
  --steps shortened: the task's own model, data, learning rates and
  evaluations; every default optimizer trains (_check_compare_run)."""
  steps = 12
  record = _compare_defaults(task, steps, tmp_path / "out")
  _check_compare_run(tmp_path / "out", record, capsys.readouterr().out, task,
                     metric, DEFAULTS, steps)
  assert record["seed"] == 0 and record["options"].get("tiny", False) is False
  for run in record["runs"]:
    assert [s for s, _ in run["eval_history"]] == training.eval_steps(
        steps, 10)


@pytest.mark.slow
def test_compare_lr_sets_one_optimizers_rate(tmp_path, capsys):
  """--lr NAME=VALUE sets one optimizer's learning rate, the others keep
  the task's defaults; NorMuon (not a default optimizer) trains too."""
  lr, optimizers = "adamw=0.0123", "adamw,normuon"
  record = _compare("implicit", optimizers, 12, tmp_path / "out", "--lr", lr)
  _check_compare_run(tmp_path / "out", record, capsys.readouterr().out,
                     "implicit", "psnr", optimizers, 12)
  rates = {r["optimizer"]: r["learning_rate"] for r in record["runs"]}
  assert rates == {"adamw": 0.0123, "normuon": registry.default_lr(
      "normuon", tasks.get("implicit").LEARNING_RATES)}


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
  # --lr NAME=VALUE: in test_compare_lr_sets_one_optimizers_rate.


@pytest.mark.slow
def test_compare_lm_trains_records_max_logits_and_qk_clip_caps_them(
    tmp_path, capsys):
  """compare.py --task lm --qk-clip TAU trains Muon like the other tasks
  (_check_compare_run's checks; as ``muon~tagged``: a
  ``~TAG`` suffix names one more run of a preset; AdamW trains on lm, and
  records its logits unclipped, in
  test_compare_lm_gpt2_small_bf16_reports_tokens_and_target) and records
  each step's largest attention logit. Step 1 runs the initial model (its
  loss and largest logit are the model's own on the first batch, well above
  TAU, so step 1 clips); every step after a clip starts from logits near
  TAU (the next batch and update move them a little). --target-loss sets
  the target of steps_to_target."""
  steps, tau = 12, 0.5
  record = _compare("lm", "muon~tagged", steps, tmp_path / "out",
                    "--qk-clip", str(tau), "--target-loss", "100")
  _check_compare_run(tmp_path / "out", record, capsys.readouterr().out, "lm",
                     "val_loss", "muon~tagged", steps)
  assert record["qk_clip"] == tau
  (run,) = record["runs"]
  assert run["qk_clip"] == tau
  assert [s for s, _ in run["max_logit_history"]] == list(range(1, steps + 1))
  # The same seed (3) gives compare.py's initial weights and first batch.
  task = lm.make_task(tiny=True)
  loss, max_logits = nnx.jit(task.max_logits_loss)(
      task.make_model(nnx.Rngs(3)),
      next(task.batches(np.random.default_rng(3))))
  top = max(float(jnp.max(v)) for v in max_logits.values())
  np.testing.assert_allclose(run["history"][0][1], float(loss), rtol=1e-5)
  np.testing.assert_allclose(run["max_logit_history"][0][1], top, rtol=1e-5)
  assert top > 4 * tau  # so step 1 clips
  assert max(v for _, v in run["max_logit_history"][1:]) < 2 * tau
  # An explicit target, reached at once; one below every loss, never.
  assert record["target_loss"] == {
      "value": 100.0, "source": "--target-loss",
      "smoothing": "mean of the last 10 steps' losses"}
  assert run["steps_to_target"] == 1
  assert training.steps_to_target(
      [tuple(x) for x in run["history"]], 0.0) is None


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


# examples/sharded_train.py runs at its defaults on 8 devices in
# test_sharding.py (in the worker process of its other 8-device checks; with
# a resume) and on two processes in test_multihost.py.


# ----------------------------------------------- checkpoints and resume (#21)


def _same_runs(got, want):
  """Two results.json records hold the same runs: every loss, evaluation
  and final loss to the last bit (the timings aside)."""
  keys = ("optimizer", "learning_rate", "history", "eval_history",
          "final_train_loss", "eval_metric", "steps_to_target")
  assert [{k: r[k] for k in keys} for r in got["runs"]] == [
      {k: r[k] for k in keys} for r in want["runs"]]


@pytest.mark.slow
def test_compare_resumes_the_same_runs_and_refuses_other_ones(tmp_path,
                                                             capsys):
  """compare.py --checkpoint-dir, then --resume as after a crash during the
  second of two runs just after its step-3 save (its later checkpoints
  removed): the first, finished run is read back, the second continues from
  step 3 (model, optimizer state, data position, history), and the record
  is the uninterrupted one's, to the last bit. A folder with checkpoints
  without --resume, and --resume with another seed, are one-line errors
  that name the folder or the setting."""
  import shutil

  ckpt = tmp_path / "ckpt"
  argv = ["--checkpoint-dir", str(ckpt), "--checkpoint-every", "3",
          "--checkpoint-keep", "5"]
  want = _compare("implicit", "muon,adamw", 8, tmp_path / "a", *argv)
  assert sorted(p.name for p in (ckpt / "adamw").iterdir()) == ["3", "6", "8"]
  for step in ("6", "8"):
    shutil.rmtree(ckpt / "adamw" / step)
  got = _compare("implicit", "muon,adamw", 8, tmp_path / "b", *argv,
                 "--resume")
  out = capsys.readouterr().out
  assert "muon: resumed from step 8" in out
  assert "adamw: resumed from step 3" in out
  _same_runs(got, want)
  assert [r["resumed_from"] for r in got["runs"]] == [8, 3]
  again = ["--task", "implicit", "--tiny", "--steps", "8", "--optimizers",
           "muon", "--out", str(tmp_path / "x"), "--num-evals", "1",
           "--no-progress", "--seed", "3", *argv]
  for extra, message in (([], "already holds checkpoints (latest step 8)"),
                         (["--resume", "--seed", "4"],
                          "seed: checkpoint 3, this run 4")):
    with pytest.raises(SystemExit) as info:
      compare.main(again + extra)  # the last --seed counts
    text = str(info.value.code)
    assert text.startswith("compare.py: error:") and message in text, text
    assert "\n" not in text


@pytest.mark.integration
def test_compare_killed_after_a_save_resumes_to_the_same_final_loss(
    tmp_path):
  """compare.py in a subprocess, killed with SIGKILL as soon as its first
  run's step-10 checkpoint is on disk (mid-run: 40 steps, a save every 5;
  maybe mid-save of a later one, which orbax's atomic rename leaves
  unused), then the same command with --resume: every run's history and
  final loss equal an uninterrupted run's with the same seed, to the last
  bit (the CPU is deterministic)."""
  import os
  import signal
  import subprocess
  import sys
  import time

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (root, env.get("PYTHONPATH")) if p)
  base = [sys.executable, os.path.join(root, "examples", "compare.py"),
          "--task", "implicit", "--tiny", "--steps", "40", "--optimizers",
          "muon,adamw", "--num-evals", "2", "--no-progress", "--seed", "1"]
  ckpt = tmp_path / "ckpt"
  argv = ["--checkpoint-dir", str(ckpt), "--checkpoint-every", "5"]
  subprocess.run([*base, "--out", str(tmp_path / "a")], cwd=root, env=env,
                 check=True, capture_output=True, timeout=600)
  proc = subprocess.Popen([*base, "--out", str(tmp_path / "b"), *argv],
                          cwd=root, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
  try:
    deadline = time.monotonic() + 600
    while not (ckpt / "muon" / "10").is_dir():
      assert proc.poll() is None, proc.communicate()[1][-3000:]
      assert time.monotonic() < deadline
      time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.kill()
    proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  assert not (tmp_path / "b" / "results.json").exists()
  done = subprocess.run([*base, "--out", str(tmp_path / "b"), *argv,
                         "--resume"], cwd=root, env=env, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "muon: resumed from step" in done.stdout, done.stdout
  want, got = (json.loads((tmp_path / d / "results.json").read_text())
               for d in "ab")
  _same_runs(got, want)
  assert got["runs"][0]["resumed_from"] >= 10


# ------------------------------------------- presets, bf16, throughput (#13)


def _gpt_param_count(d, n_layers, vocab, seq_len, mlp_ratio=4):
  """GPT-2's count for this model (untied head, biases only in the MLP)."""
  h = mlp_ratio * d
  block = 4 * d * d + (d * h + h) + (h * d + d) + 2 * (2 * d)
  return vocab * d + seq_len * d + n_layers * block + 2 * d + d * vocab


@pytest.mark.slow
@pytest.mark.parametrize("preset, layers, width, heads, millions", [
    ("gpt2-small", 12, 768, 12, 163), ("gpt2-medium", 24, 1024, 16, 406)])
def test_gpt2_presets_have_gpt2_sizes_and_library_labels(
    preset, layers, width, heads, millions):
  config = dataclasses.replace(lm.PRESETS[preset].config, vocab_size=50304)
  assert (config.n_layers, config.d_model, config.n_heads, config.seq_len) == (
      layers, width, heads, 1024)
  params = nnx.state(nnx.eval_shape(lambda: lm.GPT(config, nnx.Rngs(0))),
                     nnx.Param)
  leaves = jax.tree_util.tree_leaves_with_path(params)
  count = sum(int(np.prod(leaf.shape)) for _, leaf in leaves)
  assert count == _gpt_param_count(width, layers, 50304, 1024)
  assert round(count / 1e6) == millions
  labels = dict(
      (jax.tree_util.keystr(p), label) for p, label in
      jax.tree_util.tree_leaves_with_path(om.muon_labels(params)))
  for path, leaf in leaves:
    key = jax.tree_util.keystr(path)
    if any(n in key for n in ("'embed'", "'pos_embedding'", "'head'")):
      want = "adamw"  # embeddings and the output head, by name
    else:
      want = "muon" if leaf.ndim == 2 else "adamw"
    assert labels[key] == want, key
  assert sum(v == "muon" for v in labels.values()) == 6 * layers
  # --tiny shrinks the preset to two layers of its heads, 4 wide, context
  # 32. The tiny gpt2-small trains through compare.py --preset in
  # test_compare_lm_gpt2_small_bf16_reports_tokens_and_target; the tiny
  # gpt2-medium is the same model with these other numbers.
  assert lm.make_task(preset=preset, tiny=True).options == {
      "preset": preset, "tiny": True, "n_layers": 2, "d_model": 4 * heads,
      "n_heads": heads, "seq_len": 32, "vocab_size": 256, "batch_size": 8,
      "dtype": "float32", "param_dtype": "float32"}


@pytest.mark.slow
def test_bf16_gpt_computes_in_bf16_and_keeps_float32_state():
  config = dataclasses.replace(lm.TINY, compute_dtype="bfloat16")
  model = lm.GPT(config, nnx.Rngs(0))
  reference = lm.GPT(lm.TINY, nnx.Rngs(0))  # same weights, float32 compute
  tokens = jnp.asarray(
      np.random.default_rng(0).integers(0, 256, size=(2, 33)), jnp.int32)
  # Every matrix product of the forward pass takes bfloat16 operands.
  hlo = jax.jit(lambda t: model(t)).lower(tokens[:, :-1]).as_text()
  dots = [line for line in hlo.splitlines() if "dot_general" in line]
  assert len(dots) >= 6 * config.n_layers + 1
  for line in dots:
    operands = re.search(r":\s*\((.*)\)\s*->", line).group(1)
    assert operands.count("xbf16>") == 2, line
  forward = nnx.jit(lambda m, t: m(t))
  logits = forward(model, tokens[:, :-1])
  assert logits.dtype == jnp.float32
  # Untrained logits are small (std ~0.02 weights): compare with an absolute
  # tolerance of a few bfloat16 ulps of the activations.
  np.testing.assert_allclose(logits, forward(reference, tokens[:, :-1]),
                             atol=2e-2)
  # Gradients (abstractly evaluated) and optimizer state stay float32.
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  grads = jax.eval_shape(jax.grad(
      lambda p: lm.loss_fn(nnx.merge(graphdef, p, rest), tokens)), params)
  optimizer = nnx.Optimizer(model, om.muon(0.02), wrt=nnx.Param)
  floats = [leaf.dtype for leaf in jax.tree.leaves(params)
            + jax.tree.leaves(grads) + jax.tree.leaves(nnx.state(optimizer))
            if jnp.issubdtype(leaf.dtype, jnp.floating)]
  assert len(floats) > 3 * len(jax.tree.leaves(params))
  assert set(floats) == {jnp.dtype(jnp.float32)}


def test_steps_to_target_uses_the_trailing_mean():
  history = [(s, v) for s, v in enumerate(
      [5.0, 4.0, 3.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], 1)]
  means = training.trailing_mean([v for _, v in history])
  np.testing.assert_allclose(means[:3], [5.0, 4.5, 4.0])
  np.testing.assert_allclose(means[-1], np.mean([3.0, 2.0] + [1.0] * 8))
  assert training.steps_to_target(history, 4.0) == 3
  assert training.steps_to_target(history, means[-1]) == 12
  assert training.steps_to_target(history, 0.5) is None
  assert training.steps_to_target(history, math.nan) is None
  assert training.steps_to_target([(1, math.nan)], 10.0) is None


def _result(name, losses, metric, *, learning_rate=0.02):
  return training.RunResult(
      optimizer=name, learning_rate=learning_rate, options={},
      history=list(enumerate(losses, 1)), eval_history=[(len(losses), metric)],
      metric="psnr", seconds=1.0, step_ms=2.0, cpu_seconds=1.5)


def test_report_picks_the_target_and_formats_the_table():
  task = training.Task(
      name="implicit", summary="", make_model=None, loss=None, batches=None,
      evaluate=None, metric="psnr", higher_is_better=True,
      learning_rates={"adamw": 0.01, "muon": 0.02}, default_steps=2)
  adamw = _result("adamw", [3.0, 2.0], 30.0, learning_rate=0.01)
  muon = _result("muon", [3.0, 1.0], 35.0)
  bad = _result("muon~big", [3.0, math.nan], math.nan)
  # --target-loss, else AdamW's final loss, else the highest finite one.
  assert report.pick_target([adamw], 9.0, lr_sweep=True) == {
      "value": 9.0, "source": "--target-loss"}
  assert report.pick_target([adamw, muon, bad], None) == {
      "value": 2.5, "source": "adamw final_train_loss"}
  assert report.pick_target([muon, bad], None) == {
      "value": 2.0, "source": "highest final_train_loss"}
  assert report.pick_target([bad], None)["value"] is None
  assert report.pick_target([adamw], None, lr_sweep=True)["value"] is None
  target = report.pick_target([adamw, muon, bad], None)
  report.score([adamw, muon, bad], target)
  assert [r.steps_to_target for r in (adamw, muon, bad)] == [2, 2, None]
  table = report.format_table(task, [adamw, muon, bad], target["value"])
  rows = table.splitlines()
  assert rows[0].endswith("| steps to 2.5 |")
  assert rows[2].startswith("| adamw | 0.01 | 2.5 | 30.0000 | 1.0 | 1.5 |")
  assert "| **35.0000** |" in rows[3]  # PSNR: higher is better
  assert "| diverged | diverged |" in rows[4] and "not reached" in rows[4]
  assert len({row.count("|") for row in rows}) == 1
  text = report.to_json_text({"history": [[1, 2.5], [2, None]]})
  assert "[1, 2.5]" in text and "[2, null]" in text
  assert json.loads(text) == {"history": [[1, 2.5], [2, None]]}


def _run(tmp_path, *argv):
  out = tmp_path / "out"
  record = compare.main([*argv, "--out", str(out), "--num-evals", "1",
                         "--no-progress"])
  assert json.loads((out / "results.json").read_text()) == json.loads(
      json.dumps(record))
  return record


def _check_steps_to_target(run, target):
  """``steps_to_target`` is the first step whose trailing mean is at most
  ``target`` (both as written to JSON, 7 significant digits)."""
  steps = run["steps_to_target"]
  smoothed = training.trailing_mean([v for _, v in run["history"]])
  reached = [v <= target * (1 + 1e-6) for v in smoothed]
  if steps is None:
    assert not any(v <= target * (1 - 1e-6) for v in smoothed)
  else:
    assert reached[steps - 1]
    assert not any(v <= target * (1 - 1e-6) for v in smoothed[:steps - 1])


@pytest.mark.slow
@pytest.mark.integration
def test_compare_lm_gpt2_small_bf16_reports_tokens_and_target(tmp_path,
                                                               capsys):
  record = _run(tmp_path, "--task", "lm", "--preset", "gpt2-small", "--tiny",
                "--bf16", "--seq-len", "16", "--batch-size", "4", "--steps",
                "6", "--optimizers", "adamw")
  assert record["options"] == {
      "preset": "gpt2-small", "tiny": True, "n_layers": 2, "d_model": 48,
      "n_heads": 12, "seq_len": 16, "vocab_size": 256, "batch_size": 4,
      "dtype": "bfloat16", "param_dtype": "float32"}
  # AdamW trains on the lm task (the checks of
  # _check_compare_run) and records the attention logits.
  _check_results(record, "lm", 6, ["adamw"], "val_loss")
  (run,) = record["runs"]
  assert all(math.isfinite(v) for _, v in run["history"])
  losses = [v for _, v in run["history"]]
  assert np.mean(losses[-3:]) < losses[0]
  assert [s for s, _ in run["max_logit_history"]] == list(range(1, 7))
  # The default target is AdamW's own final train loss: reached by step 6.
  assert record["target_loss"] == {
      "value": run["final_train_loss"], "source": "adamw final_train_loss",
      "smoothing": "mean of the last 10 steps' losses"}
  assert 1 <= run["steps_to_target"] <= 6
  _check_steps_to_target(run, record["target_loss"]["value"])
  # 4 x 16 tokens a step over steps 2..6, at the step time recorded.
  assert run["tokens_per_second"] > 0
  np.testing.assert_allclose(run["tokens_per_second"],
                             64 * 1000 / run["step_ms"], rtol=1e-3)
  table = capsys.readouterr().out
  assert "| tokens/s | steps to " in table and "| adamw |" in table


@pytest.mark.slow
def test_resnet_batch_stats_stay_out_of_the_optimizer(tmp_path):
  _write_cifar(tmp_path / "c", sizes=(8, 8, 8, 8, 8), test_size=8)
  task = image.make_task(data_dir=str(tmp_path / "c"), tiny=True,
                         preset="resnet", batch_size=8)
  model = task.make_model(nnx.Rngs(0))
  assert isinstance(model, image.ResNet)
  stats = nnx.state(model, nnx.BatchStat)
  assert len(jax.tree.leaves(stats)) == 2 * 8  # mean and var of 8 norms
  optimizer = nnx.Optimizer(model, om.muon(0.02), wrt=nnx.Param)
  opt_paths = [jax.tree_util.keystr(p) for p, _ in
               jax.tree_util.tree_leaves_with_path(nnx.state(optimizer))]
  assert not [p for p in opt_paths if "'mean'" in p or "'var'" in p]
  params = nnx.state(model, nnx.Param)
  labels = jax.tree.leaves(om.muon_labels(params))
  assert labels.count("muon") == 8  # the eight conv kernels
  x, _ = next(task.batches(np.random.default_rng(0)))
  chex.assert_shape(x, (8, 32, 32, 3))
  # A forward pass in training mode updates the running statistics (the
  # training steps themselves run in the compare.py test below).
  before = jax.tree.map(np.asarray, stats)
  logits = nnx.jit(lambda m, x: m(x))(model, x)
  assert logits.dtype == jnp.float32 and np.isfinite(logits).all()
  after = nnx.state(model, nnx.BatchStat)
  moved = jax.tree.map(lambda a, b: not np.allclose(a, b), before, after)
  assert all(jax.tree.leaves(moved))
  assert 0 <= task.evaluate(model) <= 1  # with the running statistics
  assert model.stem.norm.use_running_average is False  # back in training


def test_random_crop_is_a_shifted_reflection():
  x = np.arange(2 * 5 * 6 * 1, dtype=np.float32).reshape(2, 5, 6, 1)
  rng = np.random.default_rng(0)
  out = image.random_crop(x, 2, rng)
  chex.assert_shape(out, x.shape)
  padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
  for img, src in zip(out, padded):
    hits = [(dy, dx) for dy in range(5) for dx in range(5)
            if np.array_equal(src[dy:dy + 5, dx:dx + 6], img)]
    assert hits


@pytest.mark.slow
@pytest.mark.integration
def test_compare_image_resnet_on_cifar_format_files(tmp_path):
  _write_cifar(tmp_path / "c", sizes=(8, 8, 8, 8, 8), test_size=8)
  record = _run(tmp_path, "--task", "image", "--preset", "resnet", "--tiny",
                "--data-dir", str(tmp_path / "c"), "--batch-size", "8",
                "--steps", "3", "--optimizers", "muon", "--bf16")
  assert record["options"]["preset"] == "resnet"
  assert record["options"]["dtype"] == "bfloat16"
  assert "ResNet" in record["summary"]
  for run in record["runs"]:
    assert run["images_per_second"] > 0
    assert all(math.isfinite(v) for _, v in run["history"])


@pytest.mark.parametrize("argv, expected", [
    (["--task", "image", "--preset", "resnet"], "needs --data-dir"),
])
def test_preset_without_its_data_is_a_one_line_error(tmp_path, argv,
                                                     expected):
  with pytest.raises(SystemExit) as info:
    compare.main([*argv, "--out", str(tmp_path / "o"), "--no-progress"])
  message = str(info.value.code)
  assert message.startswith("compare.py: error:") and "\n" not in message
  assert "cifar-10-batches-py" in message


@pytest.mark.parametrize("argv, expected", [
    (["--task", "lm", "--preset", "resnet"], "presets default, gpt2-small"),
    (["--task", "image", "--seq-len", "8"], "--seq-len is for --task lm"),
    (["--task", "implicit", "--bf16"], "is for --task lm or image"),
    (["--task", "implicit", "--preset", "x"], "has no presets"),
    (["--task", "lm", "--batch-size", "0"], "at least 1"),
])
def test_bad_preset_arguments_are_reported(capsys, argv, expected):
  with pytest.raises(SystemExit) as info:
    compare.main(argv)
  assert info.value.code == 2
  assert expected in capsys.readouterr().err
