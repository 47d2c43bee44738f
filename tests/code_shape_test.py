"""The shape of the code itself: every function in lmjax/ reads in one
screen, layers import only downwards, no module reaches itself through its
imports, and the layout page names every module."""

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


def module_name(path: Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
  """Every module `path` imports, absolute (relative imports resolved), and
  for `from M import N` both M and M.N."""
  tree = ast.parse(path.read_text(), str(path))
  package = module_name(path).split(".")
  if path.name != "__init__.py":
    package = package[:-1]
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
      names.add(base)
      names.update(f"{base}.{a.name}" for a in node.names)
    elif isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
  return names


def test_layers_import_only_downwards():
  """model/ knows nothing of data, train or what runs things; data/ never
  imports jax; train/ (pure steps and objectives) knows nothing of files or
  runs; the trainer never imports a run kind; nothing in lmjax imports an
  experiment."""
  above_train = ("lmjax.trainer", "lmjax.runs", "lmjax.benchmarking", "experiments")
  forbidden = {
      "model": ("lmjax.data", "lmjax.train", "lmjax.interop", *above_train),
      "data": ("jax", "flax", "optax", "lmjax.model", "lmjax.train", *above_train),
      "train": ("lmjax.data", "orbax", "tensorboardX", *above_train),
      "trainer": ("lmjax.runs", "lmjax.benchmarking", "experiments"),
      "runs": ("lmjax.benchmarking", "experiments"),
      "benchmarking": ("lmjax.runs", "experiments"),
      "": ("experiments",),
  }
  wrong = []
  for layer, prefixes in forbidden.items():
    for path in sorted((PACKAGE / layer).rglob("*.py")):
      for name in imported_modules(path):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
          wrong.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
  assert not wrong, wrong


def import_graph() -> dict[str, set[str]]:
  """{module: the lmjax modules it imports}, a package and its own
  submodules aside (a package's __init__ may name its parts)."""
  modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    graph[name] = {m for m in imported_modules(path) if m in modules and m != name
                   and not m.startswith(name + ".") and not name.startswith(m + ".")}
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One cycle through each module that reaches itself, as a path."""
  found, done = [], set()

  def visit(node, path, on_path):
    for nxt in sorted(graph[node]):
      if nxt in on_path:
        found.append(path[path.index(nxt):] + [nxt])
      elif nxt not in done:
        on_path.add(nxt)
        visit(nxt, path + [nxt], on_path)
        on_path.discard(nxt)
    done.add(node)

  for start in sorted(graph):
    if start not in done:
      visit(start, [start], {start})
  return found


def test_no_import_cycle_in_the_package():
  assert not cycles(import_graph()), cycles(import_graph())


def test_the_cycle_finder_finds_a_cycle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert cycles(graph) == [["a", "b", "c", "a"]]
  assert not cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}})


def docs_layout() -> dict[str, set[str]]:
  """The modules docs/architecture.md's layout tree names: {package dir: {file.py}}."""
  text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
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


def test_the_layout_page_names_every_module_and_only_those():
  listed = docs_layout()
  folders = sorted({str(p.parent.relative_to(PACKAGE)).replace(".", "")
                    for p in PACKAGE.rglob("*.py") if "builtin" not in p.parts})
  assert set(listed) == set(folders), set(listed) ^ set(folders)
  for folder in folders:
    actual = {p.name for p in (PACKAGE / folder).glob("*.py") if p.name != "__init__.py"}
    assert listed[folder] == actual, (folder, listed[folder] ^ actual)
