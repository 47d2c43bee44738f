"""Sharding on 8 simulated CPU devices: a 2x2x2 (data, fsdp, tensor) mesh."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lmjax import parallel
from lmjax.errors import ConfigError
from lmjax.model import BertConfig, BertForPreTraining

CFG = BertConfig(vocab_size=96, hidden_size=32, num_layers=2, num_heads=4,
                 intermediate_size=64, max_position=32)


def _batch(batch=8, length=16, preds=4):
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, length + 1, batch)
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  return dict(input_ids=rng.integers(0, CFG.vocab_size, (batch, length)).astype(np.int32),
              segment_ids=(rng.integers(0, 2, (batch, length)) * mask).astype(np.int32),
              input_mask=mask,
              masked_positions=rng.integers(0, length, (batch, preds)).astype(np.int32))


def test_eight_simulated_devices():
  assert jax.device_count() == 8


def test_make_mesh_sizes_and_errors():
  mesh = parallel.make_mesh(data=-1, fsdp=2, tensor=2)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  assert dict(parallel.make_mesh().shape) == {"data": 8, "fsdp": 1, "tensor": 1}
  with pytest.raises(ConfigError, match="needs 12 devices"):
    parallel.make_mesh(data=3, fsdp=2, tensor=2)
  with pytest.raises(ConfigError, match="cannot be split"):
    parallel.make_mesh(data=-1, fsdp=3)
  with pytest.raises(ConfigError, match="at most one -1"):
    parallel.make_mesh(data=-1, fsdp=-1)


@pytest.mark.slow
@pytest.mark.parametrize("scan", [False, True])
def test_sharded_model_matches_single_device(scan):
  cfg = CFG.replace(scan_layers=scan)
  model = BertForPreTraining(cfg)
  batch = _batch()
  key = jax.random.key(0)
  single = nn.unbox(model.init(key, **batch))
  want = model.apply(single, **batch)

  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  variables, shardings = parallel.sharded_init(
      lambda k: model.init(k, **batch), mesh, key)
  # Initialised in place, with the same values as on one device.
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables, single)
  jax.tree_util.tree_map(
      lambda x, s: np.testing.assert_(x.sharding.is_equivalent_to(s, x.ndim)),
      variables, shardings)

  params = variables["params"]
  word = params["bert"]["embeddings"]["word_embeddings"]["embedding"]
  assert word.sharding.spec == P("tensor", "fsdp")
  assert {s.data.shape for s in word.addressable_shards} == {(48, 16)}
  layer = (params["bert"]["encoder"]["layers"] if scan
           else params["bert"]["encoder"]["layers_0"])
  wi = layer["mlp"]["wi"]["kernel"]
  query = layer["attention"]["query"]["kernel"]
  lead = (None,) if scan else ()
  assert wi.sharding.spec == P(*lead, "fsdp", "tensor")
  assert query.sharding.spec == P(*lead, "fsdp", "tensor", None)
  assert {s.data.shape[-2:] for s in wi.addressable_shards} == {(16, 32)}
  assert {s.data.shape[-3:] for s in query.addressable_shards} == {(16, 2, 8)}

  sharded_batch = parallel.shard_batch(batch, mesh)
  assert sharded_batch["input_ids"].sharding.spec == P(("data", "fsdp"))
  with parallel.sharding_context(mesh):
    got = jax.jit(model.apply)(variables, **sharded_batch)
  assert got["sequence_output"].sharding.spec[0] == ("data", "fsdp")
  for key in want:
    np.testing.assert_allclose(got[key], want[key], atol=1e-5, rtol=0)


def test_sharded_gradients_match_single_device():
  model = BertForPreTraining(CFG)
  batch = _batch()

  def loss(params, batch):
    out = model.apply({"params": params}, **batch)
    return (jax.nn.logsumexp(out["mlm_logits"], -1).mean()
            + jax.nn.logsumexp(out["nsp_logits"], -1).mean())

  params = nn.unbox(model.init(jax.random.key(1), **batch))["params"]
  want = jax.jit(jax.grad(loss))(params, batch)
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  variables, shardings = parallel.sharded_init(
      lambda k: model.init(k, **batch), mesh, jax.random.key(1))
  with parallel.sharding_context(mesh):
    got = jax.jit(jax.grad(loss), out_shardings=shardings["params"])(
        variables["params"], parallel.shard_batch(batch, mesh))
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), got, want)



def test_a_multi_slice_mesh_keeps_fsdp_and_tensor_within_a_slice():
  import types  # pylint: disable=import-outside-toplevel
  devices = [types.SimpleNamespace(id=i, slice_index=i // 4, process_index=i // 4,
                                   platform="gpu", device_kind="fake") for i in range(8)]
  array = parallel.hybrid_device_array([4, 2, 1], 2, devices)
  assert array.shape == (4, 2, 1)
  slices = np.vectorize(lambda d: d.slice_index)(array)
  assert (slices[:2] == 0).all() and (slices[2:] == 1).all()  # data's outer part: slices
  assert sorted(d.id for d in array.flat) == list(range(8))
  with pytest.raises(ConfigError, match="dcn_data"):
    parallel.hybrid_device_array([4, 2, 1], 3, devices)


def test_more_slices_than_there_are_is_one_line():
  # CPU devices have no slice: processes are the slices, and this is one.
  with pytest.raises(ConfigError, match="config.mesh.dcn_data=2: Number of slices 1") as e:
    parallel.make_mesh(data=-1, dcn_data=2)
  assert "\n" not in str(e.value)
  assert parallel.make_mesh(data=-1, dcn_data=1).devices.shape == (8, 1, 1)
