"""The package's import structure: every module imports on its own, and nothing imports in a circle.

Imports inside functions hide cycles from a plain ``import`` (they run later), so
the graph here is built from the source with `ast`, function-level imports
included, and checked for cycles. Each module is also imported with none of the
package loaded before it (a forked copy of an interpreter that has loaded only
third-party libraries; the ``slow`` variant starts a new interpreter per
module), where an import-order problem cannot be masked by modules an earlier
test already loaded. ``import astro_metallicity`` and its acquisition stage
must not load torch.
"""

import ast
import functools
import importlib.util
import json
import os
import pkgutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

PACKAGE = "astro_metallicity"


def _package_dir():
    # find_spec locates the installed package without executing its __init__
    spec = importlib.util.find_spec(PACKAGE)
    return Path(next(iter(spec.submodule_search_locations)))


def _modules(root, package):
    """``{module name: source file}`` of every module of a package, found without importing it."""
    found = {package: root / "__init__.py"}

    def walk(path, prefix):
        for info in pkgutil.iter_modules([str(path)]):
            name = f"{prefix}.{info.name}"
            if info.name == "__main__":
                continue  # running it is running the program, not importing a module
            if info.ispkg:
                found[name] = path / info.name / "__init__.py"
                walk(path / info.name, name)
            else:
                found[name] = path / f"{info.name}.py"

    walk(root, package)
    return found


MODULES = _modules(_package_dir(), PACKAGE)


def _imported_names(node, module, is_package, modules=MODULES):
    """Fully qualified names an import node refers to (module, or module.attribute)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        # relative: level 1 is the module's own package (the package itself for an __init__)
        parts = module.split(".") if is_package else module.split(".")[:-1]
        base = parts[:len(parts) - node.level + 1]
        base = ".".join(base + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    names = [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
    if names and all(name in modules for name in names) and module.startswith(f"{base}."):
        # "from . import sub" needs only the submodule: the importer's own package is
        # already being imported, and none of its attributes is read
        return names
    return [base, *names]


def _called_name(call):
    return getattr(call.func, "attr", getattr(call.func, "id", None))


def _import_graph(modules=MODULES):
    """``{module: set of package modules it imports}``, every import in the file included."""
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = _imported_names(node, module, is_package, modules)
            elif (isinstance(node, ast.Call) and node.args
                  and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str)
                  and _called_name(node) == "import_module"):
                names = [node.args[0].value]  # importlib.import_module("astro_metallicity.x")
            else:
                continue
            # "from .x import y" imports module x, and module x.y too when y is a submodule
            targets.update(name for name in names if name in modules)
        # importing a.b.c first runs the __init__ of every package on the way (a, a.b) that
        # is not already one of the importer's own packages
        own = {module.rsplit(".", k)[0] for k in range(module.count(".") + 1)}
        for name in list(targets):
            parts = name.split(".")
            targets.update(".".join(parts[:k]) for k in range(1, len(parts))
                           if ".".join(parts[:k]) not in own)
        targets.discard(module)
        graph[module] = targets
    return graph


def _find_cycle(graph):
    """One import cycle as a list of modules (first == last), or None."""
    state = {}  # absent: unvisited; 1: on the current path; 2: done
    path = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_module_list_is_complete():
    # guards the walk itself: a broken walk would make the tests below vacuous
    assert {PACKAGE, f"{PACKAGE}.predict", f"{PACKAGE}.model", f"{PACKAGE}.cli",
            f"{PACKAGE}.mock", f"{PACKAGE}.train"} <= set(MODULES)
    assert all(path.is_file() for path in MODULES.values())


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_relative_imports_resolve_to_modules():
    tree = ast.parse("from . import x\nfrom ..y import z\nfrom .w import *\nimport p.q\n"
                     "from . import predict\nfrom . import conf, predict")
    nodes = tree.body
    assert _imported_names(nodes[0], "pkg.sub.mod", False) == ["pkg.sub", "pkg.sub.x"]
    # a submodule of the importer's own package: no dependency on the package's __init__
    assert _imported_names(nodes[4], f"{PACKAGE}.model", False) == [f"{PACKAGE}.predict"]
    # an attribute of it: a dependency on the package's __init__
    assert _imported_names(nodes[5], f"{PACKAGE}.model", False) == [
        PACKAGE, f"{PACKAGE}.conf", f"{PACKAGE}.predict"]
    assert _imported_names(nodes[1], "pkg.sub.mod", False) == ["pkg.y", "pkg.y.z"]
    assert _imported_names(nodes[1], "pkg.sub", True) == ["pkg.y", "pkg.y.z"]
    assert _imported_names(nodes[2], "pkg.sub.mod", False) == ["pkg.sub.w"]
    assert _imported_names(nodes[3], "pkg.sub.mod", False) == ["p.q"]


def test_import_graph_sees_function_level_imports(tmp_path):
    root = tmp_path / "planted"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("def __getattr__(name):\n    from .a import f\n    return f\n")
    (root / "a.py").write_text("def f():\n    from .sub import b\n    return b\n")
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "b.py").write_text("import importlib\nimportlib.import_module('planted.c')\n")
    (root / "c.py").write_text("from planted.a import f\n")
    graph = _import_graph(_modules(root, "planted"))
    assert graph["planted"] == {"planted.a"}
    assert graph["planted.a"] == {"planted.sub", "planted.sub.b"}
    assert _find_cycle(graph) == ["planted.a", "planted.sub.b", "planted.c", "planted.a"]


def test_import_graph_has_no_cycles():
    graph = _import_graph()
    # the graph must see the package's real structure, or "no cycle" means nothing
    assert f"{PACKAGE}.model" in graph[f"{PACKAGE}.predict"]
    cycle = _find_cycle(graph)
    assert cycle is None, ("import cycle (function-level imports included): "
                           + " -> ".join(cycle))


def _module_level_libraries():
    """Top-level names of the other libraries the package imports outside functions."""
    libraries = set()
    for path in MODULES.values():
        pending = list(ast.parse(path.read_text(encoding="utf-8")).body)
        while pending:
            node = pending.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue  # a function-level import runs later, in the child, if at all
            if isinstance(node, ast.Import):
                libraries.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                libraries.add(node.module.split(".")[0])
            pending.extend(ast.iter_child_nodes(node))
    libraries.discard(PACKAGE)
    return sorted(libraries)


_IMPORT_EACH = """
import importlib, json, os, sys, traceback
libraries, modules = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for library in libraries:
    try:
        importlib.import_module(library)
    except Exception:
        pass  # the child that needs it reports the failure
results = {}
for name in modules:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            importlib.import_module(name)
            message = b""
        except BaseException:
            message = traceback.format_exc().encode()
        os.write(write_end, message)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    results[name] = message or (None if status == 0 else f"the import ended with status {status}")
print(json.dumps(results))
"""


@functools.cache
def _import_each_module():
    """``{module: traceback or None}``: each module imported in a fresh copy of an interpreter.

    The copies are forked from one interpreter that has loaded only the other
    libraries the package imports at module level (numpy, astropy, ...), never
    the package itself, so each module starts from none of the package's
    modules loaded, for a few milliseconds instead of one interpreter start
    per module. Run from an empty directory, so the installed package, not the
    source tree, is imported.
    """
    # no thread pools in the parent: forking a threaded process can deadlock the child
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.run([sys.executable, "-c", _IMPORT_EACH,
                               json.dumps(_module_level_libraries()), json.dumps(sorted(MODULES))],
                              check=False, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("module", sorted(MODULES))
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork; the slow test below covers it")
def test_module_imports_on_its_own(module):
    error = _import_each_module()[module]
    assert error is None, f"import {module} failed on its own:\n{error}"


@pytest.mark.slow  # one interpreter start per module: ~0.5 s each
def test_each_module_imports_in_a_new_interpreter(tmp_path):
    # the strict form of the test above: nothing at all loaded before the module
    failures = {}
    for module in sorted(MODULES):
        proc = subprocess.run([sys.executable, "-c", f"import {module}"], check=False,
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        if proc.returncode:
            failures[module] = proc.stderr
    assert not failures, "\n".join(f"import {name} failed:\n{error}"
                                   for name, error in failures.items())


@pytest.mark.parametrize("module", [PACKAGE, f"{PACKAGE}.acquire"])
def test_import_does_not_load_torch(module, tmp_path):
    code = (f"import sys, {module}\n"
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"import {module} loads {proc.stdout.strip()}"
