"""Orbax checkpoints of a run: a state of arrays plus small JSON items (the
loader position, the config), saved together, restored whole or in part."""

from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import flags

from lmjax import paths
from lmjax.errors import Fault, first_line


def _fault(e: Exception) -> Fault:
  return Fault(f"a checkpoint could not be saved ({first_line(e)})")


class _Kept(ocp.checkpoint_managers.PreservationPolicy):
  """Preserves the steps in `steps`, a set the run changes as it goes."""

  def __init__(self):
    self.steps: set[int] = set()

  def should_preserve(self, checkpoints, *, context) -> list[bool]:
    del context
    return [c.step in self.steps for c in checkpoints]


def _barriers_off_the_devices() -> None:
  """Orbax's barriers between processes through JAX's coordination service.

  By default Orbax meets the other processes in a device collective, from
  the thread that finishes an asynchronous save too: on CPU processes that
  collective can run among the training step's and meet them in another
  order on each process, and every process waits forever (see
  lmjax.parallel.in_order). The flag is Orbax's own absl flag.
  """
  name = "experimental_orbax_use_distributed_barrier"
  if jax.process_count() > 1 and name in flags.FLAGS:
    flags.FLAGS[name].value = True


def _one_writer_per_array_in_one_process() -> None:
  """In a single process, each array is copied to the host whole, from one
  device. Orbax's replica-parallel saving splits a replicated array among
  its replicas, so that each host writes a part; within one process that
  buys nothing, and slicing compiles one small program per array shape
  (2.6 s at a run's first save of a tiny model on 8 CPU devices, against
  0.1 s)."""
  global _one_writer  # pylint: disable=global-statement
  if jax.process_count() == 1 and not _one_writer:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
    _one_writer = True


_one_writer = False  # registered once: Orbax warns at each override


class Checkpoints:
  """`DIRECTORY/<step>/{state,loader,config}` (or other JSON items), saved
  asynchronously, keeping the newest `keep` and the one `protect` names. A
  step directory appears only once complete."""

  def __init__(self, directory: paths.PathLike, keep: int = 3,
               json_items: tuple[str, ...] = ("loader", "config")):
    _barriers_off_the_devices()
    _one_writer_per_array_in_one_process()
    self._json_items = json_items
    self._kept = _Kept()
    policy = ocp.checkpoint_managers.AnyPreservationPolicy(
        [ocp.checkpoint_managers.LatestN(n=keep), self._kept])
    self._manager = ocp.CheckpointManager(
        paths.resolve(directory),
        options=ocp.CheckpointManagerOptions(preservation_policy=policy, create=True,
                                             enable_async_checkpointing=True),
        item_names=("state", *json_items))

  def protect(self, step: int) -> None:
    """Keeps `step` however many newer ones come (one step at a time)."""
    self._kept.steps = {step}

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, *json_values: dict) -> None:
    """Starts an asynchronous save of `state` and the JSON items, in the
    order given at construction; the arrays are copied before it returns."""
    items = {name: ocp.args.JsonSave(value)
             for name, value in zip(self._json_items, json_values, strict=True)}
    try:  # a failed earlier save surfaces here too
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), **items), force=True)
    except Exception as e:  # pylint: disable=broad-exception-caught
      raise _fault(e) from None

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, ...]:
    """Returns (state, *JSON items) of `step`; the state lands in the
    shardings of `abstract_state` (ShapeDtypeStructs with shardings)."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        **{name: ocp.args.JsonRestore() for name in self._json_items}))
    return (restored["state"], *(dict(restored[name]) for name in self._json_items))

  def restore_part(self, step: int, abstract_part: dict) -> dict:
    """Reads only the top-level entries of `step`'s state that
    `abstract_part` names (`{'params': ...}`, say): the rest (optimizer
    moments) is never read. For a manager that has not saved (Orbax keeps
    one handler per item and use)."""
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_part)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=abstract_part, restore_args=restore_args,
                                     partial_restore=True)))
    return dict(restored["state"])

  def read_json(self, step: int, name: str) -> dict:
    """One JSON item of `step`, without touching the arrays."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        **{name: ocp.args.JsonRestore()}))
    return dict(restored[name])

  def reached_preemption(self, step: int) -> bool:
    """True on every process once any got a preemption notice (multi-host)."""
    return self._manager.reached_preemption(step)

  def delete(self, step: int) -> None:
    self._manager.delete(step)

  def set_aside(self, step: int) -> str:
    """Renames `step`'s directory to `<step>.damaged` (a name Orbax does not
    read as a step); returns the new path."""
    directory = self._manager.directory / str(step)
    aside = directory.with_name(f"{step}.damaged")
    n = 1
    while aside.exists():
      n += 1
      aside = directory.with_name(f"{step}.damaged-{n}")
    directory.rename(aside)
    self._manager.reload()
    return str(aside)

  def wait(self) -> None:
    """Until the saves under way are on disk; Fault when one failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-exception-caught
      raise _fault(e) from None

  def close(self) -> None:
    self._manager.close()


class BestCheckpoint:
  """The parameters of the best evaluation so far, by a metric where higher
  is better, in `DIRECTORY/<step>` with their scores."""

  def __init__(self, directory: paths.PathLike, metric: str):
    self.metric = metric
    self._ckpts = Checkpoints(directory, keep=1, json_items=("metrics",))
    self.step = self._ckpts.latest_step()
    self.scores = None if self.step is None else self._ckpts.read_json(self.step, "metrics")

  def offer(self, step: int, params: Any, scores: dict) -> None:
    """Saves `params` when `scores[metric]` beats the best so far."""
    if self.scores is None or scores[self.metric] > self.scores[self.metric]:
      self.step, self.scores = step, scores
      self._ckpts.save(step, {"params": params}, scores)

  def params(self, abstract_params: Any) -> Any:
    """The best parameters, in the shardings of `abstract_params`."""
    self._ckpts.wait()
    return self._ckpts.restore(self.step, {"params": abstract_params})[0]["params"]

  def wait(self) -> None:
    self._ckpts.wait()

  def close(self) -> None:
    self._ckpts.close()
