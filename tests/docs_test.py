"""The README and the docs pages stay true: every command they show names a
module, config or script that exists, every lmjax name they and the launch
scripts cite resolves, the README stays short, and its research snippet runs."""

import importlib
import importlib.util
import re
import runpy

import pytest

from helpers import ROOT

PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"),
                *(ROOT / "experiments").glob("*/README.md")])
LAUNCH = sorted((ROOT / "launch").iterdir())


def test_the_readme_is_at_most_300_lines():
  assert len((ROOT / "README.md").read_text().splitlines()) <= 300


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_names_a_module_and_files_that_exist(page):
  text = page.read_text()
  modules = set(re.findall(r"python -m ([\w.]+)", text))
  missing = [m for m in modules if _spec(m) is None]
  assert not missing, missing
  files = set(re.findall(r"--config=((?:configs|experiments)/[\w/]+\.py)", text))
  files |= set(re.findall(r"python ((?:benchmarks|launch|examples)/[\w/.]+)", text))
  files |= set(re.findall(r"\b(launch/[\w.]+)", text))
  assert not [f for f in files if not (ROOT / f).is_file()], files


def _spec(module: str):
  try:
    return importlib.util.find_spec(module)
  except ModuleNotFoundError:  # a name under a module that is no package
    return None


def _resolves(dotted: str) -> bool:
  if _spec(dotted) is not None:  # a module: found without running it
    return True
  parts = dotted.split(".")
  for i in range(len(parts), 0, -1):
    module = ".".join(parts[:i])
    if _spec(module) is None:
      continue
    obj = importlib.import_module(module)
    for attr in parts[i:]:
      if not hasattr(obj, attr):
        return False
      obj = getattr(obj, attr)
    return True
  return False


@pytest.mark.parametrize("path", PAGES + LAUNCH, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_lmjax_name_cited_resolves(path):
  names = set(re.findall(r"`?\b(lmjax(?:\.[A-Za-z_]\w*)+)", path.read_text()))
  names = {n for n in names if not n.endswith(("tar", "tar.gz"))}
  assert not [n for n in names if not _resolves(n)], names


def test_the_readme_research_snippet_runs():
  text = (ROOT / "README.md").read_text()
  (snippet,) = re.findall(r"```python\n(.*?)```", text, re.S)
  scope: dict = {}
  exec(compile(snippet, "README.md", "exec"), scope)  # pylint: disable=exec-used
  assert float(scope["metrics"]["loss"]) > 0 and scope["state"].step == 1


@pytest.mark.parametrize("old, new", [
    ("lmjax.data.prepare", "python -m lmjax.prepare"),
    ("lmjax.data.preview", "python -m lmjax.preview"),
    ("lmjax.transfer", "python -m experiments.transfer.main"),
])
def test_old_command_paths_name_the_new_command_in_one_line(old, new, capsys):
  with pytest.raises(SystemExit) as exited:
    runpy.run_module(old, run_name="__main__")
  assert exited.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith(f"error: python -m {old} is now {new}")
