"""Several JAX processes on this machine: launch/local.sh, the distributed
start, and a 2-process run that is the 1-process run. The slow ones are
`serial`: CI runs them alone, since two processes of 4-8 simulated devices
beside another test worker can starve a collective past XLA's 40-second
rendezvous timeout."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmjax import distributed
from lmjax.errors import ConfigError

ROOT = Path(__file__).parents[1]
LAUNCH = str(ROOT / "launch" / "local.sh")


def launch(*args, env=None, timeout=300):
  return subprocess.run([LAUNCH, *args], capture_output=True, text=True, cwd=ROOT,
                        env=env, timeout=timeout, check=False)


def tail(done: subprocess.CompletedProcess, chars: int = 3000) -> str:
  """For a failed assertion: the lines of a launch's output that name an
  error (a C++ abort's among them), then the end of the processes' output
  and of the launcher's own."""
  errors = [line for line in done.stdout.splitlines()
            if any(m in line for m in ("rror", "terminate", "what():", "Check failed", "Fatal"))]
  return "\n".join([*errors[:20], "...", done.stdout[-chars:], done.stderr[-chars:]])


def test_dry_run_prints_each_process_command():
  done = launch("--dry-run", "--port=4321", "--devices=2", "3", "python", "-m",
                "lmjax.pretrain", "--workdir=/tmp/a b")
  assert done.returncode == 0
  assert done.stdout.splitlines() == [
      f"JAX_COORDINATOR_ADDRESS=localhost:4321 JAX_NUM_PROCESSES=3 JAX_PROCESS_ID={i} "
      "JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=2 "
      "python -m lmjax.pretrain --workdir=/tmp/a\\ b" for i in range(3)]


def test_tpu_pod_dry_run_copies_installs_and_runs_on_every_worker():
  done = subprocess.run([str(ROOT / "launch" / "tpu_pod.sh"), "--dry-run", "--tpu=pod",
                         "--zone=z1", "--project=p1", "python", "-m", "lmjax.pretrain",
                         "--workdir=/mnt/b/run"], capture_output=True, text=True,
                        check=False)
  assert done.returncode == 0, done.stderr
  archive, copy, setup, run, clean = done.stdout.splitlines()
  path = archive.split(" -o ")[1].split()[0]
  assert archive == f"git archive --format=tar.gz -o {path} HEAD"
  where = "--zone=z1 --worker=all --project=p1"
  assert copy.strip() == f"gcloud compute tpus tpu-vm scp {path} pod:\\~/lmjax.tar.gz {where}"
  assert setup.startswith(f"gcloud compute tpus tpu-vm ssh pod {where} --command=")
  assert "pip\\ install\\ -q\\ -r\\ requirements.txt" in setup and "jax\\[tpu\\]==" in setup
  assert run.startswith(f"gcloud compute tpus tpu-vm ssh pod {where} --command=")
  assert "python\\ -m\\ lmjax.pretrain\\ --workdir=/mnt/b/run" in run
  assert "tee\\ ~/lmjax-logs/" in run and clean == f"rm -f {path}"
  bad = subprocess.run([str(ROOT / "launch" / "tpu_pod.sh"), "--zone=z1", "python"],
                       capture_output=True, text=True, check=False)
  assert bad.returncode == 2 and bad.stderr.startswith("error: usage")


def test_slurm_dry_run_is_one_srun_of_one_task_per_node():
  done = subprocess.run([str(ROOT / "launch" / "slurm.sbatch"), "--dry-run", "python", "-m",
                         "lmjax.pretrain", "--workdir=/shared/run"],
                        capture_output=True, text=True, check=False,
                        env=dict(os.environ, SLURM_SUBMIT_DIR="/shared/lmjax"))
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == (
      "srun --kill-on-bad-exit=1 --ntasks-per-node=1 "
      "--output=/shared/lmjax/logs/%x-%j-%t.out bash -c "
      "cd\\ /shared/lmjax\\ \\&\\&\\ .\\ .venv/bin/activate\\ \\&\\&\\ exec\\ "
      "\\\"\\$@\\\" lmjax python -m lmjax.pretrain --workdir=/shared/run")
  bad = subprocess.run([str(ROOT / "launch" / "slurm.sbatch")], capture_output=True,
                       text=True, check=False)
  assert bad.returncode == 2 and bad.stderr.startswith("error: usage")


def test_output_is_prefixed_and_the_first_failure_stops_the_rest():
  done = launch("2", sys.executable, "-c",
                "import os; print('process', os.environ['JAX_PROCESS_ID'])")
  assert done.returncode == 0
  assert sorted(done.stdout.splitlines()) == ["[0] process 0", "[1] process 1"]
  done = launch("2", sys.executable, "-c",
                "import os, sys, time; i = os.environ['JAX_PROCESS_ID']; "
                "time.sleep(120) if i == '0' else sys.exit(3)", timeout=60)
  assert done.returncode == 3
  assert "exited with status 3; stopping the others" in done.stderr


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period():
  env = dict(os.environ, LMJAX_LAUNCH_GRACE_S="2")
  done = launch("2", sys.executable, "-c",
                "import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "time.sleep(120) if os.environ['JAX_PROCESS_ID'] == '0' else "
                "(time.sleep(1), sys.exit(4))", env=env, timeout=30)
  assert done.returncode == 4


def test_processes_whose_watch_polls_without_pause_exit_cleanly():
  """The peer watch stops before the interpreter finalizes: a watch still
  calling the coordination service then aborted its process at exit
  (`terminate called after throwing an instance of ''`, status 134; six
  runs in six before the fix, with this polling)."""
  done = launch("2", sys.executable, "tests/scripts/watched_exit.py", timeout=120)
  assert done.returncode == 0, tail(done)
  assert sorted(line for line in done.stdout.splitlines() if "leaves" in line) == [
      "[0] process 0 leaves", "[1] process 1 leaves"]


def run_to_end(command: list[str], env=None, timeout: float = 120) -> tuple[int, str]:
  """(status, stdout) of `command`; a run still going after `timeout` s
  (hung) is killed with all its processes and fails the test."""
  process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
  try:
    out, _ = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(process.pid, signal.SIGKILL)
    out, _ = process.communicate()
    pytest.fail(f"still running after {timeout} s (hung):\n{out[-3000:]}")
  return process.returncode, out


@pytest.mark.slow
@pytest.mark.serial
def test_many_evaluation_batches_on_two_processes_end_and_equal_one_process():
  """60 evaluations of 16 batches: without lmjax.parallel.in_order, CPU
  processes run the batches' collectives concurrently, in a different order
  on each, and hang (3 runs of 3 did before it)."""
  script = ["tests/scripts/evaluation_rounds.py", "60"]
  status, out = run_to_end([LAUNCH, "2", sys.executable, *script])
  assert status == 0, out[-3000:]
  results = [json.loads(line.split("] ", 1)[1]) for line in out.splitlines()
             if line.split("] ", 1)[-1].startswith("{")]
  status, out = run_to_end([sys.executable, *script], env=dict(
      os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8"))
  assert status == 0, out[-3000:]
  single = json.loads(out.splitlines()[-1])
  assert len(results) == 2
  for result in results:
    assert result["scores"] == pytest.approx(single["scores"], rel=1e-6)
    assert result["logits"] == pytest.approx(single["logits"], rel=1e-6)
    assert result["sums"] == [[3, 0], [3, 2], [3, 4]]  # processes 1 + 2, rounds r + r
  assert single["sums"] == [[1, 0], [1, 1], [1, 2]]


@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_launcher_waits_for_its_processes_and_leaves_none(tmp_path, sig, status):
  """Process 1 ends on the signal; process 0 ignores it and is killed after
  the grace period. The launcher exits only once both are gone."""
  marker = f"lmjax-launch-test-{tmp_path.name}"
  script = ("import os, signal, sys, time\n"
            "if os.environ['JAX_PROCESS_ID'] == '0':\n"
            "  signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "  signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "else:\n"
            "  signal.signal(signal.SIGINT, lambda *a: sys.exit(0))\n"
            "print('ready', flush=True)\n"
            "time.sleep(120)\n")
  process = subprocess.Popen([LAUNCH, "2", sys.executable, "-c", script, marker],
                             cwd=ROOT, env=dict(os.environ, LMJAX_LAUNCH_GRACE_S="2"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  lines = [process.stdout.readline() for _ in range(2)]
  assert sorted(lines) == ["[0] ready\n", "[1] ready\n"]
  process.send_signal(sig)
  start = time.monotonic()
  _, err = process.communicate(timeout=30)
  assert process.returncode == status
  assert 2 <= time.monotonic() - start < 10
  assert "killing what is left after 2 s" in err
  left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True, check=False)
  assert left.stdout == ""


@pytest.mark.parametrize("args", [["0", "true"], ["2"], ["--devices=0", "2", "true"],
                                  ["--nodes=2", "2", "true"]])
def test_bad_usage_is_one_line_with_status_2(args):
  done = launch(*args)
  assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
  assert done.stderr.startswith("error:")


def test_a_grace_period_that_is_not_a_number_is_one_line():
  done = launch("2", "true", env=dict(os.environ, LMJAX_LAUNCH_GRACE_S="soon"))
  assert done.returncode == 2
  assert done.stderr == ("error: LMJAX_LAUNCH_GRACE_S must be a whole number of seconds, "
                         "got 'soon'\n")


@pytest.mark.parametrize("environ,message", [
    (dict(JAX_COORDINATOR_ADDRESS="localhost:1"), "set but not JAX_NUM_PROCESSES, "
                                                  "JAX_PROCESS_ID"),
    (dict(JAX_COORDINATOR_ADDRESS="localhost:1", JAX_NUM_PROCESSES="2",
          JAX_PROCESS_ID="2"), "JAX_PROCESS_ID must be in [0, JAX_NUM_PROCESSES=2)"),
    (dict(JAX_COORDINATOR_ADDRESS="localhost:1", JAX_NUM_PROCESSES="two",
          JAX_PROCESS_ID="0"), "JAX_NUM_PROCESSES must be a whole number"),
])
def test_incomplete_distributed_settings_are_one_line(environ, message):
  with pytest.raises(ConfigError) as e:
    distributed.initialize(environ)
  assert message in str(e.value) and "\n" not in str(e.value)
  distributed.initialize({})  # a single process: nothing to start


TINY = ["--config.data.max_seq_length=32", "--config.data.max_predictions_per_seq=5",
        "--config.train.batch_size=8", "--config.train.steps=30",
        "--config.train.warmup_steps=5", "--config.train.log_every=1",
        "--config.train.eval_every=15", "--config.train.eval_batches=2",
        "--config.train.checkpoint_every=10", "--config.probe.train_examples=200",
        "--config.probe.eval_examples=100"]
NO_PROBE = "--config.probe.source="  # where a test is about processes, not the evaluation


def train_lines(workdir):
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {line["step"]: line for line in lines if "loss" in line}


# Each process a "slice": the data axis crosses processes as it crosses TPU
# slices over the data-centre network.
TWO_SLICES = ("--config.mesh.dcn_data=2",)


def uneven_corpus(path: Path) -> Path:
  """Documents of 1 to 400 sentences of the built-in text, and a validation
  split of three short documents: fewer pairs than one evaluation
  (eval_batches x batch_size), which no process's share divides evenly."""
  import gzip  # pylint: disable=import-outside-toplevel
  import random  # pylint: disable=import-outside-toplevel

  from lmjax.data import builtin, documents  # pylint: disable=import-outside-toplevel

  def split(doc):
    return documents.hash_split("\n".join(doc), *documents.DOCUMENT_SPLITS)

  with gzip.open(builtin.AUSTEN_FILE, "rt") as f:
    lines = [line.strip() for line in f if line.strip()]
  rng, docs, i = random.Random(0), [], 0
  while i < 6000:
    n = rng.choice([1, 3, 40, 150, 400])
    if split(lines[i:i + n]) == "train":
      docs.append(lines[i:i + n])
    i += n
  short = [lines[j:j + 4] for j in range(i, len(lines), 4) if split(lines[j:j + 4]) != "train"]
  for doc in short[:3]:
    docs.insert(rng.randrange(len(docs)), doc)
  path.write_text("\n\n".join("\n".join(doc) for doc in docs) + "\n")
  return path


def pretrain_command(workdir, *extra, corpus=None):
  source = [f"--config.data.source=text:{corpus}"] if corpus else []
  return [sys.executable, "-m", "lmjax.pretrain", f"--config={ROOT}/configs/pretrain.py",
          f"--workdir={workdir}", *TINY, *source, *extra]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  # Without the session's compilation cache (conftest): the processes of one
  # run compile the same programs at once, and JAX writes a cache entry in
  # place, so one process could read another's half-written file.
  environ = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  return dict(environ, TFDS_DATA_DIR=str(tmp_path_factory.mktemp("tfds")),
              LMJAX_CACHE=str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return uneven_corpus(tmp_path_factory.mktemp("corpus") / "uneven.txt")


@pytest.fixture(scope="module")
def two_process_run(env, corpus, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("two") / "run"
  done = launch("2", *pretrain_command(workdir, *TWO_SLICES, corpus=corpus), env=env)
  assert done.returncode == 0, tail(done)
  return workdir, done


@pytest.mark.slow
@pytest.mark.serial
def test_two_processes_of_four_devices_train_as_one_of_eight(env, corpus, tmp_path,
                                                             two_process_run):
  """On a corpus of uneven documents whose validation split is smaller than
  one evaluation and uneven over the processes, probe included."""
  workdir, two = two_process_run
  (validation,) = [meta["splits"]["validation"]["pairs"] for meta in (
      json.loads(p.read_text()) for p in Path(env["LMJAX_CACHE"]).glob("prepared-*/metadata.json"))
      if meta["source"] == f"text:{corpus}"]
  assert validation < 2 * 8 and validation % 4, validation  # eval_batches x batch_size
  one = subprocess.run(pretrain_command(tmp_path / "one", corpus=corpus), capture_output=True,
                       text=True,
                       cwd=ROOT, check=False,
                       env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=8"))
  assert one.returncode == 0, tail(one)
  single, double = train_lines(tmp_path / "one"), train_lines(workdir)
  assert sorted(single) == sorted(double) == list(range(1, 31))
  for step, line in single.items():
    assert abs(double[step]["loss"] - line["loss"]) <= 1e-6 * abs(line["loss"]), step
  summaries = [json.loads(line.split("] ", 1)[1]) for line in two.stdout.splitlines()
               if line.split("] ", 1)[-1].startswith("{")]
  expected = json.loads(one.stdout.strip().splitlines()[-1])
  assert len(summaries) == 2
  for summary in summaries:  # every process agrees on the evaluation and baselines
    assert summary == expected
  assert json.loads((workdir / "summary.json").read_text()) == expected
  assert "[Gloo]" not in two.stdout + two.stderr  # its connection notices, dropped
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [10, 20, 30]


def rerun_resumes_from_step_10(command, env, workdir, uninterrupted) -> None:
  """The same command again resumes from step 10 and repeats the
  uninterrupted run's losses exactly."""
  done = launch("2", *command, env=env)
  assert done.returncode == 0, tail(done)
  assert "resuming from the checkpoint of step 10" in done.stdout
  expected = {s: line["loss"] for s, line in train_lines(uninterrupted).items()}
  assert {s: line["loss"] for s, line in train_lines(workdir).items()} == expected


@pytest.mark.slow
@pytest.mark.serial
def test_a_stalled_process_ends_every_process_with_one_line_and_a_rerun_resumes(
    env, corpus, tmp_path, two_process_run):
  """Process 1 sleeps for good in the evaluation at step 15: both processes
  end within the stall timeout, each with one line naming the phase, and
  the same command again resumes from the checkpoint both left (step 10)
  and repeats the uninterrupted run. (A process killed outside the program
  is the kill -9 tests' case.)"""
  workdir = tmp_path / "stalled"
  command = pretrain_command(workdir, *TWO_SLICES, NO_PROBE, corpus=corpus)
  stalled = [command[0], "tests/scripts/stalled_run.py", "1:evaluation", *command[2:],
             "--config.train.stall_timeout_s=10"]
  start = time.monotonic()
  status, out = run_to_end([LAUNCH, "2", *stalled], env=env, timeout=180)
  assert status == 1, out[-3000:]
  errors = [line for line in out.splitlines() if "error:" in line]
  assert len(errors) == 2 and {e[:3] for e in errors} == {"[0]", "[1]"}, out[-3000:]
  for line in errors:
    assert "evaluation at step 15 made no progress for 10 s" in line
    assert "Rerun the same command on every host" in line
  assert "Traceback" not in out
  assert time.monotonic() - start < 120
  rerun_resumes_from_step_10(command, env, workdir, two_process_run[0])


@pytest.mark.slow
@pytest.mark.serial
def test_fine_tuning_on_two_processes_is_fine_tuning_on_one(env, tmp_path):
  # Texts of 3 to 30 words; 307 rows: no split is a whole number of batches.
  rows = [f"{'a fine film' if i % 3 else 'a dull film'} number {i}{' and so on' * (i % 10)}\t"
          f"{'pos' if i % 3 else 'neg'}" for i in range(307)]
  (tmp_path / "task.tsv").write_text("text\tlabel\n" + "\n".join(rows) + "\n")
  command = [sys.executable, "-m", "lmjax.finetune", f"--config={ROOT}/configs/finetune.py",
             f"--config.task.source=tsv:{tmp_path / 'task.tsv'}", "--config.init.source=random",
             "--config.task.max_seq_length=16", "--config.train.batch_size=16",
             "--config.train.steps=12", "--config.train.log_every=1",
             "--config.train.eval_every=6"]
  one = subprocess.run([*command, f"--workdir={tmp_path / 'one'}"], capture_output=True,
                       text=True, cwd=ROOT, check=False,
                       env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=8"))
  assert one.returncode == 0, tail(one)
  two = launch("2", *command, f"--workdir={tmp_path / 'two'}", env=env)
  assert two.returncode == 0, tail(two)
  single, double = train_lines(tmp_path / "one"), train_lines(tmp_path / "two")
  assert sorted(single) == sorted(double) == list(range(1, 13))
  for step, line in single.items():
    assert abs(double[step]["loss"] - line["loss"]) <= 1e-6 * abs(line["loss"]), step
  summary = json.loads((tmp_path / "two" / "summary.json").read_text())
  assert summary == json.loads((tmp_path / "one" / "summary.json").read_text())


def workers(workdir, launcher) -> list[int]:
  """The pids of the processes the launcher started for `workdir`."""
  found = subprocess.run(["pgrep", "-f", f"lmjax\\..*--workdir={workdir}"],
                         capture_output=True, text=True, check=False).stdout.split()
  return [int(p) for p in found if int(p) != launcher.pid]


def wait_for_step(workdir: Path, step: int, process, timeout=240):
  deadline = time.time() + timeout
  path = workdir / "metrics.jsonl"
  while time.time() < deadline:
    if process.poll() is not None:
      err = process.stderr.read() if process.stderr else ""
      raise AssertionError(f"the run ended ({process.returncode}) before it was interrupted: "
                           f"{err[-2000:]}")
    if path.exists() and max(train_lines(workdir), default=0) >= step:
      return
    time.sleep(0.1)
  raise TimeoutError(step)


@pytest.mark.slow
@pytest.mark.serial
def test_sigterm_to_every_process_saves_one_step_and_exits_zero(env, tmp_path):
  workdir = tmp_path / "run"
  command = [LAUNCH, "2", sys.executable, "-m", "lmjax.pretrain",
             f"--config={ROOT}/configs/pretrain.py", f"--workdir={workdir}", *TINY, NO_PROBE,
             "--config.train.steps=100000", "--config.train.checkpoint_every=100000"]
  process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
  wait_for_step(workdir, 5, process)
  for pid in workers(workdir, process):
    os.kill(pid, 15)
  out, _ = process.communicate(timeout=120)
  assert process.returncode == 0, out[-3000:]
  saved = [line for line in out.splitlines() if "SIGTERM: saved a checkpoint at step" in line]
  assert len(saved) == 2 and len({line.split("step ")[1] for line in saved}) == 1, saved
  step = int(saved[0].split("step ")[1].split(";")[0])
  assert [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()] \
      == [step]


def free_port() -> int:
  import socket  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.serial
@pytest.mark.parametrize("victim", [0, 1])
def test_one_process_killed_ends_the_other_with_one_line(env, tmp_path, victim):
  """Process `victim` (1: a worker; 0: also the coordinator) SIGKILLed
  mid-run; the other ends within 60 s with one line and status 1."""
  workdir, port = tmp_path / "run", free_port()
  processes = [subprocess.Popen(
      pretrain_command(workdir, NO_PROBE, "--config.train.steps=100000"), cwd=ROOT,
      env=dict(env, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i), JAX_PLATFORMS="cpu", LMJAX_PEER_TIMEOUT_S="5",
               XLA_FLAGS="--xla_force_host_platform_device_count=4"),
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    wait_for_step(workdir, 3, processes[0])
    supervised = subprocess.run(["pgrep", "-P", str(processes[victim].pid)],
                                capture_output=True, text=True, check=True).stdout.split()
    os.kill(int(supervised[0]), 9)  # the run itself, not the supervising parent
    start = time.monotonic()
    survivor = processes[1 - victim]
    try:
      _, err = survivor.communicate(timeout=60)
    except subprocess.TimeoutExpired:
      subprocess.run(["ps", "-ef", "--forest"], check=False)
      subprocess.run(["py-spy", "dump", "--pid", str(survivor.pid)], check=False)
      for child in subprocess.run(["pgrep", "-P", str(survivor.pid)], capture_output=True,
                                  text=True, check=False).stdout.split():
        subprocess.run(["py-spy", "dump", "--pid", child], check=False)
      raise
    assert time.monotonic() - start < 60
  finally:
    for p in processes:
      p.kill()
  lines = [line.strip() for line in err.replace("\r", "\n").splitlines() if line.strip()]
  assert survivor.returncode == 1
  assert [line for line in lines if "error" in line.lower()] == lines[-1:], err[-3000:]
  assert lines[-1].startswith("error: ") and "Rerun the same command on every host" in lines[-1]
  for noise in ("Check failure", "coordination_service", "Fatal Python error", "Traceback"):
    assert noise not in err
  assert processes[victim].wait(timeout=30) == 128 + 9


def test_the_stall_watch_names_a_phase_that_lasts_too_long_and_no_other(monkeypatch):
  from lmjax.trainer import watch  # pylint: disable=import-outside-toplevel
  stopped = []
  monkeypatch.setattr(distributed, "stop_all", stopped.append)
  stall = watch.StallWatch(0.5)
  stall.start()
  try:
    for step in range(10):  # phases that each end in time
      stall.enter(f"training step {step + 1}")
      time.sleep(0.1)
    assert stopped == []
    stall.enter("evaluation at step 10")
    time.sleep(1.0)
  finally:
    stall.stop()
  assert stopped and stopped[0] == ("evaluation at step 10 made no progress for 0.5 s on "
                                    "process 0 (config.train.stall_timeout_s)")


def test_a_compilation_has_its_allowance_beyond_a_short_stall_timeout(monkeypatch):
  from lmjax.trainer import watch  # pylint: disable=import-outside-toplevel
  stopped = []
  monkeypatch.setattr(distributed, "stop_all", stopped.append)
  monkeypatch.setattr(watch, "COMPILE_ALLOWANCE_S", 1.5)
  stall = watch.StallWatch(0.3)
  stall.start()
  try:
    stall.enter("the compilation of the training step", compiles=True)
    time.sleep(0.9)  # three timeouts, within the allowance
    assert stopped == []
    stall.enter("the compilation of the training step for batches of 9 rows", compiles=True)
    time.sleep(2.0)
  finally:
    stall.stop()
  assert stopped[0].startswith("the compilation of the training step for batches of 9 rows "
                               "made no progress for 1.5 s")


class _Service:
  """The coordination service's key-value store, as `stop_all` sees it."""

  def __init__(self, **values):
    self.values = dict(values)

  def key_value_set(self, key, value):
    if key in self.values:
      raise RuntimeError(f"ALREADY_EXISTS: {key}")
    self.values[key] = value

  def key_value_try_get(self, key):
    if key not in self.values:
      raise RuntimeError(f"NOT_FOUND: {key}")
    return self.values[key]


@pytest.mark.parametrize("me", [0, 1])
def test_a_process_that_stalls_after_another_announced_stops_with_its_cause(
    monkeypatch, capsys, me):
  """Two processes' watches fire together: the later one ends with the
  earlier one's line, and process 0, whose service the others read, leaves
  last."""
  from jax._src import distributed as jax_distributed  # pylint: disable=import-outside-toplevel
  first = "evaluation at step 15 made no progress for 10 s on process 1 (config...)"
  service = _Service(**{distributed._STOP_ALL: first})  # pylint: disable=protected-access
  monkeypatch.setattr(jax_distributed.global_state, "client", service)
  monkeypatch.setattr(distributed.jax, "process_count", lambda: 2)
  monkeypatch.setattr(distributed, "_me", me)
  monkeypatch.setattr(distributed, "_count", 2)
  monkeypatch.setattr(distributed, "_announced", False)
  monkeypatch.setattr(distributed, "_stopping", __import__("threading").Lock())
  waits = []
  monkeypatch.setattr(distributed.time, "sleep", waits.append)
  monkeypatch.setattr(distributed.os, "_exit", lambda status: (_ for _ in ()).throw(
      SystemExit(status)))
  with pytest.raises(SystemExit) as ended:
    distributed.stop_all("evaluation at step 15 made no progress for 10 s on process 0")
  assert ended.value.code == distributed.PEER_LOST_STATUS
  line = capsys.readouterr().err.strip()
  assert line == (f"error: {first}; process {me} stops too. Rerun the same command on every "
                  "host to resume from the newest checkpoint")
  assert waits == ([distributed._STOP_ALL_WAIT_S] if me == 0 else [])  # pylint: disable=protected-access
  assert service.values == {distributed._STOP_ALL: first}  # pylint: disable=protected-access


def test_two_threads_that_end_a_process_print_one_line(monkeypatch, capsys):
  """Process 0 waits before it exits (the others read its service); a
  collective that fails meanwhile must not add a second line."""
  import threading  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(distributed, "_me", 0)
  monkeypatch.setattr(distributed, "_count", 2)
  monkeypatch.setattr(distributed, "_stopping", threading.Lock())
  leave = threading.Event()
  exits = []
  monkeypatch.setattr(distributed.os, "_exit", exits.append)
  real_sleep = time.sleep
  monkeypatch.setattr(distributed.time, "sleep",
                      lambda s: leave.wait() if s == distributed._STOP_ALL_WAIT_S  # pylint: disable=protected-access
                      else real_sleep(0.01))
  first = threading.Thread(target=distributed._stop, args=("a stall",), daemon=True)  # pylint: disable=protected-access
  first.start()
  real_sleep(0.2)  # the first prints and waits
  second = threading.Thread(target=distributed._stop, args=("a collective failed",),  # pylint: disable=protected-access
                            daemon=True)
  second.start()
  real_sleep(0.2)
  leave.set()
  first.join(timeout=5)
  lines = [line for line in capsys.readouterr().err.splitlines() if line]
  assert lines == ["error: a stall; process 0 stops too. Rerun the same command on every host "
                   "to resume from the newest checkpoint"]
  assert exits == [distributed.PEER_LOST_STATUS] and second.is_alive()
