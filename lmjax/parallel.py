"""Device meshes and the one table that maps logical axes to mesh axes.

Model code names the axes of every parameter and main activation (`batch`,
`length`, `embed`, `heads`, `kv`, `mlp`, `vocab`, `layers`); `RULES` says how
each is laid over the mesh axes `data`, `fsdp` and `tensor`. A new
parallelism strategy is a new rules table, not new model code.

Rules are tried in order and a mesh axis is used once per array: in an
activation [batch, length, embed], `batch` takes ('data', 'fsdp') first, so
`embed` stays whole; in a parameter [vocab, embed], `embed` is split over
`fsdp` (ZeRO-3 style) and `vocab` over `tensor`.
"""

import contextlib
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lmjax import distributed
from lmjax.errors import ConfigError, first_line

MESH_AXES = ("data", "fsdp", "tensor")

Rules = Sequence[tuple[str, Any]]

RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    ("length", None),
    ("kv", None),
    ("layers", None),
)


def sum_over_processes(x: np.ndarray) -> np.ndarray:
  """`x` summed over every process's value (itself in a single process).

  Host to host through JAX's coordination service, not a device collective:
  it neither waits for the steps in flight nor runs among them (see
  `in_order`). Every process calls it the same number of times.
  """
  if jax.process_count() == 1:
    return x
  from jax._src import distributed as jax_distributed  # pylint: disable=import-outside-toplevel
  client, me = jax_distributed.global_state.client, jax.process_index()
  call = next(_exchanges)
  key = f"lmjax/sum/{call}"
  x = np.ascontiguousarray(x)
  try:
    client.key_value_set_bytes(f"{key}/{me}", x.tobytes())
    client.wait_at_barrier(key, _EXCHANGE_TIMEOUT_MS)
    values = [np.frombuffer(v, x.dtype).reshape(x.shape)
              for _, v in client.key_value_dir_get_bytes(f"{key}/")]
    if call:  # every process has read the previous exchange: its key can go
      client.key_value_delete(f"lmjax/sum/{call - 1}/{me}")
  except Exception:  # pylint: disable=broad-exception-caught  # the service gave up on a peer
    distributed.stop_all("another process of this run is gone (killed, or its host "
                               "lost): the exchange between processes failed")
  return np.sum(values, axis=0, dtype=x.dtype)


_exchanges = itertools.count()
# A process that never comes is the stall watch's (lmjax.trainer.watch) to report.
_EXCHANGE_TIMEOUT_MS = 24 * 3600 * 1000


def in_order(outputs: Any) -> Any:
  """`outputs`, once computed when several CPU processes run as one job.

  A TPU or GPU runs a device's computations in the order they were
  dispatched. JAX's CPU client runs independent computations (evaluation
  batches, say) concurrently, so the gloo collectives of two of them can
  meet in a different order on two processes and wait for each other
  forever. Calling this on each result before dispatching the next keeps
  them in order; elsewhere it returns at once.
  """
  if jax.process_count() > 1 and jax.default_backend() == "cpu":
    jax.block_until_ready(outputs)
  return outputs


def process_share() -> dict[str, int]:
  """This process's index and the number of processes: which slice of every
  global batch it reads (keyword arguments of lmjax.data.loader's datasets)."""
  return dict(process_index=jax.process_index(), process_count=jax.process_count())


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None, dcn_data: int = 1) -> Mesh:
  """Returns a (data, fsdp, tensor) mesh with Auto axes over `devices`.

  One size may be -1, meaning all the devices the others leave. With
  `dcn_data` > 1 the data axis spans that many slices (multi-slice TPU, or
  processes where devices have no slice): its outer part crosses the
  data-centre network, fsdp and tensor stay within a slice.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = _mesh_sizes(data, fsdp, tensor, len(devices))
  axis_types = (jax.sharding.AxisType.Auto,) * len(sizes)
  if dcn_data == 1:
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=axis_types, devices=devices)
  return Mesh(hybrid_device_array(sizes, dcn_data, devices), MESH_AXES,
              axis_types=axis_types)


def hybrid_device_array(sizes: Sequence[int], dcn_data: int, devices) -> np.ndarray:
  """Devices laid out [data, fsdp, tensor] where data = dcn_data slices x
  data // dcn_data devices within each slice."""
  if dcn_data < 1 or sizes[0] % dcn_data:
    raise ConfigError(f"config.mesh.dcn_data ({dcn_data}) must divide the data axis "
                      f"({sizes[0]})")
  from jax.experimental import mesh_utils  # pylint: disable=import-outside-toplevel
  per_slice = (sizes[0] // dcn_data, *sizes[1:])
  # Devices of one slice (CPU, one GPU job): each process is a "slice".
  by_process = len({getattr(d, "slice_index", None) for d in devices}) == 1
  try:
    return mesh_utils.create_hybrid_device_mesh(per_slice, (dcn_data, 1, 1), devices,
                                                process_is_granule=by_process)
  except ValueError as e:
    raise ConfigError(f"config.mesh.dcn_data={dcn_data}: {first_line(e)}") from None


def _mesh_sizes(data: int, fsdp: int, tensor: int, count: int) -> list[int]:
  """The mesh's sizes over `count` devices, -1 resolved."""
  devices = range(count)
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f"mesh sizes must be positive with at most one -1, got "
                      f"data={data}, fsdp={fsdp}, tensor={tensor}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ConfigError(f"{len(devices)} devices cannot be split into a mesh "
                        f"with fixed axes of product {known}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ConfigError(f"mesh data={sizes[0]} x fsdp={sizes[1]} x "
                      f"tensor={sizes[2]} needs {math.prod(sizes)} devices, "
                      f"have {len(devices)}")
  return sizes


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules: Rules = RULES):
  """Within it, the model's logical constraints apply on `mesh` by `rules`."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def logical_shardings(abstract_tree: Any, mesh: Mesh,
                      rules: Rules = RULES) -> Any:
  """Maps a tree of logically-annotated (boxed) values to NamedShardings."""
  return nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract_tree),
                                     mesh, rules)


def batch_sharding(mesh: Mesh, rules: Rules = RULES) -> NamedSharding:
  """Sharding of a batch array: its leading axis over the batch mesh axes."""
  return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch",), rules))


def batch_shards(mesh: Mesh, rules: Rules = RULES) -> int:
  """The number of pieces `batch_sharding` cuts a batch into."""
  axes = nn.logical_to_mesh_axes(("batch",), rules)[0]
  axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
  return math.prod(mesh.shape[a] for a in axes)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def sharded_init(init_fn: Callable[..., Any], mesh: Mesh, *args: Any,
                 rules: Rules = RULES) -> tuple[Any, Any]:
  """Runs `init_fn(*args)` so each parameter is created in its own sharding.

  `init_fn` returns logically-annotated variables (a linen `init`). Returns
  (variables as plain arrays, their shardings). Nothing is gathered on one
  device first: the jitted init writes every shard where it lives.
  """
  with sharding_context(mesh, rules):
    abstract = jax.eval_shape(init_fn, *args)
    shardings = logical_shardings(abstract, mesh, rules)
    variables = jax.jit(lambda *a: nn.unbox(init_fn(*a)),
                        out_shardings=shardings)(*args)
  return variables, shardings


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh,
                rules: Rules = RULES) -> dict[str, jax.Array]:
  """Assembles global arrays from this process's share of the batch."""
  sharding = batch_sharding(mesh, rules)
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in batch.items()}
