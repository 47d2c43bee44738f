"""Test set-up: 8 simulated CPU devices, so sharding runs on a 2x2x2 mesh.

The flags must be set before jax first makes its backend, which is why they
live here (subprocesses inherit them). The fast tier compiles far more than
it computes (tiny models, a few steps each), so there LLVM's optimization
level 0 generates XLA's CPU code: 4:01 instead of 5:06 on a 2-core machine.
Its results agree with the default's to float32 rounding, not bit for bit,
so the slow tier (`--slow`), whose longer runs gain nothing from it and
whose tests compare eager and jitted computations exactly, keeps the
default.
"""

import os
import shutil
import tempfile

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests build the same tiny models again and again, in this process and in the
# processes they start: JAX's persistent compilation cache, one per test
# process, compiles each program once (keyed by the program and the XLA
# flags). pytest-xdist's workers (pyproject.toml runs two) each keep their
# own, since a cache entry is written in place and a worker could read
# another's half-written entry.
_COMPILATION_CACHE = tempfile.mkdtemp(prefix="lmjax-test-jit-")
if os.environ.get("PYTEST_XDIST_WORKER"):
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _COMPILATION_CACHE
else:
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _COMPILATION_CACHE)


import random  # noqa: E402 (after the flags above)

import pytest  # noqa: E402

from helpers import review  # noqa: E402


def pytest_addoption(parser):
  parser.addoption("--slow", action="store_true",
                   help="also run the slow end-to-end tier (tests marked slow)")


def pytest_configure(config):
  """The fast tier compiles at LLVM's optimization level 0 (see above);
  jax has made no backend yet."""
  if not config.getoption("--slow") and "optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"


def pytest_unconfigure(config):
  del config
  shutil.rmtree(_COMPILATION_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
  """Without --slow, the tests marked slow are deselected: the fast tier."""
  if config.getoption("--slow"):
    return
  slow = [item for item in items if item.get_closest_marker("slow")]
  if slow:
    config.hook.pytest_deselected(items=slow)
    items[:] = [item for item in items if not item.get_closest_marker("slow")]


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
  """Fresh tfds and cache directories for a module (use it with
  pytestmark = pytest.mark.usefixtures("data_dirs"))."""
  saved = {k: os.environ.get(k) for k in ("TFDS_DATA_DIR", "LMJAX_CACHE")}
  os.environ["TFDS_DATA_DIR"] = str(tmp_path_factory.mktemp("tfds"))
  os.environ["LMJAX_CACHE"] = str(tmp_path_factory.mktemp("cache"))
  yield
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


@pytest.fixture(scope="module")
def reviews_tsv(tmp_path_factory):
  """600 labelled snippets, 60% positive: a keyword decides the label."""
  rng = random.Random(0)
  path = tmp_path_factory.mktemp("task") / "reviews.tsv"
  rows = []
  for i in range(600):
    positive = rng.random() < 0.6
    rows.append(f"{review(rng, positive)} {i}\t{'pos' if positive else 'neg'}")
  path.write_text("text\tlabel\n" + "\n".join(rows) + "\n")
  return path


