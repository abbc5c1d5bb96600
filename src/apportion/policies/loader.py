"""Import a seed-format policy class and check its contract (CONTRACTS §3).

Uploaded code is imported only inside a sandbox worker process (``sandbox_worker``), never in
the server; built-ins and operator-trusted ``--policy-dir`` policies may use this in-process.
Each policy is imported under a unique module name chosen by the caller (never ``function``, the
seed's name, which let one policy overwrite another), so two policies that both live in a
``function.py`` stay distinct. ``code/`` is at the front of ``sys.path`` only while the module
runs its top level; helper modules next to ``function.py`` can be imported relatively
(``from . import helper``, which stays importable later) or absolutely at the top level
(``import helper``; such top-level helpers are then dropped from ``sys.modules`` so another
policy's ``helper.py`` cannot collide with them).
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apportion.errors import InvalidRequest

CLASS_NAME = "AIOSv1PolicyRule"
_INIT = "__init__(self, rule_id, settings, parameters)"
_EVAL = "eval(self, parameters, input_data, context)"
_MANAGEMENT = "management(self, action, data)"


@dataclass(frozen=True)
class PolicySignature:
    """What :func:`check_policy_class` learned: whether ``management`` exists."""

    has_management: bool


def _callable_with(func: Callable[..., Any], nargs: int) -> tuple[bool, str]:
    """Whether ``func`` accepts ``nargs`` positional arguments, and its signature as text."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return False, "(unknown signature)"
    try:
        sig.bind(*([None] * nargs))
    except TypeError:
        return False, str(sig)
    return True, str(sig)


def _init_text(cls: type) -> str:
    """The constructor's signature as the author wrote it (inspect leaves out ``self``)."""
    try:
        params = [str(p) for p in inspect.signature(cls).parameters.values()]
    except (TypeError, ValueError):
        return "(unknown signature)"
    return "(" + ", ".join(["self", *params]) + ")"


def _method_arity_ok(cls: type, name: str, nargs: int) -> tuple[bool, str] | None:
    """Check method ``name`` of ``cls`` takes ``nargs`` arguments after ``self``; None if absent."""
    try:
        raw = inspect.getattr_static(cls, name)
    except AttributeError:
        return None
    if raw is None:
        return None
    if isinstance(raw, staticmethod):
        return _callable_with(raw.__func__, nargs)
    if isinstance(raw, classmethod):
        return _callable_with(getattr(cls, name), nargs)
    if inspect.isfunction(raw):
        return _callable_with(raw, nargs + 1)  # plain function: self comes first
    if callable(raw):
        return _callable_with(raw, nargs)
    return False, f"(not callable: {type(raw).__name__})"


def check_policy_class(cls: type, *, where: str) -> PolicySignature:
    """Check ``cls`` against the seed contract by ``inspect.signature``.

    Called by :func:`load_policy_class` and by anything that registers a policy class (built-ins).
    ``__init__`` must take ``(rule_id, settings, parameters)``, ``eval`` must be callable with
    ``(parameters, input_data, context)`` (extra parameters with defaults are fine), and
    ``management(action, data)`` is optional. ``where`` names the code in messages (a path or a
    URI). Raises :class:`InvalidRequest` (``path="code"``) naming the class, the method and the
    signature it should have.
    """
    name = getattr(cls, "__name__", repr(cls))
    if not inspect.isclass(cls):
        raise InvalidRequest(
            f"{where}: {name} is not a class; define class {CLASS_NAME}", path="code"
        )
    ok, sig = _callable_with(cls, 3)
    if not ok:
        sig = _init_text(cls)
        raise InvalidRequest(
            f"{where}: {name}.__init__ has signature {sig}; it must be {_INIT}", path="code"
        )
    checked = _method_arity_ok(cls, "eval", 3)
    if checked is None:
        raise InvalidRequest(f"{where}: {name} has no eval method; define {_EVAL}", path="code")
    if not checked[0]:
        raise InvalidRequest(
            f"{where}: {name}.eval has signature {checked[1]}; it must be {_EVAL}", path="code"
        )
    management = _method_arity_ok(cls, "management", 2)
    if management is not None and not management[0]:
        raise InvalidRequest(
            f"{where}: {name}.management has signature {management[1]}; it must be {_MANAGEMENT} "
            "(or leave it out)",
            path="code",
        )
    return PolicySignature(has_management=management is not None)


def find_function_py(code_dir: Path) -> Path:
    """``code_dir/code/function.py``, else ``code_dir/function.py``; InvalidRequest if neither."""
    for candidate in (code_dir / "code" / "function.py", code_dir / "function.py"):
        if candidate.is_file():
            return candidate
    raise InvalidRequest(
        f"policy code at {code_dir} has no code/function.py; put class {CLASS_NAME} there",
        path="code",
    )


def _import(path: Path, module_name: str) -> Any:
    code = path.parent
    spec = importlib.util.spec_from_file_location(
        module_name, path, submodule_search_locations=[str(code)]
    )
    if spec is None or spec.loader is None:  # pragma: no cover - a .py path always has a loader
        raise InvalidRequest(f"cannot import {path}", path="code")
    module = importlib.util.module_from_spec(spec)
    before = set(sys.modules)
    sys.modules[module_name] = module
    sys.path.insert(0, str(code))
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(module_name, None)
        for name in [n for n in sys.modules if n.startswith(module_name + ".")]:
            sys.modules.pop(name, None)
        raise InvalidRequest(
            f"importing {path.name} failed: {type(exc).__name__}: {exc}", path="code"
        ) from None
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(code))
        for name in set(sys.modules) - before:
            file = getattr(sys.modules.get(name), "__file__", None) or ""
            own = name == module_name or name.startswith(module_name + ".")
            if not own and file and Path(file).is_relative_to(code):
                del sys.modules[name]
    return module


def load_policy_class(code_dir: Path, *, module_name: str, class_name: str = CLASS_NAME) -> type:
    """Import ``code_dir/code/function.py`` (or ``code_dir/function.py``) and return its class.

    Called by the sandbox worker when a policy is first used, and for trusted in-process
    policies. ``module_name`` must be unique in the process and never ``function``; the module
    stays in ``sys.modules`` under it. The class is checked with :func:`check_policy_class`.
    Raises :class:`InvalidRequest` (``path="code"``) with the exception text on a SyntaxError,
    ImportError or any error while the module runs, or when the class is missing or malformed;
    :class:`ValueError` for a bad ``module_name`` (a caller bug).
    """
    if module_name == "function" or not all(p.isidentifier() for p in module_name.split(".")):
        raise ValueError(f"module name {module_name!r} must be a unique identifier, not 'function'")
    if module_name in sys.modules:
        raise ValueError(f"module name {module_name!r} is already in use")
    path = find_function_py(code_dir)
    module = _import(path, module_name)
    cls = getattr(module, class_name, None)
    if not inspect.isclass(cls):
        sys.modules.pop(module_name, None)
        what = "defines no" if cls is None else "has a non-class"
        raise InvalidRequest(
            f"{path.name} {what} {class_name}; define class {class_name} with {_INIT} and {_EVAL}",
            path="code",
        )
    try:
        check_policy_class(cls, where=f"{path.parent.name}/{path.name}")
    except InvalidRequest:
        sys.modules.pop(module_name, None)
        raise
    return cls
