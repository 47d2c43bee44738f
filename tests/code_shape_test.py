"""The shape of the code itself: every function in lmjax/ reads in one
screen, and the layer that runs things does not reach into entry points."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "lmjax"
MAX_FUNCTION_LINES = 60


def functions(path: Path):
  tree = ast.parse(path.read_text(), str(path))
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      yield node.name, node.lineno, node.end_lineno - node.lineno + 1


def test_no_function_in_the_package_is_over_sixty_lines():
  long = [f"{path.relative_to(PACKAGE.parent)}:{line} {name} ({length} lines)"
          for path in sorted(PACKAGE.rglob("*.py"))
          for name, line, length in functions(path) if length > MAX_FUNCTION_LINES]
  assert not long, long


def imported_modules(path: Path) -> set[str]:
  tree = ast.parse(path.read_text(), str(path))
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{a.name}" for a in node.names)
    elif isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
  return names


def test_layers_import_only_downwards():
  """model/ knows nothing of data, train or runs; data/ never imports jax;
  train/ (pure steps and objectives) knows nothing of files or runs."""
  forbidden = {"model": ("lmjax.data", "lmjax.train", "lmjax.runs", "lmjax.interop"),
               "data": ("jax", "flax", "optax", "lmjax.model", "lmjax.train", "lmjax.runs"),
               "train": ("lmjax.runs", "lmjax.data", "orbax", "tensorboardX")}
  wrong = []
  for layer, prefixes in forbidden.items():
    for path in sorted((PACKAGE / layer).rglob("*.py")):
      for name in imported_modules(path):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
          wrong.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
  assert not wrong, wrong


def readme_layout() -> dict[str, set[str]]:
  """The modules README.md's layout tree names: {package dir: {file.py}}."""
  text = (PACKAGE.parent / "README.md").read_text()
  tree = text.split("## Layout", 1)[1].split("```", 2)[1]
  listed: dict[str, set[str]] = {}
  folder = ""
  for line in tree.splitlines():
    words = line.split()
    if not words:
      continue
    depth = (len(line) - len(line.lstrip())) // 2
    if depth == 1 and words[0].endswith("/"):
      folder = words[0].rstrip("/")
    elif depth == 1:
      folder = ""
    files = [w for w in words if w.endswith(".py")]
    if depth >= 1 and files:
      listed.setdefault(folder if depth == 2 else "", set()).update(files)
  return listed


def test_the_readme_layout_names_every_module_and_only_those():
  listed = readme_layout()
  for folder in ("", "model", "data", "train", "runs", "interop"):
    actual = {p.name for p in (PACKAGE / folder).glob("*.py") if p.name != "__init__.py"}
    assert listed[folder] == actual, (folder, listed[folder] ^ actual)
