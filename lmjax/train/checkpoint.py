"""Orbax checkpoints of a run: a state of arrays plus small JSON items (the
loader position, the config), saved together."""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpoints:
  """`DIRECTORY/<step>/{state,loader,config}` (or other JSON items), saved
  asynchronously, keeping the newest `keep`. A step directory appears only
  once complete."""

  def __init__(self, directory: str | os.PathLike, keep: int = 3,
               json_items: tuple[str, ...] = ("loader", "config")):
    self._json_items = json_items
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory),  # Orbax restores only from absolute paths
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=True),
        item_names=("state", *json_items))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, *json_values: dict) -> None:
    """Starts an asynchronous save of `state` and the JSON items, in the
    order given at construction; the arrays are copied before it returns."""
    items = {name: ocp.args.JsonSave(value)
             for name, value in zip(self._json_items, json_values, strict=True)}
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), **items), force=True)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, ...]:
    """Returns (state, *JSON items) of `step`; the state lands in the
    shardings of `abstract_state` (ShapeDtypeStructs with shardings)."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        **{name: ocp.args.JsonRestore() for name in self._json_items}))
    return (restored["state"], *(dict(restored[name]) for name in self._json_items))

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

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree` carrying `shardings`: a restore target."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
