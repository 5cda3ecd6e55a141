"""The safe expression language of edge conditions, edge transforms and loop conditions.

Expressions are parsed with :func:`ast.parse` (``mode="eval"``) after a small scanner has
translated the JavaScript spellings below, checked against a strict whitelist of syntax, and
compiled once into a tree of plain Python closures. Nothing is ever handed to ``eval``,
``exec`` or ``compile``-to-bytecode, no builtins are reachable, and no attribute of a Python
object is ever read with ``getattr``. Compiled expressions are cached per evaluator.

The language
------------

Literals
    Numbers (``3``, ``2.5``, ``1e3``, ``0x1F``), strings (``'a'``, ``"b"``, raw strings),
    ``True``/``False``/``None``, lists, tuples, dicts and sets. JavaScript spellings work too:
    ``true``, ``false``, ``null`` and ``undefined`` (both ``None``), ``&&`` (``and``), ``||``
    (``or``), ``!x`` (logical not, binding as tightly as JavaScript's ``!``), ``===`` (``==``),
    ``!==`` (``!=``), ``a?.b`` (same as ``a.b``) and ``a?.[0]`` (same as ``a[0]``). The
    translation never touches the inside of string literals. ``#`` starts a comment that runs
    to the end of the line; line breaks are ordinary whitespace. Bytes, complex numbers,
    f-strings and ``...`` are not supported.

Names
    A name is looked up in the scope mapping; a missing name is ``None``. Names starting with
    ``__`` are rejected. Function names are not values: ``len`` alone is the scope key
    ``"len"``.

Hyphenated ids
    Node ids often contain hyphens. A run of tokens ``NAME (- (NAME | DIGITS))+`` written
    with no whitespace around any ``-`` (``fetch-user``, ``step-2``, ``step-2b``, ``a-b-c``)
    is a *hyphen name candidate*, unless its first name is an attribute (``x.a-b`` is always
    ``x.a - b``) or a keyword; a name followed by ``(`` ends the run (``n-len(x)`` is always
    ``n - len(x)``). When an evaluation runs, if the joined text (``"fetch-user"``) is a key
    of the scope, the run stands for that scope value, as one name would
    (``fetch-user.status`` is ``scope["fetch-user"]["status"]``). Otherwise the expression
    means exactly what Python reads, with ordinary precedence (``x*step-2`` is
    ``(x * step) - 2``); if that reading is not valid (``check-in``), evaluating is an error.
    With whitespace (``a - b``) it is always subtraction. To reach a hyphenated key below the
    top level, use a subscript: ``_outputs["fetch-user"]``.

Attribute access
    ``a.b`` reads the KEY ``"b"`` of the mapping ``a``; a missing key, or ``None.b``, is
    ``None``. ``.length`` is the length of a string, list, tuple, set or mapping (a mapping
    that has a ``"length"`` key gives that value instead; ``None.length`` is ``None``). Any
    other attribute of a value that is not a mapping is an error: Python attributes and
    methods are never reachable. Attribute names starting with ``__`` are rejected; other
    underscore keys such as ``_outputs`` are ordinary keys.

Subscripts
    ``a["k"]``, ``a[0]``, ``a[-1]`` and slices ``a[1:3]``, ``a[::-1]`` (lists, tuples,
    strings). A missing key, an index out of range or a subscript of ``None`` is ``None``.
    Mapping keys that are strings starting with ``__`` are rejected (when the key is written
    as a literal, already when compiling). Integer indexes and slice bounds must be integers.

Operators
    ``+ - * / // %`` and ``**``; unary ``-``, ``+``, ``not``; comparisons ``== != < <= > >=``,
    ``in``, ``not in``, ``is``, ``is not`` (chained comparisons work); ``and``/``or`` with
    Python's short-circuit value semantics; ``x if cond else y``. Python's semantics apply,
    except that:

    * an ordering comparison (``< <= > >=``) with ``None`` on either side is ``False``;
    * ``x in None`` is ``False`` (``not in`` gives ``True``), and ``None in "text"`` is
      ``False``;
    * ``**`` takes numbers only, with an exponent of at most 64 in absolute value, and an
      integer result of at most 10,000 bits;
    * ``%`` on a string (printf-style formatting) is rejected;
    * repeating a string, list or tuple with ``*`` may build at most 100,000 elements or
      characters in total (nested lists and strings inside lists count in full), and ``+``
      may build strings, lists or tuples of at most 1,000,000 elements or characters.

Calls
    Only plain names of whitelisted functions can be called: ``len``, ``min``, ``max``,
    ``abs``, ``round``, ``str``, ``int``, ``float``, ``bool``, ``sum``, ``any``, ``all``,
    ``sorted``, ``lower(s)``, ``upper(s)`` (``None`` stays ``None`` for these two), plus the
    functions given to :class:`SafeEvaluator`. Keyword arguments are allowed (``sorted(xs,
    reverse=True)``) but ``key=`` functions are not; ``sum`` adds numbers only. Method calls
    (``x.upper()``), calls of computed values, ``*args`` and ``**kwargs`` are rejected.

Everything else -- lambdas, comprehensions, ``:=``, f-strings, ``await``, ``yield``, starred
unpacking, bitwise operators, ``@`` -- is rejected with an :class:`ExpressionError` naming the
construct. Expressions longer than 2,000 characters or nested deeper than 50 levels are
rejected too. Failures while evaluating (a ``TypeError``, a division by zero, ...) are raised
as :class:`ExpressionError` carrying a readable reason, with the original exception as the
cause.
"""

from __future__ import annotations

import ast
import keyword
import operator
import re
import threading
import unicodedata
import warnings
from collections.abc import Callable, Mapping, Sequence, Sized
from typing import Any, NamedTuple, Protocol, runtime_checkable

from flowcraft.errors import ExpressionError

__all__ = ["Evaluator", "SafeEvaluator", "validate_expression"]

_Fn = Callable[[Mapping[str, Any]], Any]

_MAX_EXPRESSION_LENGTH = 2000
_MAX_DEPTH = 50
_MAX_REPEAT_SIZE = 100_000
_MAX_CONCAT_SIZE = 1_000_000
_MAX_EXPONENT = 64
_MAX_POWER_BITS = 10_000
_CACHE_SIZE = 4096

_MISSING: Any = object()


@runtime_checkable
class Evaluator(Protocol):
    """Turns expression strings into callables over a scope; pluggable in the runtime."""

    def compile(self, expression: str) -> Callable[[Mapping[str, Any]], Any]:
        """Check ``expression`` and return a callable evaluating it against a scope mapping.

        Raises :class:`ExpressionError` on a syntax error or a forbidden construct; the
        returned callable raises :class:`ExpressionError` when evaluation fails.
        """
        ...

    def evaluate(self, expression: str, scope: Mapping[str, Any]) -> Any:
        """Compile ``expression`` (cached) and evaluate it against ``scope``.

        Every failure, at compile time or while evaluating, is an :class:`ExpressionError`.
        """
        ...


# --------------------------------------------------------------------------------------
# internal failures


class _Reject(Exception):
    """Internal: the expression is not allowed (becomes an ExpressionError)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _SyntaxReject(_Reject):
    """Internal: the (translated) text does not parse."""


class _EvalFailure(Exception):
    """Internal: evaluation failed for a reason the top-level wrapper reports."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _type_name(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ZeroDivisionError):
        return "division by zero"
    try:
        text = str(exc)
    except Exception:  # a broken __str__ must not hide the original failure
        text = ""
    if isinstance(exc, OverflowError):
        return f"numeric result out of range ({text})" if text else "numeric result out of range"
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


# --------------------------------------------------------------------------------------
# scanner: JS spellings, hyphen name candidates


class _Tok(NamedTuple):
    kind: str  # "name", "number", "string" or "op"
    raw: str  # the text as written
    text: str  # the text handed to the Python parser
    spaced: bool  # whitespace, a comment or the start of the text comes right before it


_NAME_RE = re.compile(r"[^\W\d]\w*")
_NUMBER_RE = re.compile(
    r"""
    0[xX](?:_?[0-9a-fA-F])+
  | 0[bB](?:_?[01])+
  | 0[oO](?:_?[0-7])+
  | (?:
        [0-9](?:_?[0-9])*
        (?:\.(?:(?=[eE][+-]?[0-9])|(?![A-Za-z_]))(?:[0-9](?:_?[0-9])*)?)?
      | \.[0-9](?:_?[0-9])*
    )
    (?:[eE][+-]?[0-9](?:_?[0-9])*)?
    [jJ]?
    """,
    re.VERBOSE,
)
_DIGITS_RE = re.compile(r"[0-9]+")
_STRING_PREFIXES = frozenset({"r", "u", "b", "f", "br", "rb", "fr", "rf"})
# Multi-character operators, longest first, kept whole so the re-joined text parses alike.
_OPERATORS = (
    "===", "!==", "**=", "//=", ">>=", "<<=", "...",
    "==", "!=", "<=", ">=", "**", "//", "<<", ">>", "->", ":=", "&&", "||", "?.",
    "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "@=",
)  # fmt: skip
_OP_TRANSLATIONS = {"===": "==", "!==": "!=", "&&": "and", "||": "or", "!": "~", "?.": "."}
_JS_WORDS = {"true": "True", "false": "False", "null": "None", "undefined": "None"}
_KEYWORDS = frozenset(keyword.kwlist)
_PLACEHOLDER = "__fc_h{}__"


def _string_end(text: str, start: int) -> int:
    """Index just past the string literal whose opening quote is at ``start``."""
    quote = text[start]
    n = len(text)
    triple = text.startswith(quote * 3, start)
    i = start + (3 if triple else 1)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if triple:
            if text.startswith(quote * 3, i):
                return i + 3
        elif c == quote:
            return i + 1
        elif c == "\n":
            return i  # unterminated; the parser reports it
        i += 1
    return n


def _scan(expression: str) -> list[_Tok]:
    """Split into tokens, translating JS spellings; string literals are kept verbatim."""
    raw: list[tuple[str, str, bool]] = []
    i = 0
    n = len(expression)
    spaced = True
    while i < n:
        c = expression[i]
        if c.isspace():
            i += 1
            spaced = True
            continue
        if c == "#":
            end = expression.find("\n", i)
            i = n if end < 0 else end
            spaced = True
            continue
        if c in "'\"":
            end = _string_end(expression, i)
            raw.append(("string", expression[i:end], spaced))
        elif m := _NAME_RE.match(expression, i):
            end = m.end()
            word = m.group()
            if end < n and expression[end] in "'\"" and word.lower() in _STRING_PREFIXES:
                end = _string_end(expression, end)
                raw.append(("string", expression[i:end], spaced))
            else:
                raw.append(("name", word, spaced))
        elif m := _NUMBER_RE.match(expression, i):
            end = m.end()
            raw.append(("number", m.group(), spaced))
        else:
            op = next((o for o in _OPERATORS if expression.startswith(o, i)), c)
            end = i + len(op)
            raw.append(("op", op, spaced))
        i = end
        spaced = False

    tokens: list[_Tok] = []
    for index, (kind, text, was_spaced) in enumerate(raw):
        after_dot = bool(tokens) and tokens[-1].kind == "op" and tokens[-1].text == "."
        if kind == "name":
            name = unicodedata.normalize("NFKC", text)
            if name.startswith("__"):
                what = "attribute" if after_dot else "name"
                raise _Reject(f"{what} {name!r} is not allowed")
            if not after_dot:
                name = _JS_WORDS.get(name, name)
            tokens.append(_Tok(kind, text, name, was_spaced))
        elif kind == "op":
            if text == "~":
                raise _Reject("operator '~' is not allowed")
            if text == "?.":
                following = raw[index + 1][1] if index + 1 < len(raw) else ""
                if following in ("[", "("):
                    continue  # a?.[0] is a[0]
            tokens.append(_Tok(kind, text, _OP_TRANSLATIONS.get(text, text), was_spaced))
        else:
            tokens.append(_Tok(kind, text, text, was_spaced))
    return tokens


class _Run(NamedTuple):
    start: int
    end: int  # exclusive
    key: str


def _find_runs(tokens: list[_Tok]) -> list[_Run]:
    """The hyphen name candidates among ``tokens``."""
    runs: list[_Run] = []
    count = len(tokens)
    i = 0
    while i < count:
        tok = tokens[i]
        if (
            tok.kind == "name"
            and tok.text not in _KEYWORDS
            and not (i > 0 and tokens[i - 1].kind == "op" and tokens[i - 1].text == ".")
        ):
            j = i
            parts = [tok.raw]
            while j + 2 < count:
                dash, part = tokens[j + 1], tokens[j + 2]
                if not (
                    dash.kind == "op"
                    and dash.raw == "-"
                    and not dash.spaced
                    and not part.spaced
                    and (
                        part.kind == "name"
                        or (part.kind == "number" and _DIGITS_RE.fullmatch(part.raw))
                    )
                ):
                    break
                following = tokens[j + 3] if j + 3 < count else None
                if part.kind == "name" and following is not None and following.text == "(":
                    break  # n-len(x): a function call, not part of an id
                parts += ["-", part.raw]
                j += 2
                if (
                    part.kind == "number"
                    and following is not None
                    and following.kind == "name"
                    and not following.spaced
                ):
                    parts.append(following.raw)  # step-2b: '2b' is one id part
                    j += 1
            if j > i:
                runs.append(_Run(i, j + 1, "".join(parts)))
                i = j + 1
                continue
        i += 1
    return runs


def _emit(tokens: list[_Tok], runs: list[_Run], mask: int) -> tuple[str, dict[str, str]]:
    """Source text for the parser; runs whose bit is set in ``mask`` become placeholders."""
    starts = {run.start: (index, run) for index, run in enumerate(runs)}
    pieces: list[str] = []
    placeholders: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        hit = starts.get(i)
        if hit is not None and mask >> hit[0] & 1:
            name = _PLACEHOLDER.format(hit[0])
            placeholders[name] = hit[1].key
            pieces.append(name)
            i = hit[1].end
            continue
        pieces.append(tokens[i].text)
        i += 1
    return " ".join(pieces), placeholders


# --------------------------------------------------------------------------------------
# runtime helpers


def _weight(value: Any, budget: int) -> int:
    """Elements and characters inside ``value``, counted until ``budget`` is exceeded."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, list | tuple | set | frozenset):
            total += len(item)
            if total > budget:
                return total
            stack.extend(item)
        elif isinstance(item, Mapping):
            total += len(item)
            if total > budget:
                return total
            stack.extend(item.values())
        if total > budget:
            return total
    return total


_SEQUENCES = (str, list, tuple)


def _add(a: Any, b: Any) -> Any:
    if (
        isinstance(a, _SEQUENCES)
        and isinstance(b, _SEQUENCES)
        and len(a) + len(b) > _MAX_CONCAT_SIZE
    ):
        raise _EvalFailure(
            f"'+' would build a value longer than {_MAX_CONCAT_SIZE:,} elements or characters"
        )
    return a + b


def _check_repeat(sequence: Any, times: int) -> None:
    if times > 1 and _weight(sequence, _MAX_REPEAT_SIZE) * times > _MAX_REPEAT_SIZE:
        raise _EvalFailure(
            f"'*' would build a value larger than {_MAX_REPEAT_SIZE:,} elements or characters"
        )


def _mul(a: Any, b: Any) -> Any:
    if isinstance(a, _SEQUENCES) and isinstance(b, int):
        _check_repeat(a, b)
    elif isinstance(b, _SEQUENCES) and isinstance(a, int):
        _check_repeat(b, a)
    return a * b


def _mod(a: Any, b: Any) -> Any:
    if isinstance(a, str | bytes):
        raise _EvalFailure("'%' string formatting is not allowed")
    return a % b


def _pow(base: Any, exponent: Any) -> Any:
    if not isinstance(base, int | float) or not isinstance(exponent, int | float):
        raise _EvalFailure(f"'**' needs numbers, got {_type_name(base)} and {_type_name(exponent)}")
    if abs(exponent) > _MAX_EXPONENT:
        raise _EvalFailure(f"'**' exponent {exponent!r} is too large (at most {_MAX_EXPONENT})")
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and exponent > 0
        and abs(base).bit_length() * exponent > _MAX_POWER_BITS
    ):
        raise _EvalFailure(f"'**' result would be too large (more than {_MAX_POWER_BITS} bits)")
    return base**exponent


def _not(value: Any) -> bool:
    return not value


def _lt(a: Any, b: Any) -> Any:
    return False if a is None or b is None else a < b


def _le(a: Any, b: Any) -> Any:
    return False if a is None or b is None else a <= b


def _gt(a: Any, b: Any) -> Any:
    return False if a is None or b is None else a > b


def _ge(a: Any, b: Any) -> Any:
    return False if a is None or b is None else a >= b


def _in(a: Any, b: Any) -> bool:
    if b is None or (a is None and isinstance(b, str)):
        return False
    return a in b


def _not_in(a: Any, b: Any) -> bool:
    return not _in(a, b)


def _length(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, Sized) and not callable(value):
        return len(value)
    raise _EvalFailure(f"a {_type_name(value)} value has no length")


def _get_attr(value: Any, key: str) -> Any:
    """``value.key``: a mapping key, ``.length``, or ``None`` for ``None``."""
    if type(value) is dict or isinstance(value, Mapping):
        found = value.get(key, _MISSING)
        if found is _MISSING:
            return len(value) if key == "length" else None
        return found
    if value is None:
        return None
    if key == "length":
        return _length(value)
    raise _EvalFailure(
        f"cannot read {key!r} of a {_type_name(value)} value "
        "(attribute access reads mapping keys only)"
    )


def _check_mapping_key(key: Any) -> None:
    if type(key) is str and key.startswith("__"):
        raise _EvalFailure(f"key {key!r} is not allowed")


def _is_indexable(value: Any) -> bool:
    return isinstance(value, _SEQUENCES) or (
        isinstance(value, Sequence) and not isinstance(value, Mapping)
    )


def _get_item(value: Any, key: Any) -> Any:
    """``value[key]``, null-safe: missing keys and out-of-range indexes give ``None``."""
    if type(value) is dict or isinstance(value, Mapping):
        _check_mapping_key(key)
        try:
            return value.get(key)
        except TypeError:
            raise _EvalFailure(f"a {_type_name(key)} cannot be a mapping key") from None
    if value is None:
        return None
    if _is_indexable(value):
        if not isinstance(key, int):
            raise _EvalFailure(
                f"{_type_name(value)} indexes must be integers, not {_type_name(key)}"
            )
        try:
            return value[key]
        except IndexError:
            return None
    raise _EvalFailure(f"a {_type_name(value)} value cannot be indexed")


def _get_slice(value: Any, lower: Any, upper: Any, step: Any) -> Any:
    if value is None:
        return None
    if not _is_indexable(value):
        raise _EvalFailure(f"a {_type_name(value)} value cannot be sliced")
    for bound in (lower, upper, step):
        if bound is not None and not isinstance(bound, int):
            raise _EvalFailure(f"slice bounds must be integers or None, not {_type_name(bound)}")
    if step == 0:
        raise _EvalFailure("slice step cannot be zero")
    return value[lower:upper:step]


# --------------------------------------------------------------------------------------
# whitelisted functions


def _no_key_function(kwargs: Mapping[str, Any]) -> None:
    if kwargs.get("key") is not None:
        raise _EvalFailure("key functions are not supported")


def _min(*args: Any, **kwargs: Any) -> Any:
    _no_key_function(kwargs)
    return min(*args, **kwargs)


def _max(*args: Any, **kwargs: Any) -> Any:
    _no_key_function(kwargs)
    return max(*args, **kwargs)


def _sorted(iterable: Any, **kwargs: Any) -> list[Any]:
    _no_key_function(kwargs)
    return sorted(iterable, **kwargs)


def _sum(iterable: Any, start: Any = 0) -> Any:
    if not isinstance(start, int | float):
        raise _EvalFailure("sum() adds numbers only")
    return sum(iterable, start)


def _lower(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _EvalFailure(f"lower() needs a string, not {_type_name(value)}")
    return value.lower()


def _upper(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _EvalFailure(f"upper() needs a string, not {_type_name(value)}")
    return value.upper()


_BUILTIN_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": len,
    "min": _min,
    "max": _max,
    "abs": abs,
    "round": round,
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "sum": _sum,
    "any": any,
    "all": all,
    "sorted": _sorted,
    "lower": _lower,
    "upper": _upper,
}


# --------------------------------------------------------------------------------------
# AST -> closures

_BINARY_OPERATORS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: _add,
    ast.Sub: operator.sub,
    ast.Mult: _mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: _mod,
    ast.Pow: _pow,
}
_OPERATOR_SYMBOLS: dict[type[ast.AST], str] = {
    ast.MatMult: "@",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.BitAnd: "&",
}
_UNARY_OPERATORS: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Not: _not,
    ast.Invert: _not,  # only ever produced by translating JS '!'; a written '~' is rejected
}
_COMPARISONS: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: _lt,
    ast.LtE: _le,
    ast.Gt: _gt,
    ast.GtE: _ge,
    ast.In: _in,
    ast.NotIn: _not_in,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}
_FORBIDDEN_NODES: dict[type[ast.AST], str] = {
    ast.Lambda: "lambda expressions are",
    ast.ListComp: "comprehensions are",
    ast.SetComp: "comprehensions are",
    ast.DictComp: "comprehensions are",
    ast.GeneratorExp: "generator expressions are",
    ast.NamedExpr: "assignment expressions (:=) are",
    ast.JoinedStr: "f-strings are",
    ast.FormattedValue: "f-strings are",
    ast.Await: "'await' is",
    ast.Yield: "'yield' is",
    ast.YieldFrom: "'yield' is",
    ast.Starred: "unpacking with '*' is",
    ast.Slice: "slices outside '[...]' are",
}


def _constant(value: Any) -> _Fn:
    return lambda _scope: value


class _Compiler:
    """Compiles one parsed, translated expression into closures over the scope."""

    def __init__(
        self, functions: Mapping[str, Callable[..., Any]], placeholders: Mapping[str, str]
    ) -> None:
        self.functions = functions
        self.placeholders = placeholders

    def compile(self, node: ast.AST, depth: int) -> _Fn:
        if depth > _MAX_DEPTH:
            raise _Reject(f"expression is nested too deeply (more than {_MAX_DEPTH} levels)")
        depth += 1
        if isinstance(node, ast.Constant):
            return self._constant(node)
        if isinstance(node, ast.Name):
            return self._name(node)
        if isinstance(node, ast.Attribute):
            return self._attribute(node, depth)
        if isinstance(node, ast.Subscript):
            return self._subscript(node, depth)
        if isinstance(node, ast.BinOp):
            return self._binop(node, depth)
        if isinstance(node, ast.UnaryOp):
            return self._unaryop(node, depth)
        if isinstance(node, ast.Compare):
            return self._compare(node, depth)
        if isinstance(node, ast.BoolOp):
            return self._boolop(node, depth)
        if isinstance(node, ast.IfExp):
            test = self.compile(node.test, depth)
            body = self.compile(node.body, depth)
            orelse = self.compile(node.orelse, depth)
            return lambda s: body(s) if test(s) else orelse(s)
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            return self._display(node, depth)
        if isinstance(node, ast.Dict):
            return self._dict(node, depth)
        if isinstance(node, ast.Call):
            return self._call(node, depth)
        description = _FORBIDDEN_NODES.get(type(node))
        if description is None:
            description = f"{type(node).__name__} expressions are"
        raise _Reject(f"{description} not allowed")

    # -- leaves

    def _constant(self, node: ast.Constant) -> _Fn:
        value = node.value
        if value is None or type(value) in (bool, int, float, str):
            return _constant(value)
        if isinstance(value, complex):
            raise _Reject("complex numbers are not supported")
        if isinstance(value, bytes):
            raise _Reject("bytes literals are not supported")
        raise _Reject(f"the literal {value!r} is not supported")

    def _display_name(self, name: str) -> str:
        return self.placeholders.get(name, name)

    def _name(self, node: ast.Name) -> _Fn:
        key = self.placeholders.get(node.id)
        if key is None:
            if node.id.startswith("__"):
                raise _Reject(f"name {node.id!r} is not allowed")
            key = node.id
        return lambda s: s.get(key)

    # -- access

    def _attribute(self, node: ast.Attribute, depth: int) -> _Fn:
        keys: list[str] = []
        current: ast.AST = node
        while isinstance(current, ast.Attribute):
            if current.attr.startswith("__"):
                raise _Reject(f"attribute {current.attr!r} is not allowed")
            keys.append(current.attr)
            current = current.value
            depth += 1
            if depth > _MAX_DEPTH:
                raise _Reject(f"expression is nested too deeply (more than {_MAX_DEPTH} levels)")
        keys.reverse()
        chain = tuple(keys)
        if isinstance(current, ast.Name):
            first = self.placeholders.get(current.id)
            if first is None:
                if current.id.startswith("__"):
                    raise _Reject(f"name {current.id!r} is not allowed")
                first = current.id
            if len(chain) == 1:
                only = chain[0]
                return lambda s: _get_attr(s.get(first), only)

            def name_chain(s: Mapping[str, Any]) -> Any:
                value = s.get(first)
                for key in chain:
                    value = _get_attr(value, key)
                return value

            return name_chain

        base = self.compile(current, depth)

        def value_chain(s: Mapping[str, Any]) -> Any:
            value = base(s)
            for key in chain:
                value = _get_attr(value, key)
            return value

        return value_chain

    def _subscript(self, node: ast.Subscript, depth: int) -> _Fn:
        value = self.compile(node.value, depth)
        index = node.slice
        if isinstance(index, ast.Slice):
            lower = self._optional(index.lower, depth)
            upper = self._optional(index.upper, depth)
            step = self._optional(index.step, depth)
            return lambda s: _get_slice(value(s), lower(s), upper(s), step(s))
        if isinstance(index, ast.Constant):
            key = index.value
            if isinstance(key, str) and key.startswith("__"):
                raise _Reject(f"key {key!r} is not allowed")
        get = self.compile(index, depth)
        return lambda s: _get_item(value(s), get(s))

    def _optional(self, node: ast.expr | None, depth: int) -> _Fn:
        return _constant(None) if node is None else self.compile(node, depth)

    # -- operators

    def _binop(self, node: ast.BinOp, depth: int) -> _Fn:
        function = _BINARY_OPERATORS.get(type(node.op))
        if function is None:
            symbol = _OPERATOR_SYMBOLS.get(type(node.op), type(node.op).__name__)
            raise _Reject(f"operator {symbol!r} is not allowed")
        left = self.compile(node.left, depth)
        right = self.compile(node.right, depth)
        return lambda s: function(left(s), right(s))

    def _unaryop(self, node: ast.UnaryOp, depth: int) -> _Fn:
        function = _UNARY_OPERATORS[type(node.op)]
        operand = self.compile(node.operand, depth)
        if function is _not:
            return lambda s: not operand(s)
        return lambda s: function(operand(s))

    def _compare(self, node: ast.Compare, depth: int) -> _Fn:
        operators = [_COMPARISONS[type(op)] for op in node.ops]
        left = self.compile(node.left, depth)
        rights = [self.compile(comparator, depth) for comparator in node.comparators]
        if len(operators) == 1:
            function, right = operators[0], rights[0]
            if isinstance(node.comparators[0], ast.Constant):
                constant = node.comparators[0].value
                return lambda s: function(left(s), constant)
            return lambda s: function(left(s), right(s))
        pairs = tuple(zip(operators, rights, strict=True))

        def chained(s: Mapping[str, Any]) -> Any:
            a = left(s)
            result: Any = True
            for function, right in pairs:
                b = right(s)
                result = function(a, b)
                if not result:
                    return result
                a = b
            return result

        return chained

    def _boolop(self, node: ast.BoolOp, depth: int) -> _Fn:
        operands = [self.compile(value, depth) for value in node.values]
        if len(operands) == 2:
            first, second = operands
            if isinstance(node.op, ast.And):
                return lambda s: first(s) and second(s)
            return lambda s: first(s) or second(s)
        is_and = isinstance(node.op, ast.And)

        def many(s: Mapping[str, Any]) -> Any:
            value: Any = None
            for operand in operands:
                value = operand(s)
                if bool(value) != is_and:
                    return value
            return value

        return many

    # -- displays and calls

    def _display(self, node: ast.List | ast.Tuple | ast.Set, depth: int) -> _Fn:
        items = [self.compile(element, depth) for element in node.elts]
        if isinstance(node, ast.List):
            return lambda s: [item(s) for item in items]
        if isinstance(node, ast.Tuple):
            return lambda s: tuple([item(s) for item in items])
        return lambda s: {item(s) for item in items}

    def _dict(self, node: ast.Dict, depth: int) -> _Fn:
        pairs: list[tuple[_Fn, _Fn]] = []
        for key, value in zip(node.keys, node.values, strict=True):
            if key is None:
                raise _Reject("unpacking with '**' is not allowed")
            pairs.append((self.compile(key, depth), self.compile(value, depth)))
        return lambda s: {key(s): value(s) for key, value in pairs}

    def _allowed(self) -> str:
        return "function calls are only allowed to: " + ", ".join(self.functions)

    def _call(self, node: ast.Call, depth: int) -> _Fn:
        target = node.func
        if isinstance(target, ast.Attribute):
            raise _Reject(
                f"method calls such as '.{target.attr}(...)' are not allowed; " + self._allowed()
            )
        if not isinstance(target, ast.Name):
            raise _Reject("only functions named directly can be called; " + self._allowed())
        function = None if target.id in self.placeholders else self.functions.get(target.id)
        if function is None:
            name = self._display_name(target.id)
            raise _Reject(f"calling {name!r} is not allowed; " + self._allowed())
        arguments: list[_Fn] = []
        for argument in node.args:
            if isinstance(argument, ast.Starred):
                raise _Reject("unpacking arguments with '*' is not allowed")
            arguments.append(self.compile(argument, depth))
        keywords: list[tuple[str, _Fn]] = []
        for item in node.keywords:
            if item.arg is None:
                raise _Reject("unpacking keyword arguments with '**' is not allowed")
            if item.arg.startswith("__"):
                raise _Reject(f"keyword argument {item.arg!r} is not allowed")
            keywords.append((item.arg, self.compile(item.value, depth)))
        call = function
        if keywords:
            return lambda s: call(
                *[argument(s) for argument in arguments],
                **{name: value(s) for name, value in keywords},
            )
        if len(arguments) == 1:
            only = arguments[0]
            return lambda s: call(only(s))
        return lambda s: call(*[argument(s) for argument in arguments])


# --------------------------------------------------------------------------------------
# evaluator

_PARSE_LOCK = threading.Lock()


def _parse(text: str) -> ast.expr:
    try:
        # Invalid escape sequences and the like warn while parsing; that is noise here. The
        # lock keeps concurrent compiles from restoring each other's warning filters.
        with _PARSE_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise _SyntaxReject(f"syntax error: {exc.msg}") from None
    except Exception as exc:  # ValueError (NUL bytes), RecursionError, MemoryError, ...
        raise _SyntaxReject(f"cannot parse: {_describe(exc)}") from None
    return tree.body


def _raiser(reason: str) -> _Fn:
    def fail(_scope: Mapping[str, Any]) -> Any:
        raise _EvalFailure(reason)

    return fail


def _wrap(expression: str, root: _Fn) -> _Fn:
    def evaluate(scope: Mapping[str, Any]) -> Any:
        try:
            return root(scope)
        except _EvalFailure as exc:
            raise ExpressionError(expression, exc.reason) from None
        except ExpressionError:
            raise
        except Exception as exc:
            raise ExpressionError(expression, _describe(exc)) from exc

    evaluate.__qualname__ = evaluate.__name__ = "compiled_expression"
    evaluate.__doc__ = f"Evaluate {expression!r} against a scope mapping."
    return evaluate


class SafeEvaluator:
    """The default :class:`Evaluator`: the sandboxed language described in this module.

    ``functions`` adds (or replaces) whitelisted functions callable by bare name; each name
    must be an identifier that is not a keyword and does not start with ``__``. Compiled
    expressions are cached (up to 4,096 per evaluator) and safe to share between threads.
    """

    def __init__(self, functions: Mapping[str, Callable[..., Any]] | None = None) -> None:
        table = dict(_BUILTIN_FUNCTIONS)
        for name, function in (functions or {}).items():
            if (
                not isinstance(name, str)
                or not name.isidentifier()
                or keyword.iskeyword(name)
                or name.startswith("__")
            ):
                raise ValueError(f"invalid expression function name {name!r}")
            if not callable(function):
                raise TypeError(f"expression function {name!r} is not callable")
            table[name] = function
        self._functions = table
        self._cache: dict[str, _Fn] = {}
        self._lock = threading.Lock()

    def compile(self, expression: str) -> Callable[[Mapping[str, Any]], Any]:
        """Check ``expression`` and return a callable evaluating it against a scope mapping.

        The same string always yields the identical callable (while it stays cached). Raises
        :class:`ExpressionError` on a syntax error or a forbidden construct; the callable
        raises :class:`ExpressionError` when evaluation fails.
        """
        if not isinstance(expression, str):
            raise ExpressionError(repr(expression), "an expression must be a string")
        compiled = self._cache.get(expression)
        if compiled is not None:
            return compiled
        compiled = self._build(expression)
        with self._lock:
            existing = self._cache.get(expression)
            if existing is not None:
                return existing
            if len(self._cache) >= _CACHE_SIZE:
                del self._cache[next(iter(self._cache))]
            self._cache[expression] = compiled
        return compiled

    def evaluate(self, expression: str, scope: Mapping[str, Any]) -> Any:
        """Compile ``expression`` (cached) and evaluate it against ``scope``.

        Every failure, at compile time or while evaluating, is an :class:`ExpressionError`.
        """
        return self.compile(expression)(scope)

    def _build(self, expression: str) -> _Fn:
        if len(expression) > _MAX_EXPRESSION_LENGTH:
            raise ExpressionError(
                expression,
                f"expression is too long ({len(expression)} characters, "
                f"at most {_MAX_EXPRESSION_LENGTH})",
            )
        if not expression.strip():
            raise ExpressionError(expression, "expression is empty")
        try:
            tokens = _scan(expression)
            runs = _find_runs(tokens)
            if not runs:
                return _wrap(expression, self._variant(tokens, runs, 0))
            return _wrap(expression, self._hyphenated(tokens, runs))
        except _Reject as exc:
            raise ExpressionError(expression, exc.reason) from None

    def _variant(self, tokens: list[_Tok], runs: list[_Run], mask: int) -> _Fn:
        text, placeholders = _emit(tokens, runs, mask)
        return _Compiler(self._functions, placeholders).compile(_parse(text), 1)

    def _hyphenated(self, tokens: list[_Tok], runs: list[_Run]) -> _Fn:
        """Dispatch on which hyphen name candidates are scope keys, one variant per case."""
        keys = tuple(run.key for run in runs)
        every = (1 << len(runs)) - 1
        variants: dict[int, _Fn] = {}
        failures: dict[int, _SyntaxReject] = {}
        for mask in (0, every):
            try:
                variants[mask] = self._variant(tokens, runs, mask)
            except _SyntaxReject as exc:
                failures[mask] = exc
        if len(failures) == 2:
            raise failures[0]
        names = ", ".join(repr(key) for key in keys)
        if 0 in failures:
            variants[0] = _raiser(
                f"{names} not found in scope, and without it the expression is invalid "
                f"({failures[0].reason})"
            )
        if every in failures:
            variants[every] = _raiser(f"{names} cannot be used as a name here")

        def variant(mask: int) -> _Fn:
            found = variants.get(mask)
            if found is None:
                try:
                    found = self._variant(tokens, runs, mask)
                except _Reject as exc:
                    found = _raiser(exc.reason)
                variants[mask] = found
            return found

        if len(keys) == 1:
            key, as_name, as_text = keys[0], variants[every], variants[0]
            return lambda s: as_name(s) if key in s else as_text(s)

        def dispatch(s: Mapping[str, Any]) -> Any:
            mask = 0
            bit = 1
            for key in keys:
                if key in s:
                    mask |= bit
                bit <<= 1
            found = variants.get(mask)
            return (found if found is not None else variant(mask))(s)

        return dispatch


_DEFAULT_EVALUATOR = SafeEvaluator()


def validate_expression(expression: str) -> None:
    """Raise :class:`ExpressionError` if ``expression`` does not compile (nothing is run).

    Uses the default :class:`SafeEvaluator`, so only its built-in functions are known.
    """
    _DEFAULT_EVALUATOR.compile(expression)
