"""The loop and the run scaffold with a fake step: cadence of logs,
evaluations and checkpoints, the stop signal, the NaN stop, the resume
position and the profile trace."""

import json
import os
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from lmjax import parallel
from lmjax.data.task_input import examples_dataset
from lmjax.errors import UserError
from lmjax.train import steps
from lmjax.trainer import loop, scaffold
from lmjax.trainer.checkpoints import Checkpoints
from lmjax.trainer.loop import Hooks, Schedule, TrainingDiverged, run_loop
from lmjax.trainer.throughput import RateWindow, Throughput
from lmjax.trainer.writer import MetricWriter

THROUGHPUT = Throughput(flops_per_token=1.0, peak_flops_per_device=None, token_field="x")


class FakeLoader:
  """Batch k is a column of k's; the state is the position, as Loader's."""

  def __init__(self, start=0):
    self.step = start

  def __next__(self):
    self.step += 1
    return {"x": np.full((8, 1), self.step, np.float32)}

  def state(self):
    return {"step": self.step}


def fake_step(nan_at=None, on_step=None):
  """A host-side step: the state counts steps and sums the batches; the loss
  is the step number (NaN at `nan_at`)."""

  def step(state, batch, rng):
    del rng
    count = int(state["count"]) + 1
    if on_step:
      on_step(count)
    state = {"count": jnp.int32(count), "total": state["total"] + batch["x"].sum()}
    loss = np.nan if count == nan_at else float(count)
    return state, {"loss": jnp.float32(loss)}

  return step


def run(tmp_path, schedule, step, start=0, evaluate=None):
  mesh = parallel.make_mesh()
  ckpts = Checkpoints(tmp_path / "checkpoints", keep=10)
  writer = MetricWriter(tmp_path)
  loader = FakeLoader(start)
  evaluations = []

  def record(state, s):
    evaluations.append(s)
    return (evaluate or (lambda state, s: {"eval_loss": float(s)}))(state, s)

  state = {"count": jnp.int32(start), "total": jnp.float32(0)}
  try:
    result = run_loop(state, step, loader, rng=jax.random.key(0), mesh=mesh,
                      schedule=schedule, ckpts=ckpts, writer=writer,
                      hooks=Hooks(record, lambda: (loader.state(), {"fake": True})),
                      rate=RateWindow(THROUGHPUT), start=start, desc="test")
  finally:
    saved = ckpts.all_steps()
    ckpts.close()
    writer.close()
  return result, evaluations, sorted(saved)


def lines(tmp_path):
  return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_logs_evaluations_and_checkpoints_come_at_their_steps(tmp_path):
  schedule = Schedule(steps=10, log_every=3, eval_every=4, checkpoint_every=5)
  result, evaluations, saved = run(tmp_path, schedule, fake_step())
  assert (result.step, result.stopped_by, int(result.state["count"])) == (10, None, 10)
  assert evaluations == [4, 8, 10] and result.last_eval == {"eval_loss": 10.0}
  assert saved == [5, 10]
  logged = lines(tmp_path)
  assert [line["step"] for line in logged if "loss" in line] == list(range(1, 11))
  assert [line["step"] for line in logged if "eval_loss" in line] == [4, 8, 10]
  # Rates start after the first step (compilation) and come with each write.
  assert [line["step"] for line in logged if "tokens_per_s" in line] == [3, 5, 6, 9, 10]
  assert all(line["loss"] == line["step"] for line in logged if "loss" in line)


def test_a_fresh_run_can_evaluate_before_the_first_update(tmp_path):
  schedule = Schedule(steps=4, log_every=1, eval_every=2, checkpoint_every=4,
                      eval_at_start=True)
  _, evaluations, _ = run(tmp_path, schedule, fake_step())
  assert evaluations == [0, 2, 4]
  _, evaluations, _ = run(tmp_path / "resumed", schedule, fake_step(), start=2)
  assert evaluations == [4]  # a resumed run has evaluated its start already


def test_sigterm_saves_the_current_step_and_stops(tmp_path, capsys):
  kill = lambda count: count == 4 and os.kill(os.getpid(), signal.SIGTERM)
  schedule = Schedule(steps=100, log_every=50, eval_every=50, checkpoint_every=50)
  result, _, saved = run(tmp_path, schedule, fake_step(on_step=kill))
  assert (result.step, result.stopped_by) == (4, "SIGTERM")
  assert saved == [4]
  assert [line["step"] for line in lines(tmp_path)] == [1, 2, 3, 4]
  assert "SIGTERM: saved a checkpoint at step 4; exiting" in capsys.readouterr().out
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handler given back


def test_a_nan_loss_stops_and_drops_the_checkpoint_that_made_it(tmp_path):
  schedule = Schedule(steps=20, log_every=1, eval_every=100, checkpoint_every=1)
  with pytest.raises(TrainingDiverged, match="loss is nan at step 7; stopped, the last "
                                             "good checkpoint is step 5"):
    run(tmp_path, schedule, fake_step(nan_at=7))
  assert Checkpoints(tmp_path / "checkpoints").all_steps() == [1, 2, 3, 4, 5]


def test_a_profile_trace_lands_where_tensorboard_looks(tmp_path, capsys):
  schedule = Schedule(steps=6, log_every=2, eval_every=10, checkpoint_every=10,
                      profile_steps=(2, 4))
  mesh = parallel.make_mesh()
  ckpts, writer = Checkpoints(tmp_path / "checkpoints"), MetricWriter(tmp_path)
  loader = FakeLoader()
  state = {"count": jnp.int32(0), "total": jnp.float32(0)}
  run_loop(state, fake_step(), loader, rng=jax.random.key(0), mesh=mesh,
           schedule=schedule, ckpts=ckpts, writer=writer,
           hooks=Hooks(lambda s, k: {}, lambda: (loader.state(), {})),
           rate=RateWindow(THROUGHPUT), profile_dir=str(tmp_path / "profile"))
  ckpts.close()
  writer.close()
  (run_dir,) = (tmp_path / "profile" / "plugins" / "profile").iterdir()
  names = [p.name for p in run_dir.iterdir()]
  assert any(n.endswith(".xplane.pb") for n in names)  # TensorBoard's profile plugin
  assert "perfetto_trace.json.gz" in names  # ui.perfetto.dev
  assert "wrote a profile of steps 2-4" in capsys.readouterr().out


def job(config, mesh, steps_total):
  """A jitted step that adds each batch's mean to a parameter: the state
  after k steps depends on every batch the loader handed out."""
  shape = (config.model.width,) if "model" in config else ()
  init = lambda rng: {"w": jnp.zeros(shape, jnp.float32)}
  tx = optax.sgd(0.0)
  state, shardings = steps.create_train_state(init, tx, mesh, jax.random.key(0))

  def train_step(state, batch, rng):
    noise = jax.random.uniform(jax.random.fold_in(rng, state.step))
    w = state.params["w"] * 0.5 + batch["x"].mean() + noise
    return state.replace(step=state.step + 1, params={"w": w}), {"loss": w.sum()}

  data = examples_dataset({"x": np.arange(40, dtype=np.float32)[:, None]}, 8, seed=3)
  return scaffold.Job(
      name="fake", config=config, mesh=mesh, state=state, shardings=shardings,
      train_step=steps.jit_train_step(train_step, shardings, mesh), train_data=data,
      evaluate=lambda state, step: {"eval_w": float(state.params["w"].sum())},
      schedule=Schedule(steps_total, 1, 1000, 3), throughput=THROUGHPUT,
      files={"note.txt": b"fake"}, must_match=("seed", "model"), num_threads=0)


def test_a_resumed_run_continues_at_its_checkpoint_exactly(tmp_path, capsys):
  config = ml_collections.ConfigDict(dict(seed=0, train=dict(keep_checkpoints=5)))
  mesh = parallel.make_mesh()
  with scaffold.Run(job(config, mesh, 9), tmp_path / "whole", seed=1) as run_:
    whole = run_.train()
  with scaffold.Run(job(config, mesh, 5), tmp_path / "parts", seed=1) as run_:
    run_.train()  # ends at 5 with a checkpoint of 5
  with scaffold.Run(job(config, mesh, 9), tmp_path / "parts", seed=1) as run_:
    resumed = run_.train()
  assert float(resumed.state.params["w"]) == float(whole.state.params["w"])
  train_lines = lambda p: {line["step"]: line["loss"] for line in lines(p) if "loss" in line}
  assert train_lines(tmp_path / "parts") == train_lines(tmp_path / "whole")
  assert sorted(train_lines(tmp_path / "whole")) == list(range(1, 10))
  assert (tmp_path / "parts" / "note.txt").read_bytes() == b"fake"
  assert json.loads((tmp_path / "parts" / "config.json").read_text())["seed"] == 0

  config.train.keep_checkpoints = 4  # not a field a resume must share: said, not refused
  with scaffold.Run(job(config, mesh, 9), tmp_path / "parts", seed=1) as run_:
    run_.train()
  assert "resuming with a changed config: train.keep_checkpoints: 5 -> 4" in (
      capsys.readouterr().out)

  config.seed = 1
  with (pytest.raises(UserError, match="another config.seed"),
        scaffold.Run(job(config, mesh, 9), tmp_path / "parts", seed=1) as run_):
    run_.train()


def test_a_resume_with_another_model_names_the_field_before_any_restore(tmp_path):
  config = ml_collections.ConfigDict(dict(seed=0, model=dict(width=2),
                                          train=dict(keep_checkpoints=5)))
  mesh = parallel.make_mesh()
  with scaffold.Run(job(config, mesh, 3), tmp_path, seed=1) as run_:
    run_.train()
  config.model.width = 4  # another shape: the restore itself would fail
  with (pytest.raises(UserError, match=r"another config.model \(\{\"width\": 2\}, now"),
        scaffold.Run(job(config, mesh, 6), tmp_path, seed=1) as run_):
    run_.train()


def damage(step_dir: Path) -> None:
  """Truncates every file of a checkpoint's state, as a disk error might."""
  for path in (step_dir / "state").rglob("*"):
    if path.is_file():
      path.write_bytes(path.read_bytes()[:7])


def test_a_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_resumes(
    tmp_path, capsys):
  config = ml_collections.ConfigDict(dict(seed=0, train=dict(keep_checkpoints=5)))
  mesh = parallel.make_mesh()
  with scaffold.Run(job(config, mesh, 9), tmp_path / "whole", seed=1) as run_:
    whole = run_.train()
  with scaffold.Run(job(config, mesh, 7), tmp_path / "parts", seed=1) as run_:
    run_.train()  # checkpoints 3, 6 and the last, 7
  damage(tmp_path / "parts" / "checkpoints" / "7")
  capsys.readouterr()
  with scaffold.Run(job(config, mesh, 9), tmp_path / "parts", seed=1) as run_:
    resumed = run_.train()
  out = capsys.readouterr().out
  assert "the checkpoint of step 7 cannot be restored" in out
  assert "resuming from the checkpoint of step 6" in out
  assert f"evaluation at step 9: w {float(resumed.state.params['w']):.4f}" in out
  assert float(resumed.state.params["w"]) == float(whole.state.params["w"])
  names = sorted(p.name for p in (tmp_path / "parts" / "checkpoints").iterdir())
  assert "7.damaged" in names and "9" in names


def test_no_intact_checkpoint_is_one_line_and_nothing_moves(tmp_path):
  config = ml_collections.ConfigDict(dict(seed=0, train=dict(keep_checkpoints=5)))
  mesh = parallel.make_mesh()
  with scaffold.Run(job(config, mesh, 6), tmp_path, seed=1) as run_:
    run_.train()  # checkpoints 3 and 6
  for step in ("3", "6"):
    damage(tmp_path / "checkpoints" / step)
  with (pytest.raises(UserError, match="no checkpoint can be restored") as e,
        scaffold.Run(job(config, mesh, 9), tmp_path, seed=1) as run_):
    run_.train()
  assert "\n" not in str(e.value)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3", "6"]


def failing_reads(monkeypatch, errors):
  """Checkpoints.restore raises the next of `errors` (then reads) each call."""
  errors, calls = list(errors), []
  original = Checkpoints.restore

  def restore(self, step, abstract):
    calls.append(step)
    if errors:
      raise errors.pop(0)
    return original(self, step, abstract)

  monkeypatch.setattr(Checkpoints, "restore", restore)
  monkeypatch.setattr(scaffold, "RETRY_DELAYS_S", (0.0, 0.0, 0.0))
  return calls


def checkpointed_run(tmp_path):
  config = ml_collections.ConfigDict(dict(seed=0, train=dict(keep_checkpoints=5)))
  mesh = parallel.make_mesh()
  with scaffold.Run(job(config, mesh, 6), tmp_path, seed=1) as run_:
    run_.train()  # checkpoints 3 and 6
  return config, mesh


def test_a_read_that_fails_twice_then_succeeds_resumes_from_the_newest(
    tmp_path, monkeypatch, capsys):
  config, mesh = checkpointed_run(tmp_path)
  calls = failing_reads(monkeypatch, [OSError(5, "Input/output error"),
                                      RuntimeError("UNAVAILABLE: bucket busy")])
  capsys.readouterr()
  with scaffold.Run(job(config, mesh, 9), tmp_path, seed=1) as run_:
    assert run_.train().step == 9
  assert calls == [6, 6, 6]
  assert "resuming from the checkpoint of step 6" in capsys.readouterr().out
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3", "6", "9"]


@pytest.mark.parametrize("errors,message", [
    ([PermissionError(13, "Permission denied")], "could not be read: [Errno 13]"),
    ([TimeoutError("the bucket did not answer")] * 4,
     "could not be read (4 tries): the bucket did not answer"),
    ([MemoryError()], "could not be read: MemoryError"),
])
def test_a_read_that_cannot_be_done_stops_with_one_line_and_moves_nothing(
    tmp_path, monkeypatch, errors, message):
  from lmjax.errors import Fault  # pylint: disable=import-outside-toplevel
  config, mesh = checkpointed_run(tmp_path)
  calls = failing_reads(monkeypatch, errors)
  with (pytest.raises(Fault) as e,
        scaffold.Run(job(config, mesh, 9), tmp_path, seed=1) as run_):
    run_.train()
  assert "\n" not in str(e.value) and message in str(e.value), str(e.value)
  assert "step 6" in str(e.value) and "nothing was moved" in str(e.value)
  assert calls == [6] * len(errors)  # the older checkpoint is not tried either
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3", "6"]


@pytest.mark.parametrize("error,kind", [
    (FileNotFoundError(2, "No such file"), "damage"),
    (IsADirectoryError(21, "Is a directory"), "damage"),
    (ValueError("Unexpected end of data"), "damage"),
    (RuntimeError("DATA_LOSS: Error reading chunk: checksum mismatch"), "damage"),
    (OSError(5, "Input/output error"), "transient"),
    (ConnectionResetError(104, "Connection reset by peer"), "transient"),
    (RuntimeError("DEADLINE_EXCEEDED: read timed out"), "transient"),
    (PermissionError(13, "Permission denied"), "fault"),
    (RuntimeError("PERMISSION_DENIED: 403 Forbidden"), "fault"),
    (RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating"), "fault"),
])
def test_restore_failures_are_told_apart(error, kind):
  assert scaffold.restore_failure(error) == kind


def test_metrics_that_cannot_be_written_stop_the_run_with_one_line_and_a_checkpoint(
    tmp_path, monkeypatch):
  import builtins  # pylint: disable=import-outside-toplevel
  import errno  # pylint: disable=import-outside-toplevel

  from lmjax.errors import Fault  # pylint: disable=import-outside-toplevel
  from lmjax.trainer import writer  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict(dict(seed=0, train=dict(keep_checkpoints=5)))
  mesh = parallel.make_mesh()
  (tmp_path / "a" / "metrics.jsonl").mkdir(parents=True)  # in the way
  with (pytest.raises(Fault, match="metrics.jsonl: cannot rewrite the run's metrics"),
        scaffold.Run(job(config, mesh, 9), tmp_path / "a", seed=1) as run_):
    run_.train()
  assert [p.name for p in (tmp_path / "a").iterdir()] == ["metrics.jsonl"]  # nothing added

  written = []

  def full_disk(path, mode="r", *args, **kwargs):
    if str(path).endswith("metrics.jsonl") and "a" in mode:
      written.append(path)
      if len(written) > 4:
        raise OSError(errno.ENOSPC, "No space left on device")
    return builtins.open(path, mode, *args, **kwargs)

  monkeypatch.setattr(writer, "open", full_disk, raising=False)
  with (pytest.raises(Fault) as e,
        scaffold.Run(job(config, mesh, 9), tmp_path / "b", seed=1) as run_):
    run_.train()
  assert str(e.value).endswith("(No space left on device); stopped at step 5: the newest "
                               "checkpoint on disk is step 5")
  assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["3", "5"]


def test_the_checkpoint_of_a_healthy_evaluation_outlives_rotation_while_diverging(tmp_path):
  schedule = Schedule(steps=20, log_every=1, eval_every=4, checkpoint_every=1)
  mesh = parallel.make_mesh()
  ckpts, writer = Checkpoints(tmp_path / "checkpoints", keep=2), MetricWriter(tmp_path)
  loader = FakeLoader()
  state = {"count": jnp.int32(0), "total": jnp.float32(0)}
  # Healthy evaluations at 4 and 8, then a NaN evaluation at 12: 8 stays.
  evaluate = lambda state, s: {"eval_loss": float(s) if s < 12 else float("nan")}
  with pytest.raises(TrainingDiverged, match="loss is nan at step 14; stopped, the last good "
                     "checkpoint is step 12; the last with a healthy evaluation is step 8"):
    run_loop(state, fake_step(nan_at=14), loader, rng=jax.random.key(0), mesh=mesh,
             schedule=schedule, ckpts=ckpts, writer=writer,
             hooks=Hooks(evaluate, lambda: (loader.state(), {"fake": True})),
             rate=RateWindow(THROUGHPUT))
  assert ckpts.all_steps() == [8, 12]


def test_a_checkpoint_that_cannot_be_saved_stops_the_run_with_one_line(tmp_path, monkeypatch):
  import errno  # pylint: disable=import-outside-toplevel

  from lmjax.errors import Fault  # pylint: disable=import-outside-toplevel
  schedule = Schedule(steps=20, log_every=1, eval_every=100, checkpoint_every=3)
  mesh = parallel.make_mesh()
  ckpts, writer = Checkpoints(tmp_path / "checkpoints"), MetricWriter(tmp_path)
  save = ckpts._manager.save  # pylint: disable=protected-access

  def full_disk(step, *args, **kwargs):
    if step >= 6:
      raise OSError(errno.ENOSPC, "No space left on device")
    return save(step, *args, **kwargs)

  monkeypatch.setattr(ckpts._manager, "save", full_disk)  # pylint: disable=protected-access
  loader, state = FakeLoader(), {"count": jnp.int32(0), "total": jnp.float32(0)}
  with pytest.raises(Fault) as e:
    run_loop(state, fake_step(), loader, rng=jax.random.key(0), mesh=mesh, schedule=schedule,
             ckpts=ckpts, writer=writer,
             hooks=Hooks(lambda state, s: {}, lambda: (loader.state(), {"fake": True})),
             rate=RateWindow(THROUGHPUT))
  assert str(e.value) == ("a checkpoint could not be saved ([Errno 28] No space left on "
                          "device); stopped at step 6: the newest checkpoint on disk is step 3")


def test_rates_count_the_tokens_of_the_batches_as_padded():
  times = iter([10.0, 12.0, 13.0])
  rate = RateWindow(Throughput(flops_per_token=2.0, peak_flops_per_device=100.0),
                    clock=lambda: next(times))
  assert rate.tokens({"input_ids": np.zeros((8, 32)), "labels": np.zeros(8)}) == 256
  assert rate.read(999) == {}  # the first reading opens the window (compilation)
  assert rate.read(400) == {"tokens_per_s": 200.0,
                            "mfu": pytest.approx(200.0 * 2 / (100 * jax.device_count()))}
  assert rate.read(96)["tokens_per_s"] == 96.0  # shorter batches, fewer tokens


def test_the_progress_bar_shows_tokens_per_second_once_it_has_measured_them(tmp_path):
  class Bar:
    def __init__(self):
      self.shown = []

    def set_postfix(self, shown, refresh):
      del refresh
      self.shown.append(shown)

  clock = iter([10.0, 12.0]).__next__
  bar, writer = Bar(), MetricWriter(tmp_path)
  metrics = loop._Metrics(writer, RateWindow(THROUGHPUT, clock=clock), None, bar,
                          ("loss",))  # pylint: disable=protected-access
  for step in (1, 2):
    metrics.add(step, {"loss": jnp.float32(0.5)}, tokens=1000)
    metrics.flush(step)
  writer.close()
  assert bar.shown == [{"loss": "0.500"}, {"loss": "0.500", "tok_s": "500"}]


class DeviceReads:
  """Fails a read of a device array on the host while `armed`: the
  transfer guard where the backend enforces it (not CPU, whose arrays are
  in host memory), and a tripwire on every way the host reads one."""

  def __init__(self, monkeypatch):
    self.armed, self._guard = False, None
    from jax._src.array import ArrayImpl  # pylint: disable=import-outside-toplevel
    for name in ("__array__", "__float__", "__int__", "__bool__", "item", "tolist"):
      monkeypatch.setattr(ArrayImpl, name, self._tripwire(getattr(ArrayImpl, name)))
    monkeypatch.setattr(jax, "device_get", self._tripwire(jax.device_get))
    monkeypatch.setattr(jax, "block_until_ready", self._tripwire(jax.block_until_ready))

  def _tripwire(self, fn):
    def checked(*args, **kwargs):
      if self.armed:
        raise AssertionError(f"the host read a device array ({fn.__name__})")
      return fn(*args, **kwargs)
    return checked

  def arm(self, on: bool) -> None:
    self.armed = on
    if on:
      self._guard = jax.transfer_guard_device_to_host("disallow")
      self._guard.__enter__()
    elif self._guard is not None:
      self._guard.__exit__(None, None, None)
      self._guard = None


def test_between_log_evaluation_and_checkpoint_steps_nothing_comes_back_from_the_device(
    tmp_path, monkeypatch):
  """The host dispatches ahead: from a step that neither logs, evaluates nor
  saves to the next step's dispatch, the host reads nothing from the device."""
  schedule = Schedule(steps=12, log_every=5, eval_every=6, checkpoint_every=12)

  @jax.jit
  def jitted(state, batch, rng):
    del rng
    count = state["count"] + 1
    return ({"count": count, "total": state["total"] + batch["x"].sum()},
            {"loss": count.astype(jnp.float32)})

  reads, calls, armed_after = DeviceReads(monkeypatch), [], []

  def step(state, batch, rng):
    reads.arm(False)
    out = jitted(state, batch, rng)
    calls.append(len(calls) + 1)
    if not schedule.waits(calls[-1], 0):
      reads.arm(True)
      armed_after.append(calls[-1])
    return out

  try:
    result, evaluations, saved = run(tmp_path, schedule, step)
  finally:
    reads.arm(False)
  assert armed_after == [2, 3, 4, 7, 8, 9, 11]
  assert (result.step, evaluations, saved) == (12, [6, 12], [12])
  assert [line["step"] for line in lines(tmp_path) if "loss" in line] == list(range(1, 13))
  reads.arm(True)  # the tripwire works
  with pytest.raises(AssertionError, match="read a device array"):
    float(jitted({"count": jnp.int32(0), "total": jnp.float32(0)},
                 {"x": jnp.ones(2)}, None)[1]["loss"])
  reads.arm(False)


def test_several_processes_share_a_signal_only_where_they_wait_anyway(monkeypatch):
  """Processes agree on a stop at log, evaluation and checkpoint steps,
  through the coordination service; elsewhere only JAX's preemption
  notice (host-side) is read."""
  from lmjax.trainer import loop  # pylint: disable=import-outside-toplevel
  exchanged = []
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(parallel, "sum_over_processes",
                      lambda x: exchanged.append(x.copy()) or x + 1)

  class NoPreemption:
    def reached_preemption(self, step):
      return step == 99

  stop = loop.StopRequest()
  assert loop._stop_signal(stop, NoPreemption(), 3, agree=False) is None
  assert exchanged == []
  assert loop._stop_signal(stop, NoPreemption(), 5, agree=True) == "SIGTERM"  # the other's
  assert [x.tolist() for x in exchanged] == [[0]]
  stop.signal = "SIGINT"
  assert loop._stop_signal(stop, NoPreemption(), 6, agree=False) is None  # not yet shared
  assert loop._stop_signal(stop, NoPreemption(), 99, agree=False) == "SIGINT"
  assert loop._stop_signal(stop, NoPreemption(), 10, agree=True) == "SIGINT"


def test_metrics_reach_tensorboard_without_importing_torch(tmp_path):
  """tensorboardX imports torch where it is installed (seconds a run);
  lmjax's writer keeps it out, and the event file still holds the scalars."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  script = (
      "import sys\n"
      "from lmjax.trainer.writer import MetricWriter\n"
      f"w = MetricWriter({str(tmp_path)!r})\n"
      "w.write(1, {'loss': 1.5}); w.write(2, {'loss': 1.25, 'accuracy': 0.5}); w.flush()\n"
      "assert 'torch' not in sys.modules, 'torch was imported'\n"
      "import torch  # still importable afterwards\n")
  done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  from helpers import event_scalars  # pylint: disable=import-outside-toplevel
  from etils import epath  # pylint: disable=import-outside-toplevel
  assert event_scalars(epath.Path(tmp_path) / "tensorboard") == {"loss": {1, 2},
                                                                  "accuracy": {2}}
