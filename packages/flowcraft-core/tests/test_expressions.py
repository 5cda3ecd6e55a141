"""Tests for the safe expression language (flowcraft.expressions)."""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

import pytest
from flowcraft.errors import ExpressionError
from flowcraft.expressions import Evaluator, SafeEvaluator, validate_expression
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EVALUATOR = SafeEvaluator()


def run(expression: str, scope: Mapping[str, Any] | None = None) -> Any:
    return EVALUATOR.evaluate(expression, scope or {})


def same(actual: Any, expected: Any) -> bool:
    """Equal and of the same type (so True is not mistaken for 1, 3.0 for 3)."""
    return type(actual) is type(expected) and actual == expected


# --------------------------------------------------------------------------------------
# the language, case by case

NESTED = {"result": {"output": {"count": 5, "items": [1, 2, 3]}}, "status": "ok"}

CASES: list[tuple[str, dict[str, Any], Any]] = [
    # literals
    ("1", {}, 1),
    ("2.5", {}, 2.5),
    ("1e3", {}, 1000.0),
    ("0x1F", {}, 31),
    ("1_000", {}, 1000),
    ("'single'", {}, "single"),
    ('"double"', {}, "double"),
    ("'a' 'b'", {}, "ab"),
    ("r'\\d'", {}, "\\d"),
    ("'''tri\"ple'''", {}, 'tri"ple'),
    ("True", {}, True),
    ("False", {}, False),
    ("None", {}, None),
    ("[1, 'a', None]", {}, [1, "a", None]),
    ("[]", {}, []),
    ("(1, 2)", {}, (1, 2)),
    ("(1,)", {}, (1,)),
    ("{'a': 1, 'b': [2]}", {}, {"a": 1, "b": [2]}),
    ("{}", {}, {}),
    ("{1, 2, 2}", {}, {1, 2}),
    ("{'k': x}", {"x": 3}, {"k": 3}),
    # JavaScript spellings
    ("true", {}, True),
    ("false", {}, False),
    ("null", {}, None),
    ("undefined", {}, None),
    ("true && false", {}, False),
    ("false || 'x'", {}, "x"),
    ("1 && 2", {}, 2),
    ("!true", {}, False),
    ("!x", {"x": 0}, True),
    ("!!x", {"x": 3}, True),
    ("!missing", {}, True),
    ("1 === 1", {}, True),
    ("1 === 2", {}, False),
    ("1 !== 2", {}, True),
    ("x !== null", {"x": 0}, True),
    ("x === undefined", {}, True),
    ("!a == b", {"a": 0, "b": True}, True),  # JS precedence: (!a) == b
    ("!a && b", {"a": 0, "b": 7}, 7),
    ("!(a || b)", {"a": 0, "b": 0}, True),
    ("x?.y", {"x": {"y": 4}}, 4),
    ("x?.y?.z", {"x": None}, None),
    ("x?.[1]", {"x": [5, 6]}, 6),
    ("x?.['k']", {"x": {"k": "v"}}, "v"),
    ("x.true", {"x": {"true": 1}}, 1),  # attribute names are never translated
    ("x.null", {"x": {"null": 2}}, 2),
    ("'a && b || !c === d'", {}, "a && b || !c === d"),
    ('"null" + "true"', {}, "nulltrue"),
    ("'?.x' + \"!==\"", {}, "?.x!=="),
    ("1 # comment === 2\n+ 1", {}, 2),
    ("a\n  and b", {"a": 1, "b": 2}, 2),
    # names
    ("x", {"x": 1}, 1),
    ("missing", {}, None),
    ("missing.deep.er", {}, None),
    ("_outputs", {"_outputs": {"a": 1}}, {"a": 1}),
    ("_private_key", {"_private_key": 9}, 9),
    ("len", {"len": "a scope key"}, "a scope key"),
    # hyphenated ids
    ("fetch-user.status", {"fetch-user": {"status": "ok"}}, "ok"),
    ("fetch-user.status == 'ok'", {"fetch-user": {"status": "ok"}}, True),
    ("a-b", {"a": 5, "b": 2}, 3),
    ("a-b", {"a-b": 100, "a": 5, "b": 2}, 100),
    ("a - b", {"a-b": 100, "a": 5, "b": 2}, 3),
    ("a -b", {"a-b": 100, "a": 5, "b": 2}, 3),
    ("a- b", {"a-b": 100, "a": 5, "b": 2}, 3),
    ("step-2", {"step-2": 7}, 7),
    ("step-2", {"step": 9}, 7),
    ("step-2.output", {"step-2": {"output": "o"}}, "o"),
    ("step-2b", {"step-2b": 1}, 1),
    ("fetch-2nd-user", {"fetch-2nd-user": "u"}, "u"),
    ("x-1if c else 0", {"x": 3, "c": True}, 2),
    ("a-b-c", {"a": 10, "b": 1, "c": 2}, 7),
    ("a-b-c", {"a-b-c": "k"}, "k"),
    ("x*step-2", {"x": 3, "step": 9}, 25),  # Python precedence: (x * step) - 2
    ("x*step-2", {"x": 3, "step-2": 9}, 27),
    ("2*step-2", {"step-2": 5}, 10),
    ("step-2 * 2", {"step-2": 4}, 8),
    ("count-1 > 0", {"count": 1}, False),
    ("n-len(xs)", {"n": 5, "xs": [1, 2]}, 3),
    ("x.a-b", {"x": {"a": 5, "a-b": 1}, "b": 2}, 3),
    ("!fetch-user.done", {"fetch-user": {"done": False}}, True),
    ("-fetch-user.n", {"fetch-user": {"n": 4}}, -4),
    (
        "fetch-user.ok and other-node.ok",
        {"fetch-user": {"ok": 1}, "other": 5, "node": {"ok": 2}},
        3,
    ),
    ("fetch-user.ok and other-node.ok", {"fetch-user": {"ok": 1}, "other-node": {"ok": 2}}, 2),
    ("check-in.status", {"check-in": {"status": "done"}}, "done"),
    ("fetch-user?.status", {"fetch-user": {"status": 1}}, 1),
    ("fetch-user['status']", {"fetch-user": {"status": 2}}, 2),
    ("_outputs['fetch-user'].status", {"_outputs": {"fetch-user": {"status": 3}}}, 3),
    ("'fetch-user'", {"fetch-user": 1}, "fetch-user"),
    # attribute access
    ("a.b", {"a": {"b": 1}}, 1),
    ("a.c", {"a": {"b": 1}}, None),
    ("a.b.c", {"a": {"b": None}}, None),
    ("a.b.c.d", {"a": {"b": {"c": {"d": "deep"}}}}, "deep"),
    ("_outputs.fetch.value", {"_outputs": {"fetch": {"value": 8}}}, 8),
    ("a._meta", {"a": {"_meta": "m"}}, "m"),
    ("result.output.count > 3 and status == 'ok'", NESTED, True),
    ("result.output.items[1]", NESTED, 2),
    ("(x).y", {"x": {"y": 1}}, 1),
    ("[a][0].b", {"a": {"b": 2}}, 2),
    # .length
    ("items.length", {"items": [1, 2, 3]}, 3),
    ("s.length", {"s": "hello"}, 5),
    ("'abc'.length", {}, 3),
    ("(1, 2).length", {}, 2),
    ("d.length", {"d": {"a": 1, "b": 2}}, 2),
    ("d.length", {"d": {"length": "own key"}}, "own key"),
    ("missing.length", {}, None),
    ("result.output.items.length > 2", NESTED, True),
    ("items?.length", {"items": []}, 0),
    # subscripts
    ("a['k']", {"a": {"k": "v"}}, "v"),
    ("a['missing']", {"a": {"k": "v"}}, None),
    ("a[0]", {"a": [10, 20, 30]}, 10),
    ("a[-1]", {"a": [10, 20, 30]}, 30),
    ("a[3]", {"a": [10, 20, 30]}, None),
    ("a[-4]", {"a": [10, 20, 30]}, None),
    ("a[1:3]", {"a": [10, 20, 30]}, [20, 30]),
    ("a[::-1]", {"a": [10, 20, 30]}, [30, 20, 10]),
    ("a[:-1]", {"a": (1, 2, 3)}, (1, 2)),
    ("s[1:]", {"s": "hey"}, "ey"),
    ("s[0]", {"s": "hey"}, "h"),
    ("a[i]", {"a": ["x", "y"], "i": 1}, "y"),
    ("d[k]", {"d": {"z": 26}, "k": "z"}, 26),
    ("d[1]", {"d": {1: "one"}}, "one"),
    ("missing[0]", {}, None),
    ("missing[1:2]", {}, None),
    ("a[0][1]", {"a": [[1, 2]]}, 2),
    ("a['b']['c']", {"a": {"b": {"c": 3}}}, 3),
    # arithmetic
    ("1 + 2", {}, 3),
    ("5 - 7", {}, -2),
    ("3 * 4", {}, 12),
    ("7 / 2", {}, 3.5),
    ("7 // 2", {}, 3),
    ("7 % 3", {}, 1),
    ("-7 % 3", {}, 2),
    ("2 ** 10", {}, 1024),
    ("2 ** -1", {}, 0.5),
    ("2 ** 64", {}, 2**64),
    ("2 ** 0.5 > 1.41", {}, True),
    ("-x", {"x": 4}, -4),
    ("+x", {"x": 4}, 4),
    ("not x", {"x": 4}, False),
    ("not missing", {}, True),
    ("1 + 2 * 3", {}, 7),
    ("(1 + 2) * 3", {}, 9),
    ("'a' + 'b'", {}, "ab"),
    ("[1] + [2]", {}, [1, 2]),
    ("'ab' * 2", {}, "abab"),
    ("3 * 'ab'", {}, "ababab"),
    ("[0] * 3", {}, [0, 0, 0]),
    ("'x' * 0", {}, ""),
    ("len('a' * 100000)", {}, 100000),
    ("(10 ** 5) % 7", {}, 5),
    ("x % 2 == 0", {"x": 4}, True),
    # comparisons
    ("1 < 2", {}, True),
    ("1 < 2 < 3", {}, True),
    ("3 > 2 > 2", {}, False),
    ("1 <= 1 >= 0", {}, True),
    ("1 == 1.0", {}, True),
    ("1 != 1", {}, False),
    ("'a' < 'b'", {}, True),
    ("None < 1", {}, False),
    ("1 >= None", {}, False),
    ("None <= None", {}, False),
    ("missing > 3", {}, False),
    ("missing < 3", {}, False),
    ("missing == None", {}, True),
    ("'a' in ['a', 'b']", {}, True),
    ("'z' not in 'abc'", {}, True),
    ("'k' in d", {"d": {"k": 1}}, True),
    ("'a' in missing", {}, False),
    ("'a' not in missing", {}, True),
    ("missing in 'abc'", {}, False),
    ("x is None", {}, True),
    ("x is not None", {"x": 0}, True),
    ("1 < x < 10", {"x": 5}, True),
    ("1 < x < 10", {"x": 50}, False),
    # boolean logic (Python value semantics)
    ("0 or 'd'", {}, "d"),
    ("1 and 2", {}, 2),
    ("0 and missing.x.y", {}, 0),
    ("'' or None or 3", {}, 3),
    ("1 and 2 and 0 and 4", {}, 0),
    ("0 or '' or []", {}, []),
    ("x > 1 and x < 10 or x == 100", {"x": 100}, True),
    # conditional expression
    ("'yes' if c else 'no'", {"c": 1}, "yes"),
    ("'yes' if c else 'no'", {"c": 0}, "no"),
    ("'yes' if c else 1 / 0", {"c": 1}, "yes"),
    # whitelisted functions
    ("len(items)", {"items": [1, 2]}, 2),
    ("len('abc')", {}, 3),
    ("min(3, 1, 2)", {}, 1),
    ("min([3, 1, 2])", {}, 1),
    ("max(3, 1, 2)", {}, 3),
    ("max([], default=0)", {}, 0),
    ("abs(-4)", {}, 4),
    ("round(2.567, 2)", {}, 2.57),
    ("round(2.5)", {}, 2),
    ("str(5)", {}, "5"),
    ("int('7')", {}, 7),
    ("int(7.9)", {}, 7),
    ("float('1.5')", {}, 1.5),
    ("bool(0)", {}, False),
    ("bool('x')", {}, True),
    ("sum([1, 2, 3])", {}, 6),
    ("sum([1, 2], 10)", {}, 13),
    ("sum([0.5, 0.25])", {}, 0.75),
    ("any([0, 1])", {}, True),
    ("any([])", {}, False),
    ("all([])", {}, True),
    ("all([1, 0])", {}, False),
    ("sorted([3, 1, 2])", {}, [1, 2, 3]),
    ("sorted([1, 3, 2], reverse=True)", {}, [3, 2, 1]),
    ("sorted('cab')", {}, ["a", "b", "c"]),
    ("lower('AbC')", {}, "abc"),
    ("upper('AbC')", {}, "ABC"),
    ("lower(missing)", {}, None),
    ("upper(s) == 'OK'", {"s": "ok"}, True),
    ("len(result.output.items) == result.output.items.length", NESTED, True),
]


@pytest.mark.parametrize(("expression", "scope", "expected"), CASES)
def test_language(expression: str, scope: dict[str, Any], expected: Any) -> None:
    actual = run(expression, scope)
    assert same(actual, expected), f"{expression!r} gave {actual!r}, expected {expected!r}"


def test_cases_cover_every_construct() -> None:
    assert len(CASES) > 200


def test_user_functions() -> None:
    evaluator = SafeEvaluator({"double": lambda x: x * 2, "len": lambda x: -1})
    assert evaluator.evaluate("double(21)", {}) == 42
    assert evaluator.evaluate("double(x) + 1", {"x": 2}) == 5
    assert evaluator.evaluate("len('abc')", {}) == -1  # replaced
    assert evaluator.evaluate("min(1, 2)", {}) == 1  # built-ins stay
    with pytest.raises(ExpressionError, match="calling 'double' is not allowed"):
        SafeEvaluator().compile("double(1)")


@pytest.mark.parametrize("name", ["__x", "not", "a-b", "1a", ""])
def test_user_function_names_are_checked(name: str) -> None:
    with pytest.raises(ValueError, match="invalid expression function name"):
        SafeEvaluator({name: len})


def test_user_functions_must_be_callable() -> None:
    with pytest.raises(TypeError, match="not callable"):
        SafeEvaluator({"f": 3})  # type: ignore[dict-item]


def test_custom_mapping_scopes_work() -> None:
    scope = types.MappingProxyType({"a": types.MappingProxyType({"b": 1}), "a-b": 2})
    assert run("a.b + a-b", scope) == 3
    assert run("a.length", scope) == 1


def test_fetch_user_hyphen_dispatch_switches_with_scope() -> None:
    compiled = EVALUATOR.compile("fetch-user.n * 2")
    assert compiled({"fetch-user": {"n": 4}}) == 8
    assert compiled({"fetch": 10, "user": {"n": 1}}) == 8  # 10 - (1 * 2)
    with pytest.raises(ExpressionError, match="unsupported operand"):
        compiled({})


def test_mixed_hyphen_names_compile_lazily() -> None:
    compiled = EVALUATOR.compile("a-b + c-d + e-f")
    full = {"a-b": 1, "c-d": 10, "e-f": 100}
    parts = {"a": 5, "b": 1, "c": 50, "d": 10, "e": 500, "f": 100}
    assert compiled(full) == 111
    assert compiled(parts) == 444
    assert compiled({**parts, "c-d": 7}) == 4 + 7 + 400
    assert compiled({**parts, "a-b": 0, "e-f": 0}) == 40


def test_hyphen_name_that_only_works_as_a_name() -> None:
    compiled = EVALUATOR.compile("check-in.status")
    assert compiled({"check-in": {"status": "ok"}}) == "ok"
    with pytest.raises(ExpressionError, match="'check-in' not found in scope"):
        compiled({})


# --------------------------------------------------------------------------------------
# rejected at compile time, with a reason naming the construct

COMPILE_ERRORS: list[tuple[str, str]] = [
    ("x.upper()", "method calls"),
    ("foo(1)", "function calls are only allowed to: len, min, max"),
    ("getattr(x, 'y')", "calling 'getattr' is not allowed"),
    ("(x or y)(1)", "only functions named directly"),
    ("().__class__", "attribute '__class__' is not allowed"),
    ("__import__('os')", "name '__import__' is not allowed"),
    ("x['__class__']", "key '__class__' is not allowed"),
    ("lambda: 1", "lambda expressions are not allowed"),
    ("[c for c in x]", "comprehensions are not allowed"),
    ("{c: 1 for c in x}", "comprehensions are not allowed"),
    ("(c for c in x)", "generator expressions are not allowed"),
    ("(y := 1)", "assignment expressions"),
    ("f'{x}'", "f-strings are not allowed"),
    ("await x", "'await' is not allowed"),
    ("[*x]", "unpacking with '*' is not allowed"),
    ("len(*x)", "unpacking arguments with '*'"),
    ("max(**d)", "unpacking keyword arguments with '**'"),
    ("{**d}", "unpacking with '**' is not allowed"),
    ("a & b", "operator '&' is not allowed"),
    ("a | b", "operator '|' is not allowed"),
    ("a ^ b", "operator '^' is not allowed"),
    ("a << 2", "operator '<<' is not allowed"),
    ("a @ b", "operator '@' is not allowed"),
    ("~a", "operator '~' is not allowed"),
    ("1j", "complex numbers are not supported"),
    ("b'x'", "bytes literals are not supported"),
    ("...", "is not supported"),
    ("1 +", "syntax error"),
    ("a = 1", "syntax error"),
    ("import os", "syntax error"),
    ("x; y", "syntax error"),
    ("'unterminated", "syntax error"),
    ("c ? a : b", "syntax error"),
    ("", "expression is empty"),
    ("   ", "expression is empty"),
    ("x" * 2001, "expression is too long"),
    ("-" * 60 + "1", "nested too deeply"),
    ("[" * 60 + "]" * 60, "nested too deeply"),
    ("1" + "+1" * 60, "nested too deeply"),
    ("a" + ".b" * 60, "nested too deeply"),
    ("sorted(x, __key=1)", "name '__key' is not allowed"),
    ("x.__dict__", "attribute '__dict__' is not allowed"),
    ("x.\uff3f\uff3fclass\uff3f\uff3f", "invalid character"),  # fullwidth underscores
]


@pytest.mark.parametrize(("expression", "reason"), COMPILE_ERRORS)
def test_compile_errors(expression: str, reason: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        validate_expression(expression)
    assert reason in caught.value.reason
    assert caught.value.expression == expression
    assert caught.value.is_fatal


def test_compile_error_lists_the_allowed_functions() -> None:
    with pytest.raises(ExpressionError) as caught:
        validate_expression("open('f')")
    assert caught.value.reason == (
        "calling 'open' is not allowed; function calls are only allowed to: len, min, max, "
        "abs, round, str, int, float, bool, sum, any, all, sorted, lower, upper"
    )


def test_non_string_expression() -> None:
    with pytest.raises(ExpressionError, match="must be a string"):
        EVALUATOR.compile(42)  # type: ignore[arg-type]


def test_validate_expression_accepts_valid_expressions() -> None:
    validate_expression("fetch-user.status == 'ok' && !done")  # does not raise


# --------------------------------------------------------------------------------------
# failures while evaluating

RUNTIME_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("1 / 0", {}, "division by zero"),
    ("1 // x", {"x": 0}, "division by zero"),
    ("x % 0", {"x": 1}, "division by zero"),
    ("'a' + 1", {}, "TypeError"),
    ("-'a'", {}, "TypeError"),
    ("x < 'a'", {"x": 1}, "TypeError"),
    ("len(5)", {}, "TypeError"),
    ("x.format", {"x": "text"}, "cannot read 'format' of a str value"),
    ("n.foo", {"n": 5}, "cannot read 'foo' of a int value"),
    ("items.first", {"items": [1]}, "cannot read 'first' of a list value"),
    ("n.length", {"n": 5}, "a int value has no length"),
    ("d[k]", {"d": {}, "k": "__class__"}, "key '__class__' is not allowed"),
    ("a[1.5]", {"a": [1, 2]}, "list indexes must be integers, not float"),
    ("a['x']", {"a": [1, 2]}, "list indexes must be integers, not str"),
    ("n[0]", {"n": 5}, "a int value cannot be indexed"),
    ("n[0:1]", {"n": 5}, "a int value cannot be sliced"),
    ("a[::0]", {"a": [1]}, "slice step cannot be zero"),
    ("a[0:'x']", {"a": [1]}, "slice bounds must be integers"),
    ("d[[1]]", {"d": {}}, "a list cannot be a mapping key"),
    ("'%s' % x", {"x": 1}, "'%' string formatting is not allowed"),
    ("2 ** 'a'", {}, "'**' needs numbers"),
    ("x ** 2", {"x": [1]}, "'**' needs numbers"),
    ("2 ** 65", {}, "exponent 65 is too large"),
    ("9 ** 9 ** 9", {}, "too large"),
    ("((2 ** 64) ** 64) ** 3", {}, "result would be too large"),
    ("1e300 ** 2", {}, "numeric result out of range"),
    ("'a' * 100001", {}, "larger than 100,000"),
    ("[1, 2] * 50001", {}, "larger than 100,000"),
    ("[[1] * 1000] * 1000", {}, "larger than 100,000"),
    ("x * 2", {"x": "a" * 60000}, "larger than 100,000"),
    ("sorted(x, key=f)", {"x": [2, 1], "f": abs}, "key functions are not supported"),
    ("max(x, key=f)", {"x": [2, 1], "f": abs}, "key functions are not supported"),
    ("sum([[1]], [])", {}, "sum() adds numbers only"),
    ("sum(['a'])", {}, "TypeError"),
    ("lower(5)", {}, "lower() needs a string"),
    ("upper([])", {}, "upper() needs a string"),
    ("int('x')", {}, "ValueError"),
    ("min([])", {}, "ValueError"),
    ("{[1]: 2}", {}, "TypeError"),
    ("{[1]}", {}, "TypeError"),
    ("check-in", {}, "'check-in' not found in scope"),
]


@pytest.mark.parametrize(("expression", "scope", "reason"), RUNTIME_ERRORS)
def test_runtime_errors(expression: str, scope: dict[str, Any], reason: str) -> None:
    compiled = EVALUATOR.compile(expression)  # compiles fine
    with pytest.raises(ExpressionError) as caught:
        compiled(scope)
    assert reason in caught.value.reason
    assert caught.value.expression == expression


def test_runtime_error_keeps_the_cause() -> None:
    with pytest.raises(ExpressionError) as caught:
        run("a / b", {"a": 1, "b": 0})
    assert caught.value.reason == "division by zero"
    assert isinstance(caught.value.__cause__, ZeroDivisionError)
    assert str(caught.value) == "expression 'a / b': division by zero"


def test_user_function_failures_are_wrapped() -> None:
    def boom(_: Any) -> None:
        raise RuntimeError("kaput")

    evaluator = SafeEvaluator({"boom": boom})
    with pytest.raises(ExpressionError) as caught:
        evaluator.evaluate("boom(1)", {})
    assert caught.value.reason == "RuntimeError: kaput"
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_bad_scope_is_an_expression_error() -> None:
    with pytest.raises(ExpressionError):
        EVALUATOR.evaluate("x", None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# security corpus: every one must raise ExpressionError, never succeed


class Opaque:
    """An arbitrary Python object in the scope; none of its attributes may be reachable."""

    secret = "s3cr3t"

    def method(self) -> str:
        return self.secret


SECURITY_SCOPE: dict[str, Any] = {
    "x": "text",
    "o": Opaque(),
    "d": {"a": 1},
    "k": "__class__",
    "f": print,
    "items": [1, 2, 3],
    "fn": len,
}

ESCAPES: list[str] = [
    "().__class__",
    "x.__class__",
    "x.__class__.__mro__",
    "[].__class__.__base__.__subclasses__()",
    "''.__class__.__mro__[1].__subclasses__()",
    "().__class__.__bases__[0]",
    "x[0].__class__",
    "x.__init__.__globals__",
    "x.__dict__",
    "x.__doc__",
    "o.__class__",
    "o.secret",
    "o.method",
    "o.method()",
    "__class__",
    "__builtins__",
    "__builtins__['eval']('1')",
    "__loader__",
    "__import__('os')",
    "__import__('os').system('ls')",
    "\uff3f\uff3fimport\uff3f\uff3f('os')",
    "x.\uff3f\uff3fclass\uff3f\uff3f",
    "getattr(x, 'y')",
    "setattr(x, 'y', 1)",
    "open('f')",
    "eval('1')",
    "exec('1')",
    "exec(x)",
    "compile('1', 'f', 'eval')",
    "globals()",
    "locals()",
    "vars()",
    "vars(x)",
    "dir(x)",
    "type(x)",
    "type(x).__subclasses__(x)",
    "print(1)",
    "help()",
    "input()",
    "breakpoint()",
    "f(1)",
    "fn(x)",
    "x.format",
    "x.format()",
    '"{0.__class__}".format(x)',
    "'{}'.format(x)",
    "'%s' % x",
    "'%(a)s' % d",
    "'%999999999d' % 1",
    "x.mro()",
    "x.upper()",
    "str.mro()",
    "str(x).join(['a'])",
    "d.get('a')",
    "d.keys()",
    "x.__getattribute__('y')",
    "len.__self__",
    "len.__call__",
    "x.length.__class__",
    "x.func_globals",
    "x.gi_frame",
    "x.f_locals",
    "x.encode",
    "items.append",
    "items.pop()",
    "x['__class__']",
    "x['__globals__']",
    "d['__class__']",
    "d[k]",
    "d['_' + '_class__']",
    'f"{x}"',
    "f'{x.__class__}'",
    "rf'{x}'",
    "(lambda: 1)()",
    "lambda: 1",
    "[c for c in ()]",
    "{c: 1 for c in x}",
    "(c for c in x)",
    "(y := 1)",
    "[*x]",
    "len(*x)",
    "max(**d)",
    "sorted(items, key=fn)",
    "min(items, key=f)",
    "1 if x else __import__('os')",
    "x;__import__('os')",
    "x\n__import__('os')",
    "import os",
    "os.system('ls')",
    "yield x",
    "await x",
    "x @ x",
    "~x",
    "9**9**9",
    "2**10000",
    "((2**64)**64)**64",
    "'a'*10**10",
    "[1]*10**9",
    "[[0]*1000]*1000",
    "str([[1]*9999]*9999)",
    "('a'*99999)*2",
    "x.__len__()",
    "d.__class__",
    "d.__getitem__",
]


def test_security_corpus_is_large() -> None:
    assert len(ESCAPES) >= 40
    assert len(set(ESCAPES)) == len(ESCAPES)


@pytest.mark.parametrize("expression", ESCAPES)
def test_security_corpus(expression: str) -> None:
    with pytest.raises(ExpressionError):
        EVALUATOR.evaluate(expression, SECURITY_SCOPE)


# --------------------------------------------------------------------------------------
# property tests: only ExpressionError, never a dangerous value

DANGEROUS_TYPES: tuple[type, ...] = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.CodeType,
    types.FrameType,
    types.TracebackType,
    types.GeneratorType,
    types.MethodWrapperType,
    types.WrapperDescriptorType,
    types.MethodDescriptorType,
    types.ClassMethodDescriptorType,
    types.GetSetDescriptorType,
    types.MemberDescriptorType,
    types.MappingProxyType,
)

FUZZ_SCOPE: dict[str, Any] = {
    "x": "text",
    "y": [1, 2, 3],
    "d": {"a": {"b": 1}, "s": "str"},
    "n": 5,
    "fetch-user": {"status": "ok"},
    "_outputs": {"step-1": {"v": 1}},
}


def assert_safe_value(value: Any, depth: int = 0) -> None:
    assert not isinstance(value, DANGEROUS_TYPES), f"dangerous value {value!r}"
    if depth < 3 and isinstance(value, list | tuple | set | frozenset):
        for item in list(value)[:50]:
            assert_safe_value(item, depth + 1)
    elif depth < 3 and isinstance(value, dict):
        for key, item in list(value.items())[:50]:
            assert_safe_value(key, depth + 1)
            assert_safe_value(item, depth + 1)


def check_fuzzed(expression: str) -> None:
    try:
        value = EVALUATOR.evaluate(expression, FUZZ_SCOPE)
    except ExpressionError:
        return
    assert_safe_value(value)


FUZZ_TOKENS = [
    "__class__",
    "__mro__",
    "__subclasses__",
    "__globals__",
    "__builtins__",
    "__import__",
    "__dict__",
    "__init__",
    "_",
    "x",
    "y",
    "d",
    "n",
    "fetch",
    "user",
    "-",
    ".",
    "?.",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "=",
    ":=",
    "lambda",
    "import",
    "for",
    "in",
    "not",
    "if",
    "else",
    "and",
    "or",
    "'",
    '"',
    "'os'",
    "f'",
    "0",
    "1",
    "9",
    "**",
    "*",
    "+",
    "%",
    "!",
    "~",
    "&&",
    "||",
    "===",
    "length",
    "format",
    "mro",
    "len",
    "str",
    "sorted",
    "type",
    "getattr",
    "eval",
    "true",
    "null",
    "#",
    "\\",
    "\n",
]

fuzz_expressions = st.lists(st.sampled_from(FUZZ_TOKENS), min_size=1, max_size=25).flatmap(
    lambda parts: st.sampled_from(["", " "]).map(lambda sep: sep.join(parts))
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_arbitrary_text_only_raises_expression_error(expression: str) -> None:
    check_fuzzed(expression)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fuzz_expressions)
def test_dangerous_token_soup_only_raises_expression_error(expression: str) -> None:
    check_fuzzed(expression)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.sampled_from(["x", "y", "d", "n", "1", "'s'", "None", "true", "fetch-user"]),
        lambda inner: st.one_of(
            st.tuples(
                inner, st.sampled_from(["+", "-", "*", "**", "%", "//", "==", "<"]), inner
            ).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            st.tuples(inner, st.sampled_from([".a", ".length", ".__class__", "[0]", "[1:]"])).map(
                "".join
            ),
            st.tuples(st.sampled_from(["len", "str", "sorted", "max", "type"]), inner).map(
                lambda t: f"{t[0]}({t[1]})"
            ),
        ),
        max_leaves=12,
    )
)
def test_structured_expressions_only_raise_expression_error(expression: str) -> None:
    check_fuzzed(expression)


# --------------------------------------------------------------------------------------
# caching and the protocol


def test_compile_is_cached() -> None:
    evaluator = SafeEvaluator()
    first = evaluator.compile("a.b > 1")
    assert evaluator.compile("a.b > 1") is first
    assert evaluator.compile("a.b > 2") is not first
    assert SafeEvaluator().compile("a.b > 1") is not first  # caches are per evaluator


def test_cache_is_bounded() -> None:
    evaluator = SafeEvaluator()
    for i in range(4200):
        evaluator.compile(f"x + {i}")
    assert len(evaluator._cache) <= 4096
    assert evaluator.evaluate("x + 4199", {"x": 1}) == 4200


def test_compile_errors_are_not_cached() -> None:
    evaluator = SafeEvaluator()
    for _ in range(2):
        with pytest.raises(ExpressionError):
            evaluator.compile("x.__class__")
    assert evaluator._cache == {}


def test_safe_evaluator_is_an_evaluator() -> None:
    assert isinstance(SafeEvaluator(), Evaluator)
    evaluator: Evaluator = SafeEvaluator()
    assert evaluator.evaluate("1 + 1", {}) == 2
