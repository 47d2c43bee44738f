"""Orbax checkpoints of a run: train state, loader state and config, together."""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpoints:
  """`DIR/checkpoints/<step>/{state,loader,config}`, saved asynchronously,
  keeping the newest `keep`. A step directory appears only once complete."""

  def __init__(self, directory: str | os.PathLike, keep: int = 3):
    self._manager = ocp.CheckpointManager(
        os.fspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=True),
        item_names=("state", "loader", "config"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, loader_state: dict, config: dict) -> None:
    """Starts an asynchronous save; the arrays are copied before it returns."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), loader=ocp.args.JsonSave(loader_state),
        config=ocp.args.JsonSave(config)), force=True)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
    """Returns (state, loader state, config) of `step`; the state lands in
    the shardings of `abstract_state` (ShapeDtypeStructs with shardings)."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), loader=ocp.args.JsonRestore(),
        config=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["loader"]), dict(restored["config"])

  def reached_preemption(self, step: int) -> bool:
    """True on every process once any got a preemption notice (multi-host)."""
    return self._manager.reached_preemption(step)

  def delete(self, step: int) -> None:
    self._manager.delete(step)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree` carrying `shardings`: a restore target."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
