"""Run by tests/launch_test.py as several processes: rounds of evaluation
(lmjax.train.mlm_nsp.evaluate, lmjax.runs.scoring.logits) on many batches,
whose collectives deadlock if independent computations run concurrently on
CPU processes; then sums exchanged between processes. Prints one JSON line."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from lmjax import distributed, parallel
from lmjax.runs import scoring
from lmjax.train import mlm_nsp


def main(rounds: int) -> None:
  distributed.initialize()
  mesh = parallel.make_mesh()
  rows, width = 8 * jax.device_count(), 256
  w = jax.device_put(jnp.linspace(-1, 1, width * width).reshape(width, width),
                     parallel.replicated(mesh))

  @jax.jit
  def eval_step(w, batch):
    h = jnp.tanh(batch["x"] @ w)
    return dict(mlm_loss_sum=h.sum(), nsp_loss_sum=(h ** 2).sum(), mlm_correct=h.max(),
                mlm_count=jnp.float32(h.shape[0]), nsp_correct=h.min(),
                nsp_count=jnp.float32(h.shape[0]))

  def batches(r):
    local = rows // jax.process_count()
    first = jax.process_index() * local
    return [parallel.shard_batch({"x": (np.arange(first, first + local)[:, None] + k + r)
                                  .repeat(width, 1).astype(np.float32) / rows}, mesh)
            for k in range(16)]

  scores = [mlm_nsp.evaluate(eval_step, w, batches(r))["eval_loss"] for r in range(rounds)]
  head = jax.jit(lambda w, b: jnp.tanh(b["x"] @ w)[:, :2],
                 out_shardings=parallel.replicated(mesh))
  logits = scoring.logits(head, w,
                          scoring.DeviceBatches(batches(0), list(np.arange(16 * rows)
                                                                 .reshape(16, rows)), 16 * rows))
  sums = [parallel.sum_over_processes(np.array([jax.process_index() + 1, r], np.int64))
          for r in range(3)]
  print(json.dumps(dict(scores=scores, logits=float(logits.sum()),
                        sums=[s.tolist() for s in sums])), flush=True)


if __name__ == "__main__":
  main(int(sys.argv[1]))
