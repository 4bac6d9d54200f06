"""Optimizer step time of MomMuon against ``ns_every`` (issue 14).

One jitted ``update + apply_updates`` per candidate on the GPT-like tree of
``step_time.py`` (default: the lm example's 4 blocks of width 128, vocab 256),
timed round-robin in one process over windows of 20 steps (every refresh
schedule below divides 20, so each window holds its share of refreshes), per
step, as a ratio to ``om.muon`` in the same run.

Usage:
  python benchmarks/mommuon_every.py --out benchmarks/results/mommuon_every.json
"""

from __future__ import annotations

import argparse

import _common
import numpy as np
from step_time import Stepper

import optax_muon as om

WINDOW = 20


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--blocks", type=int, default=4)
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--vocab", type=int, default=256)
  parser.add_argument("--reps", type=int, default=7)
  parser.add_argument("--everies", default="1,2,5,10,20")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  info = _common.machine()
  print(info)
  shapes = _common.gpt_shapes(args.blocks, args.width, args.vocab)
  params = _common.random_tree(shapes, 0)
  grads = _common.random_tree(shapes, 1)
  cands = {"om.muon": Stepper(om.muon(), params, grads, WINDOW)}
  for e in (int(x) for x in args.everies.split(",")):
    cands[f"mommuon ns_every={e}"] = Stepper(om.mommuon(ns_every=e), params,
                                             grads, WINDOW)
  cands["mommuon seed form (ns_every=1)"] = Stepper(om.mommuon(
      ns_average="preconditioner", ns_beta=0.9, ns_every=1, ns_rescale=False),
      params, grads, WINDOW)
  cpu: dict = {}
  times = _common.interleaved(cands, args.reps, cpu_times=cpu)
  stats = {k: _common.summary([t / WINDOW for t in v])
           for k, v in times.items()}
  base = stats["om.muon"]["median_ms"]
  cpu_base = np.median(cpu["om.muon"])
  rows = []
  for k, s in stats.items():
    s["ratio_to_muon"] = s["median_ms"] / base
    s["cpu_ratio_to_muon"] = float(np.median(cpu[k]) / cpu_base)
    rows.append([k, f"{s['median_ms']:.2f}", f"{s['ratio_to_muon']:.3f}",
                 f"{s['cpu_ratio_to_muon']:.3f}"])
  print(_common.table(rows, ["candidate", "median ms/step", "/ om.muon",
                             "CPU time / om.muon"]))
  _common.write_json(args.out, {"benchmark": "mommuon_every", "machine": info,
                                "args": vars(args), "rows": stats})


if __name__ == "__main__":
  main()
