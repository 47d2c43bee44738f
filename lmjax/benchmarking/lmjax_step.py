"""One benchmark point in its own process: the trainer's jitted step on a
synthetic batch, compiled ahead of time and timed step by step."""

import time

import jax
import numpy as np
import optax

from lmjax import parallel
from lmjax.benchmarking.points import (TRAIN, Point, Settings, batch_figures,
                                      model_config_of, parse_mesh, synthetic_batch, timed_steps)
from lmjax.model import architectures
from lmjax.train import classification, mlm_nsp, optimizer, steps
from lmjax.trainer.throughput import measured_matmul_flops, peak_flops_per_device


class StepWorker:
  """Builds and compiles the point's step; `run(n)` times n steps."""

  def __init__(self, point: Point, settings: Settings):
    self.point, self.settings = point, settings
    self.mesh = parallel.make_mesh(*parse_mesh(point.mesh, jax.device_count()))
    cfg = model_config_of(point, settings)
    host_batch = synthetic_batch(point, settings,
                                 row_multiple=parallel.batch_shards(self.mesh))
    self.shape = batch_figures(host_batch)
    if point.objective == "classification":
      model, objective = architectures.classification_model(cfg, 2), classification
    else:  # BERT's MLM + NSP, ModernBERT's MLM
      model, objective = architectures.pretraining_model(cfg), mlm_nsp
    init = objective.init_params(model, host_batch)
    self.batch = parallel.shard_batch(host_batch, self.mesh)
    self.rng = jax.random.key(1)
    if settings.mode == "train":
      tx = optimizer.create_optimizer(TRAIN)
      self.state, shardings = steps.create_train_state(init, tx, self.mesh, jax.random.key(0))
      self.step = steps.jit_train_step(objective.make_train_step(model, tx), shardings,
                                       self.mesh)
    else:  # forward and backward: the gradients, no optimizer
      self.state, shardings = steps.create_train_state(init, optax.set_to_zero(), self.mesh,
                                                       jax.random.key(0))
      self.state = self.state.params
      grad = jax.value_and_grad(objective.make_loss(model), has_aux=True)
      batch_sharding = parallel.batch_sharding(self.mesh)
      jitted = jax.jit(grad, in_shardings=(shardings.params, batch_sharding,
                                           parallel.replicated(self.mesh)))
      self.step = steps._with_rules(jitted, self.mesh, parallel.RULES)  # pylint: disable=protected-access
    self.compiled = None

  def setup(self) -> dict:
    """Compiles the step and runs the warm-up; the compile-time figures."""
    start = time.perf_counter()
    self.compiled = self.step.lower(self.state, self.batch, self.rng).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    self._step()
    first_step_s = time.perf_counter() - start
    for _ in range(self.settings.warmup):
      self._step()
    device = jax.devices()[0]
    figures = dict(device=device.device_kind, platform=device.platform,
                   devices=jax.device_count(), jax_version=jax.__version__,
                   compile_s=round(compile_s, 2), first_step_s=round(compile_s + first_step_s, 2),
                   peak_flops_per_device=peak_flops_per_device(self.settings.cpu_peak_tflops),
                   peak_source="--cpu_peak_tflops" if device.platform == "cpu" else "datasheet",
                   **self.shape)
    if device.platform == "cpu" and not self.settings.cpu_peak_tflops:
      figures.update(peak_flops_per_device=measured_matmul_flops() / jax.device_count(),
                     peak_source="measured float32 matmul")
    memory = self.compiled.memory_analysis()
    if memory is not None:
      arguments, outputs = memory.argument_size_in_bytes, memory.output_size_in_bytes
      temps, aliased = memory.temp_size_in_bytes, memory.alias_size_in_bytes
      figures.update(compiled_argument_bytes=int(arguments), compiled_temp_bytes=int(temps),
                     compiled_peak_bytes=int(arguments + outputs - aliased + temps))
    cost = self.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if cost and cost.get("flops"):
      figures["xla_flops_per_step"] = float(cost["flops"])
    return figures

  def _step(self):
    if self.settings.mode == "train":
      self.state, metrics = self.compiled(self.state, self.batch, self.rng)
      jax.block_until_ready((self.state, metrics))
      loss = metrics["loss"]
    else:
      (loss, _), _ = outputs = self.compiled(self.state, self.batch, self.rng)
      jax.block_until_ready(outputs)
    self.loss = float(loss)

  def run(self, count: int) -> list[float]:
    """Seconds of each of `count` steps, each waited for."""
    return timed_steps(self._step, count)

  def finish(self) -> dict:
    stats = jax.local_devices()[0].memory_stats() or {}
    figures = dict(final_loss=round(self.loss, 4), loss_finite=bool(np.isfinite(self.loss)))
    if "peak_bytes_in_use" in stats:
      figures["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
    return figures
