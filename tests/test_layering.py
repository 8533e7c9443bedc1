"""The package's layers hold: no module imports one above it, and the
command reaches nothing past the public API (pure logic: parses the source,
imports nothing of btrfsx's).

The import graph is read from every module of ``btrfsx`` with ``ast`` (the
compiled modules' ``.pyx``/``.pxd`` sources by their import lines), every
import counted, those inside functions and under ``TYPE_CHECKING`` too: a
lazy import is still a dependency.  ``from btrfsx import X`` is an edge to
the module ``btrfsx.X`` where there is one, else to the package itself,
whose ``__init__`` re-exports the driver: that is why it sits above the
driver, and why a lower module must import the module that defines a name,
never the package.

LAYERS lists every module, lowest first.  A module may import modules of
its own layer or of lower ones.  A new module must be given a layer here.

The command's rule: ``btrfsx/cli.py`` and ``btrfsx/demo.py`` import from
``btrfsx`` only what a user of the package could, that is the names of
``btrfsx.__all__`` and the public modules of PUBLIC_MODULES, and of those
only the names of their ``__all__``.  A public module is one that documents
itself as API for users and declares ``__all__``; the rest (``_ioctl``,
``store``, ``quota``, ``subvolume``, ``archive``, ...) is reached through
:class:`btrfsx.Driver`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "btrfsx"

#: Lowest first: (name, modules).
LAYERS: list[tuple[str, set[str]]] = [
    ("mechanism", {"btrfsx._uapi", "btrfsx._ioctl", "btrfsx._version", "btrfsx._proc", "btrfsx._fd"}),
    ("pure logic", {"btrfsx.units", "btrfsx.options", "btrfsx.idmap", "btrfsx.errors"}),
    ("policy", {"btrfsx.subvolume", "btrfsx.quota", "btrfsx.store", "btrfsx.mounts"}),
    ("archive", {"btrfsx.archive", "btrfsx.archive._tar", "btrfsx.archive.tarread", "btrfsx.archive.changes",
                 "btrfsx.archive.export", "btrfsx.archive.apply", "btrfsx.archive.native"}),
    ("transport", {"btrfsx.transport"}),
    ("driver", {"btrfsx.driver"}),
    ("composed of drivers", {"btrfsx.template"}),
    ("package", {"btrfsx"}),
    ("on the public API", {"btrfsx.oci", "btrfsx.loopback", "btrfsx.testing"}),
    ("demo", {"btrfsx.demo"}),
    ("command", {"btrfsx.cli", "btrfsx.__main__"}),
]

#: Upward edges the code has for now: (importer, imported) -> why.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}

#: The modules that may use the ioctl layer: those that own a policy over it
#: (subvolumes, quotas, the store's layout, mounts, diffs, send streams).
#: The driver composes them; what is above it uses the driver.
IOCTL_USERS = {"btrfsx.subvolume", "btrfsx.quota", "btrfsx.store", "btrfsx.mounts", "btrfsx.transport",
               "btrfsx.archive.apply", "btrfsx.archive.native", "btrfsx.archive.changes", "btrfsx.archive.export"}
#: Modules that still use it, and why: what is left to move.
IOCTL_EXCEPTIONS: dict[str, str] = {}

#: Modules the command may import as a whole (see the module docstring).
PUBLIC_MODULES = {"btrfsx.loopback", "btrfsx.oci", "btrfsx.units", "btrfsx.testing", "btrfsx.template",
                  "btrfsx.demo"}
#: The modules held to the public API.
COMMAND = ["btrfsx.cli", "btrfsx.demo"]

_CYTHON_IMPORT = re.compile(r"^\s*(?:from\s+(btrfsx[\w.]*)\s+c?import\b|c?import\s+(btrfsx[\w.]*))", re.M)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_sources() -> dict[str, Path]:
    """Every module of the package by name; a compiled one by its Cython source."""
    found: dict[str, Path] = {}
    for pattern in ("*.py", "*.pyx", "*.pxd"):
        for path in sorted(PACKAGE.rglob(pattern)):
            if "__pycache__" not in path.parts:
                found.setdefault(module_name(path), path)  # a .py over a .pyx of the same name
    return found


def imports_of(name: str, source: str, is_package: bool, modules: set[str]) -> list[tuple[int, str, str | None]]:
    """``(line, module, imported name or None)`` for every import of a btrfsx
    module in the Python ``source`` of module ``name``."""
    out: list[tuple[int, str, str | None]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, None) for a in node.names if a.name.split(".")[0] == "btrfsx"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "btrfsx":
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                # a submodule imported by name is that module, not its package
                out.append((node.lineno, submodule, None) if submodule in modules
                           else (node.lineno, target, alias.name))
    return out


def import_graph(overrides: dict[str, str] | None = None) -> dict[str, list[tuple[int, str, str | None]]]:
    """Every module's btrfsx imports; ``overrides`` replaces modules' sources."""
    sources = package_sources()
    modules = set(sources)
    graph = {}
    for name, path in sources.items():
        source = (overrides or {}).get(name) or path.read_text()
        if path.suffix == ".py":
            graph[name] = imports_of(name, source, path.name == "__init__.py", modules)
        else:
            graph[name] = [(source.count("\n", 0, m.start()) + 1, m.group(1) or m.group(2), None)
                           for m in _CYTHON_IMPORT.finditer(source)]
    return graph


def layer_of() -> dict[str, int]:
    return {module: i for i, (_, modules) in enumerate(LAYERS) for module in modules}


def upward_imports(graph) -> list[str]:
    level = layer_of()
    found = []
    for importer, edges in sorted(graph.items()):
        for line, imported, _ in edges:
            if imported not in level:
                found.append(f"{importer}:{line} imports {imported}, which is no module of the package")
            elif level[imported] > level[importer] and (importer, imported) not in KNOWN_EXCEPTIONS:
                found.append(f"{importer}:{line} imports {imported} (layer {LAYERS[level[imported]][0]!r}) "
                             f"from below it (layer {LAYERS[level[importer]][0]!r})")
    return found


def test_every_module_has_a_layer():
    modules = set(package_sources())
    listed = set(layer_of())
    assert sorted(modules - listed) == [], "modules to give a layer in LAYERS"
    assert sorted(listed - modules) == [], "modules in LAYERS that the package no longer has"
    assert sum(len(m) for _, m in LAYERS) == len(listed), "a module listed in two layers"


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports(import_graph()) == []


def test_known_exceptions_are_still_needed():
    edges = {(importer, imported) for importer, e in import_graph().items() for _, imported, _ in e}
    assert sorted(set(KNOWN_EXCEPTIONS) - edges) == []


@pytest.mark.parametrize("line", ["from btrfsx import __version__",          # the package, as driver.py did
                                  "from btrfsx.oci import export_oci",       # a module above it
                                  "def f():\n    from btrfsx import cli"])   # a lazy one counts too
def test_an_upward_import_is_caught(line):
    source = (PACKAGE / "store.py").read_text() + "\n" + line + "\n"
    found = upward_imports(import_graph({"btrfsx.store": source}))
    assert len(found) == 1 and found[0].startswith("btrfsx.store:"), found


def ioctl_users(graph) -> list[str]:
    """``module:line`` of every import of btrfsx._ioctl by a module not in IOCTL_USERS."""
    return [f"{importer}:{line}" for importer, edges in graph.items() for line, imported, _ in edges
            if imported == "btrfsx._ioctl" and importer not in IOCTL_USERS | set(IOCTL_EXCEPTIONS)
            and not importer.startswith("btrfsx._")]


def test_only_the_policy_modules_use_the_ioctl_layer():
    assert ioctl_users(import_graph()) == []


def test_a_module_reaching_for_an_ioctl_is_caught():
    source = (PACKAGE / "template.py").read_text() + "\nfrom btrfsx import _ioctl\n"
    assert ioctl_users(import_graph({"btrfsx.template": source})) != []


def test_ioctl_exceptions_are_still_needed():
    graph = import_graph()
    assert [m for m in IOCTL_EXCEPTIONS if not any(i == "btrfsx._ioctl" for _, i, _ in graph[m])] == []


def _declared_all(path: Path) -> set[str]:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError(f"{path} declares no __all__")


def reaches_past_the_public_api(name: str, source: str) -> list[str]:
    sources = package_sources()
    exported = _declared_all(PACKAGE / "__init__.py")
    found = []
    for line, module, imported in imports_of(name, source, False, set(sources)):
        if module == "btrfsx":
            ok = imported is None or imported in exported
            what = f"btrfsx.{imported}" if imported else "btrfsx"
        else:
            ok = module in PUBLIC_MODULES and module != name and (
                imported is None or imported in _declared_all(sources[module]))
            what = f"{module}.{imported}" if imported else module
        if not ok:
            found.append(f"{name}:{line} imports {what}, which is not public")
    tree = ast.parse(source)
    if any(isinstance(n, ast.Import) and any(a.name == "btrfsx" and a.asname is None for a in n.names)
           for n in ast.walk(tree)):
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "btrfsx":
                if node.attr not in exported and f"btrfsx.{node.attr}" not in PUBLIC_MODULES:
                    found.append(f"{name}:{node.lineno} uses btrfsx.{node.attr}, which is not public")
    return found


@pytest.mark.parametrize("name", COMMAND)
def test_the_command_uses_only_the_public_api(name):
    path = package_sources()[name]
    assert reaches_past_the_public_api(name, path.read_text()) == []


@pytest.mark.parametrize("line", ["from btrfsx import _ioctl", "from btrfsx.store import pid_alive",
                                  "from btrfsx.loopback import _run", "import btrfsx\nbtrfsx.store.STATE"])
def test_reaching_past_the_public_api_is_caught(line):
    source = (PACKAGE / "cli.py").read_text() + "\n" + line + "\n"
    assert len(reaches_past_the_public_api("btrfsx.cli", source)) == 1
