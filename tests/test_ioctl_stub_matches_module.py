"""The type stub btrfsx/_ioctl.pyi against the compiled module (no btrfs needed).

The stub is written by hand, so these keep it from drifting: every public name
of the module is declared and every declared name exists, each function's
parameters (names, kinds, literal defaults) are the compiled function's, the
NamedTuple classes have the result types' fields, and the TreeSearch keywords
are the ones its constructor accepts.
"""

import ast
import inspect
import re
import types
from pathlib import Path

import pytest

from btrfsx import _ioctl

STUB_PATH = Path(_ioctl.__file__).with_name("_ioctl.pyi")
STUB = ast.parse(STUB_PATH.read_text(), filename=str(STUB_PATH))

P = inspect.Parameter


def _is_imported(obj) -> bool:
    """Modules, and functions defined elsewhere (``namedtuple``), that the .pyx imports."""
    if isinstance(obj, types.ModuleType):
        return True
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return getattr(obj, "__module__", _ioctl.__name__) != _ioctl.__name__
    return False


def module_public_names() -> set[str]:
    return {n for n in dir(_ioctl) if not n.startswith("_") and not _is_imported(getattr(_ioctl, n))}


def stub_declarations() -> dict[str, ast.AST]:
    """Public top-level names the stub defines (its imports are not declarations)."""
    out: dict[str, ast.AST] = {}
    for node in STUB.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names = [node.target.id]
        elif isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        else:
            continue
        for name in names:
            if not name.startswith("_"):
                out[name] = node
    return out


def stub_class(name: str) -> ast.ClassDef:
    for node in STUB.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise LookupError(name)


def _is_namedtuple(node: ast.ClassDef) -> bool:
    return any(isinstance(b, ast.Name) and b.id == "NamedTuple" for b in node.bases)


NO_DEFAULT = object()  # the parameter has no default
UNKNOWN_DEFAULT = object()  # it has one, but not as a literal (``...``, or a C name)


def _literal(node):
    """A stub default as a value, NO_DEFAULT, or UNKNOWN_DEFAULT for ``...``."""
    if node is None:
        return NO_DEFAULT
    if isinstance(node, ast.Constant) and node.value is Ellipsis:
        return UNKNOWN_DEFAULT
    try:
        return ast.literal_eval(node)
    except ValueError:
        return UNKNOWN_DEFAULT


def stub_params(fn: ast.FunctionDef, skip_self: bool = False) -> list[tuple[str, object, object]]:
    """``[(name, kind, default), ...]`` of a stub function, in order."""
    a = fn.args
    out = []
    positional = a.posonlyargs + a.args
    pos_defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    for i, (arg, default) in enumerate(zip(positional, pos_defaults)):
        kind = P.POSITIONAL_ONLY if i < len(a.posonlyargs) else P.POSITIONAL_OR_KEYWORD
        out.append((arg.arg, kind, _literal(default)))
    if a.vararg:
        out.append((a.vararg.arg, P.VAR_POSITIONAL, NO_DEFAULT))
    for arg, default in zip(a.kwonlyargs, a.kw_defaults):
        out.append((arg.arg, P.KEYWORD_ONLY, _literal(default)))
    if a.kwarg:
        out.append((a.kwarg.arg, P.VAR_KEYWORD, NO_DEFAULT))
    if skip_self:
        out = out[1:]
    return out


def _split_top_level(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def doc_params(func) -> list[tuple[str, object, bool]]:
    """``[(name, kind, has_default), ...]`` from the signature Cython embeds as the first
    line of ``__doc__`` (``embedsignature=True``), e.g.
    ``snapshot(int src_fd, int dst_dirfd, name, bool readonly=False, *, qgroups=(), ...)``."""
    first = (func.__doc__ or "").lstrip().splitlines()[0] if func.__doc__ else ""
    m = re.match(rf"^{re.escape(func.__name__)}\((.*)\)(?:\s*->.*)?$", first.strip())
    assert m, f"{func.__name__}: no embedded signature in __doc__: {first!r}"
    out: list[tuple[str, object, bool]] = []
    kind = P.POSITIONAL_OR_KEYWORD
    body = m.group(1).strip()
    for part in (_split_top_level(body, ",") if body else []):
        decl, *default = _split_top_level(part, "=")
        decl = decl.strip()
        decl = re.sub(r"\s+(not|or)\s+None$", "", decl)
        if decl == "*":
            kind = P.KEYWORD_ONLY
            continue
        if decl == "/":
            out = [(n, P.POSITIONAL_ONLY, d) for n, _, d in out]
            continue
        if decl.startswith("**"):
            out.append((decl[2:].split()[-1], P.VAR_KEYWORD, False))
            continue
        if decl.startswith("*"):
            out.append((decl[1:].split()[-1], P.VAR_POSITIONAL, False))
            kind = P.KEYWORD_ONLY
            continue
        out.append((decl.split()[-1].lstrip("*&"), kind, bool(default)))
    return out


def compiled_params(func) -> tuple[list[tuple[str, object, object]], bool]:
    """``([(name, kind, default), ...], from_inspect)`` of a compiled function:
    inspect.signature where the binding cyfunction supports it, else the
    embedded signature (whose defaults, C names such as ``AT_FDCWD``, are not
    compared)."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return [(n, k, UNKNOWN_DEFAULT if d else NO_DEFAULT) for n, k, d in doc_params(func)], False
    return [
        (p.name, p.kind, NO_DEFAULT if p.default is P.empty else p.default)
        for p in sig.parameters.values()
    ], True


STUB_DECLS = stub_declarations()
STUB_FUNCTIONS = sorted(n for n, node in STUB_DECLS.items() if isinstance(node, ast.FunctionDef))
STUB_NAMEDTUPLES = sorted(
    n for n, node in STUB_DECLS.items() if isinstance(node, ast.ClassDef) and _is_namedtuple(node))


def test_every_public_name_is_in_the_stub():
    missing = module_public_names() - set(STUB_DECLS)
    assert not missing, f"public names of btrfsx._ioctl missing from {STUB_PATH.name}: {sorted(missing)}"


def test_every_stub_name_exists_in_the_module():
    extra = sorted(n for n in STUB_DECLS if not hasattr(_ioctl, n))
    assert not extra, f"{STUB_PATH.name} declares names btrfsx._ioctl does not have: {extra}"


def test_stub_kinds_match_the_module():
    for name, node in STUB_DECLS.items():
        obj = getattr(_ioctl, name)
        if isinstance(node, ast.FunctionDef):
            assert callable(obj) and not isinstance(obj, type), name
        elif isinstance(node, ast.ClassDef):
            assert isinstance(obj, type), name
        else:
            assert type(obj) is int, f"{name} is declared Final[int] but is {obj!r}"


def test_every_function_is_checked():
    """The comparison below covers every def function of the module."""
    functions = {n for n in module_public_names()
                 if callable(getattr(_ioctl, n)) and not isinstance(getattr(_ioctl, n), type)}
    assert functions == set(STUB_FUNCTIONS)


@pytest.mark.parametrize("name", STUB_FUNCTIONS)
def test_function_signature(name):
    func = getattr(_ioctl, name)
    stub = stub_params(STUB_DECLS[name])
    compiled, from_inspect = compiled_params(func)
    assert [(n, k) for n, k, _ in stub] == [(n, k) for n, k, _ in compiled], name
    for (pname, _, sdef), (_, _, cdef) in zip(stub, compiled):
        assert (sdef is NO_DEFAULT) == (cdef is NO_DEFAULT), (
            f"{name}({pname}): has a default in only one of the stub and the module")
        if from_inspect and sdef is not NO_DEFAULT and sdef is not UNKNOWN_DEFAULT:
            assert type(sdef) is type(cdef) and sdef == cdef, (
                f"{name}({pname}): stub default {sdef!r}, module {cdef!r}")


@pytest.mark.parametrize("name", STUB_FUNCTIONS)
def test_embedded_signature_fallback_agrees(name):
    """The __doc__ fallback gives what inspect gives, so it can stand in for it."""
    func = getattr(_ioctl, name)
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        pytest.skip("inspect.signature does not work on this build")
    assert doc_params(func) == [
        (p.name, p.kind, p.default is not P.empty) for p in sig.parameters.values()]


@pytest.mark.parametrize("name", STUB_NAMEDTUPLES)
def test_namedtuple_fields(name):
    fields = [n.target.id for n in stub_class(name).body
              if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
    assert tuple(fields) == getattr(_ioctl, name)._fields


@pytest.mark.parametrize("name", ["SearchItem", "TreeSearch"])
def test_class_members_exist(name):
    cls = getattr(_ioctl, name)
    for node in stub_class(name).body:
        if isinstance(node, ast.FunctionDef) and node.name not in ("__new__", "__init__"):
            assert hasattr(cls, node.name), f"{name}.{node.name}"


def test_tree_search_keywords():
    """TreeSearch's constructor takes (fd, tree_id) and exactly the stub's
    keyword-only parameters; tree_search's ``**key`` TypedDict lists the same."""
    # __cinit__ is the type's tp_new, so the stub declares __new__
    new = next(n for n in stub_class("TreeSearch").body
               if isinstance(n, ast.FunctionDef) and n.name == "__new__")
    params = stub_params(new, skip_self=True)
    assert [(n, k) for n, k, _ in params if k is not P.KEYWORD_ONLY] == [
        ("fd", P.POSITIONAL_OR_KEYWORD), ("tree_id", P.POSITIONAL_OR_KEYWORD)]
    keywords = {n: d for n, k, d in params if k is P.KEYWORD_ONLY}
    assert "buf_size" in keywords
    search_key = [n.target.id for n in stub_class("_SearchKey").body if isinstance(n, ast.AnnAssign)]
    assert set(search_key) == set(keywords)

    # buf_size is checked before anything else, so fd -1 is never used: a
    # ValueError (not a TypeError) means every keyword was accepted.
    args = {n: d for n, d in keywords.items() if d is not NO_DEFAULT}
    args["buf_size"] = 0
    with pytest.raises(ValueError, match="buf_size"):
        _ioctl.TreeSearch(-1, 0, **args)
    with pytest.raises(ValueError, match="buf_size"):
        _ioctl.TreeSearch(fd=-1, tree_id=0, buf_size=0)
    with pytest.raises(TypeError):
        _ioctl.TreeSearch(-1, 0, no_such_keyword=1, buf_size=0)
    with pytest.raises(TypeError):
        _ioctl.TreeSearch(-1, 0, 0)  # min_objectid is keyword-only
