"""Loading seed-format policy classes and checking their signatures."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

import pytest

from apportion.errors import InvalidRequest
from apportion.policies.loader import check_policy_class, load_policy_class

POLICIES = Path(__file__).parent / "policies"
_names = itertools.count()


def unique() -> str:
    return f"test_loader_policy_{next(_names)}"


def refused(code_dir: Path) -> str:
    with pytest.raises(InvalidRequest) as caught:
        load_policy_class(code_dir, module_name=unique())
    assert caught.value.details["path"] == "code"
    return caught.value.message


def write_policy(tmp_path: Path, source: str) -> Path:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "function.py").write_text(source)
    return tmp_path


def test_good_class_loads_and_evaluates() -> None:
    name = unique()
    cls = load_policy_class(POLICIES / "alpha", module_name=name)
    assert cls.__name__ == "AIOSv1PolicyRule"
    assert cls.__module__ == name
    assert cls("r", {}, {}).eval({}, {}, {}) == {"name": "alpha", "helper": "alpha helper"}


def test_two_function_py_policies_side_by_side_stay_distinct() -> None:
    path_before = list(sys.path)
    alpha = load_policy_class(POLICIES / "alpha", module_name=unique())
    beta = load_policy_class(POLICIES / "beta", module_name=unique())
    assert alpha is not beta
    # alpha imports its helper relatively, beta absolutely; neither leaks into the other
    assert alpha("r", {}, {}).eval({}, {}, {}) == {"name": "alpha", "helper": "alpha helper"}
    assert beta("r", {}, {}).eval({}, {}, {}) == {"name": "beta", "helper": "beta helper"}
    assert "function" not in sys.modules
    assert "helper" not in sys.modules  # beta's top-level helper was not left behind
    assert sys.path == path_before


def test_function_py_directly_in_the_dir_is_found(tmp_path: Path) -> None:
    source = (POLICIES / "alpha" / "code" / "function.py").read_text().replace("from . ", "# ")
    (tmp_path / "function.py").write_text(source.replace("helper.WHO", "'none'"))
    cls = load_policy_class(tmp_path, module_name=unique())
    assert cls("r", {}, {}).eval({}, {}, {}) == {"name": "alpha", "helper": "none"}


@pytest.mark.parametrize(
    ("fixture", "words"),
    [
        ("bad_init", ["AIOSv1PolicyRule.__init__", "(self, settings)", "rule_id, settings"]),
        ("no_eval", ["has no eval method", "eval(self, parameters, input_data, context)"]),
        ("bad_eval", ["AIOSv1PolicyRule.eval", "(self, input_data)", "parameters, input_data"]),
    ],
)
def test_wrong_signatures_are_refused(fixture: str, words: list[str]) -> None:
    message = refused(POLICIES / fixture)
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("class AIOSv1PolicyRule:\n    def eval(self, a, b, c)\n", ["SyntaxError"]),
        ("import apportion_no_such_module_xyz\n", ["ModuleNotFoundError", "no_such_module"]),
        ("raise RuntimeError('boom at import')\n", ["RuntimeError", "boom at import"]),
        ("import sys\nsys.exit(4)\n", ["SystemExit"]),
        ("class Other:\n    pass\n", ["defines no AIOSv1PolicyRule"]),
        ("AIOSv1PolicyRule = 3\n", ["non-class AIOSv1PolicyRule"]),
    ],
)
def test_broken_modules_are_refused(tmp_path: Path, source: str, words: list[str]) -> None:
    modules_before = set(sys.modules)
    message = refused(write_policy(tmp_path, source))
    for word in words:
        assert word in message
    assert not {m for m in set(sys.modules) - modules_before if "test_loader_policy" in m}


def test_missing_function_py_is_refused(tmp_path: Path) -> None:
    assert "has no code/function.py" in refused(tmp_path)


@pytest.mark.parametrize("name", ["function", "not-an-identifier", ""])
def test_bad_module_names_are_caller_bugs(name: str) -> None:
    with pytest.raises(ValueError, match="module name"):
        load_policy_class(POLICIES / "alpha", module_name=name)


def test_a_module_name_in_use_is_refused() -> None:
    name = unique()
    load_policy_class(POLICIES / "alpha", module_name=name)
    with pytest.raises(ValueError, match="already in use"):
        load_policy_class(POLICIES / "beta", module_name=name)


class Plain:
    def __init__(self, rule_id: str, settings: dict[str, Any], parameters: Any) -> None:
        pass

    def eval(self, parameters: Any, input_data: Any, context: Any) -> Any:
        return {}


class WithManagement(Plain):
    def management(self, action: str, data: Any) -> Any:
        return {}


class StaticEval(Plain):
    @staticmethod
    def eval(parameters: Any, input_data: Any, context: Any) -> Any:  # type: ignore[override]
        return {}


class DefaultedExtras(Plain):
    def __init__(self, rule_id: str, settings: Any, parameters: Any, debug: bool = False) -> None:
        pass

    def eval(self, parameters: Any, input_data: Any, context: Any = None, *, k: int = 1) -> Any:
        return {}


class VarArgs:
    def __init__(self, *args: Any) -> None:
        pass

    def eval(self, *args: Any, **kwargs: Any) -> Any:
        return {}


class RequiredExtra(Plain):
    def eval(self, parameters: Any, input_data: Any, context: Any, extra: Any) -> Any:  # type: ignore[override]
        return {}


class BadManagement(Plain):
    def management(self, action: str) -> Any:
        return {}


class NoInit:
    def eval(self, parameters: Any, input_data: Any, context: Any) -> Any:
        return {}


class EvalNotCallable(Plain):
    eval = 3  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("cls", "has_management"),
    [
        (Plain, False),
        (WithManagement, True),
        (StaticEval, False),
        (DefaultedExtras, False),
        (VarArgs, False),
    ],
)
def test_check_accepts_the_seed_shapes(cls: type, has_management: bool) -> None:
    assert check_policy_class(cls, where="t").has_management is has_management


@pytest.mark.parametrize(
    ("cls", "words"),
    [
        (RequiredExtra, "RequiredExtra.eval has signature"),
        (BadManagement, "BadManagement.management has signature (self, action:"),
        (NoInit, "NoInit.__init__ has signature"),
        (EvalNotCallable, "not callable"),
    ],
)
def test_check_refuses_other_shapes(cls: type, words: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_policy_class(cls, where="uploaded.py")
    assert words in caught.value.message
    assert caught.value.message.startswith("uploaded.py: ")
    assert caught.value.details["path"] == "code"
