"""Sharding by hand: one pretraining step under a data, an fsdp and a tensor
mesh of 8 (simulated CPU) devices, with every parameter's sharding and each
mesh's step time.

  python examples/sharding.py --size=mini --batch_size=32

The model and step are the same under each mesh; only the mesh changes, and
lmjax's logical-axis rules (`lmjax.parallel.RULES`) map each parameter's
named axes onto it. The first step's loss agrees across meshes to rounding.
"""

import os
import sys
import time

if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in os.environ.get(
    "XLA_FLAGS", ""):  # before jax starts: 8 CPU devices on any machine
  os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + (
      " --xla_force_host_platform_device_count=8")

import jax  # noqa: E402 (after XLA_FLAGS)
import numpy as np  # noqa: E402
import optax  # noqa: E402

from lmjax import parallel, scripts  # noqa: E402
from lmjax.errors import UserError  # noqa: E402
from lmjax.model import SIZES, BertConfig, BertForPreTraining  # noqa: E402
from lmjax.train import mlm_nsp, steps  # noqa: E402

MESHES = {"data": dict(data=-1), "fsdp": dict(data=1, fsdp=-1),
          "tensor": dict(data=-1, tensor=2)}  # (data, fsdp, tensor) sizes; -1: the rest


def parse(argv):
  parser = scripts.parser(__doc__)
  parser.add_argument("--size", default="mini", choices=sorted(SIZES))
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--max_seq_length", type=int, default=128)
  parser.add_argument("--steps", type=int, default=5, help="timed steps after the first")
  args = scripts.parse(parser, argv)
  if args.steps < 1 or args.batch_size < 1:
    raise UserError("--steps and --batch_size must be at least 1")
  if not 8 <= args.max_seq_length <= 512:
    raise UserError(f"--max_seq_length={args.max_seq_length}: give 8 to 512")
  if jax.device_count() < 2 or args.batch_size % jax.device_count():
    raise UserError(f"--batch_size={args.batch_size} must split over the "
                    f"{jax.device_count()} devices (and there must be 2 or more)")
  return args


def synthetic_batch(batch: int, length: int, vocab: int, seed: int = 0) -> dict:
  """A pretraining batch of random tokens: the step's shapes, not its data."""
  rng = np.random.default_rng(seed)
  predictions = max(1, length // 8)
  return dict(input_ids=rng.integers(5, vocab, (batch, length), dtype=np.int32),
              segment_ids=np.zeros((batch, length), np.int32),
              input_mask=np.ones((batch, length), np.int32),
              masked_positions=rng.integers(1, length, (batch, predictions), dtype=np.int32),
              masked_ids=rng.integers(5, vocab, (batch, predictions), dtype=np.int32),
              masked_weights=np.ones((batch, predictions), np.float32),
              nsp_labels=rng.integers(0, 2, batch, dtype=np.int32))


def run_on(mesh, model, batch: dict, count: int) -> tuple[dict, float, float, float]:
  """(parameter shardings, first-step loss, compile-and-first-step seconds,
  median step seconds) of `count` steps under `mesh`."""
  tx = optax.adamw(1e-3)
  state, shardings = steps.create_train_state(mlm_nsp.init_params(model, batch), tx, mesh,
                                              jax.random.key(0))
  train_step = steps.jit_train_step(mlm_nsp.make_train_step(model, tx), shardings, mesh)
  sharded = parallel.shard_batch(batch, mesh)
  start = time.perf_counter()
  state, metrics = train_step(state, sharded, jax.random.key(1))
  loss = float(metrics["loss"])
  first = time.perf_counter() - start
  times = []
  for _ in range(count):
    start = time.perf_counter()
    state, metrics = train_step(state, sharded, jax.random.key(1))
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return shardings.params, loss, first, float(np.median(times))


def main(argv: list[str]) -> dict:
  args = parse(argv)
  config = BertConfig.named(args.size, vocab_size=8000, scan_layers=True)
  model = BertForPreTraining(config)
  batch = synthetic_batch(args.batch_size, args.max_seq_length, config.vocab_size)
  shapes = jax.eval_shape(mlm_nsp.init_params(model, batch), jax.random.key(0))
  results = {"shapes": {"/".join(str(getattr(k, "key", k)) for k in path): leaf.value.shape
                        for path, leaf in jax.tree_util.tree_flatten_with_path(
                            shapes, is_leaf=lambda x: hasattr(x, "value"))[0]}}
  for name, sizes in MESHES.items():
    mesh = parallel.make_mesh(**sizes)
    results[name] = run_on(mesh, model, batch, args.steps)
    print(f"{name} mesh {dict(mesh.shape)}: first step (with compilation) "
          f"{results[name][2]:.1f} s, then {1000 * results[name][3]:.1f} ms a step; "
          f"loss {results[name][1]:.6f}", flush=True)
  print("\nparameter (shape) its logical axes' PartitionSpec: each device's piece under the "
        + ", ".join(MESHES) + " meshes")
  columns = [jax.tree_util.tree_flatten_with_path(results[name][0])[0] for name in MESHES]
  for row in zip(*columns, strict=True):
    path = "/".join(str(getattr(key, "key", key)) for key in row[0][0])
    shape = results["shapes"][path]
    pieces = " | ".join(str(sharding.shard_shape(shape)) for _, sharding in row)
    print(f"  {path} {shape} {row[0][1].spec}: {pieces}")
  return {name: dict(loss=results[name][1], step_s=results[name][3]) for name in MESHES}


if __name__ == "__main__":
  scripts.run(main)
