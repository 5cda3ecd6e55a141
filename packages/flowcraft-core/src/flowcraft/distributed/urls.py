"""Backend URLs (``--backend``), parsed once for every adapter.

An adapter's ``from_url`` declares its scheme aliases and its query options; :func:`parse_url`
takes Flowcraft's options out of the query (converted, with errors that name the option), and
returns the rest of the URL for the vendor client.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

__all__ = ["BackendURL", "Option", "parse_url"]


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false")


@dataclass(frozen=True)
class Option:
    """A query option: the adapter keyword it sets and how to convert its text (``int``,
    ``float``, ``str``, ``bool`` (true/false, 1/0, yes/no, on/off) or any callable)."""

    keyword: str
    convert: Callable[[str], Any] = str

    def value(self, name: str, text: str, url: str) -> Any:
        """``text`` converted; ValueError naming the option, the value and the URL."""
        conv = _bool if self.convert is bool else self.convert
        try:
            return conv(text)
        except (TypeError, ValueError) as exc:
            kind = getattr(self.convert, "__name__", "value")
            raise ValueError(
                f"backend URL {_redact(url)!r}: option {name}={text!r} is not a valid {kind} "
                f"({exc})"
            ) from None


@dataclass
class BackendURL:
    """A parsed backend URL: ``scheme`` (aliases resolved), the URL without Flowcraft's
    options (``url``, for the vendor client), its parts, and ``kwargs`` for the adapter."""

    scheme: str
    url: str
    netloc: str
    path: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    rest: list[tuple[str, str]] = field(default_factory=list)
    """Query items that are not Flowcraft options (left in :attr:`url`)."""

    @property
    def name(self) -> str:
        """Host and path joined and unquoted, without slashes at either end (a queue name in
        ``sqs://NAME`` or ``azure://ACCOUNT/QUEUE``)."""
        return unquote(self.netloc + self.path).strip("/")


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


def parse_url(
    url: str,
    options: Mapping[str, Option | tuple[str, Callable[[str], Any]]],
    *,
    schemes: Mapping[str, str] | None = None,
    passthrough: bool = True,
    kwargs: Mapping[str, Any] | None = None,
) -> BackendURL:
    """Parse ``url`` for an adapter.

    ``options`` maps query names to :class:`Option` (or ``(keyword, convert)``). ``schemes``
    maps accepted schemes to the scheme the vendor client wants (``{"bullmq": "redis",
    "redis": "redis"}``); another scheme is a ValueError listing the accepted ones.
    ``passthrough``: other query items stay in the URL for the vendor client; when False they
    are a ValueError naming the unknown option and the known ones. ``kwargs`` are keyword
    arguments the caller passed; query options override them (the URL is the more specific).
    """
    parts = urlsplit(url)
    scheme = parts.scheme
    if schemes is not None:
        if scheme not in schemes:
            known = ", ".join(f"{s}://" for s in sorted(schemes))
            raise ValueError(f"backend URL {_redact(url)!r}: expected one of {known}")
        scheme = schemes[scheme]
    out = dict(kwargs or {})
    rest: list[tuple[str, str]] = []
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        opt = options.get(k)
        if opt is None:
            if not passthrough:
                known = ", ".join(sorted(options)) or "none"
                raise ValueError(
                    f"backend URL {_redact(url)!r}: unknown option {k!r} (known: {known})"
                )
            rest.append((k, v))
            continue
        o = opt if isinstance(opt, Option) else Option(*opt)
        out[o.keyword] = o.value(k, v, url)
    clean = urlunsplit((scheme, parts.netloc, parts.path, urlencode(rest), ""))
    return BackendURL(scheme, clean, parts.netloc, parts.path, out, rest)
