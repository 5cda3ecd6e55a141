"""Unit tests of flowcraft-azure that need no service: id escaping, JSON pointers, the message
encoding, visibility rounding, poison envelopes and URL options. Everything that talks to
Azurite or the Cosmos server is in ``test_azure_queue.py``, ``test_azure_cosmos.py`` and the
suites."""

from __future__ import annotations

import base64
import json

import pytest
from flowcraft_azure import AzureAdapter, CosmosConfig, StorageConfig, from_url, message_delivery
from flowcraft_azure.cosmos import safe_key
from flowcraft_azure.queue import (
    MAX_MESSAGE_CHARS,
    decode_content,
    encode_content,
    poison_envelope,
    read_poison,
    visibility_seconds,
)
from flowcraft_azure.runstore import json_pointer

FORBIDDEN_IN_IDS = "/\\?#"


@pytest.mark.parametrize(
    "text",
    ["run-1", "a/b", "a\\b", "a?b#c", "100%", "!21", "a:b", "ключ 🙂", "", " ", "=x", "x" * 300],
)
def test_safe_key_is_a_valid_cosmos_id(text: str) -> None:
    """Escaped keys hold none of the characters Cosmos refuses in ids, no ``:`` (the kinds of
    items are told apart by a ``x:`` prefix) and at most 200 characters."""
    k = safe_key(text)
    assert not any(c in k for c in FORBIDDEN_IN_IDS + ":")
    assert len(k) <= 200 or (k.startswith("=") and len(k) == 65)


def test_safe_key_is_injective_on_tricky_pairs() -> None:
    """The escape character and the hash marker cannot make two texts collide."""
    texts = ["a/b", "a!2Fb", "a%2Fb", "=" + "0" * 64, "x" * 300, "x" * 301, "!", "%21", "!21"]
    assert len({safe_key(t) for t in texts}) == len(texts)


def test_json_pointer_escapes_tilde_then_slash() -> None:
    """RFC 6901: ``~`` is ``~0`` and ``/`` is ``~1`` (in that order); dots, backticks and
    non-ASCII text stay."""
    assert json_pointer("data", "a/b~c") == "/data/a~1b~0c"
    assert json_pointer("data", "~1") == "/data/~01"
    assert json_pointer("data", "a.b`c`ключ") == "/data/a.b`c`ключ"
    assert json_pointer("data", "") == "/data/"


def test_message_content_is_base64_text_as_the_functions_trigger_expects() -> None:
    """UTF-8 text in base64 both ways; content that is not base64 stays as it is (it becomes
    an invalid job, never a receive that fails forever)."""
    body = '{"runId":"ü"}'
    enc = encode_content(body)
    assert base64.b64decode(enc).decode("utf-8") == body
    assert decode_content(enc) == body
    assert decode_content('{"plain": "json"}') == '{"plain": "json"}'
    assert decode_content(None) == ""
    d = message_delivery("m1", "pr1", enc, 3)
    assert (d.body, d.deliveries, d.message.id, d.message.pop_receipt) == (body, 3, "m1", "pr1")


@pytest.mark.parametrize(
    ("delay", "expected"), [(0, 0), (-1, 0), (0.01, 1), (1.0, 1), (1.2, 2), (10**9, 604800)]
)
def test_visibility_seconds_round_up_and_cap_at_seven_days(delay: float, expected: int) -> None:
    """A job is never delivered early; Azure takes whole seconds up to 7 days."""
    assert visibility_seconds(delay) == expected


def test_poison_envelope_carries_the_reason_and_fits_the_queue() -> None:
    """The envelope keeps body and reason; an oversized body is cut so the message still fits
    the 64 KiB limit, with its original size recorded."""
    env = poison_envelope("body", "bad job", "m1", 21, "jobs")
    assert read_poison(env) == ("body", "bad job")
    meta = json.loads(decode_content(env))
    assert (meta["messageId"], meta["dequeueCount"], meta["queue"]) == ("m1", 21, "jobs")
    big = "ü" * 100_000
    env = poison_envelope(big, "too big", "m2", 1, "jobs")
    assert len(env) <= MAX_MESSAGE_CHARS
    meta = json.loads(decode_content(env))
    assert meta["truncated"] == len(big.encode("utf-8"))
    assert big.startswith(meta["body"])
    # A message the Functions host moved as it was.
    assert read_poison(encode_content("raw")) == ("raw", "moved by the host (maxDequeueCount)")


def test_from_url_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """``azure://QUEUE?cosmos=...``: credentials from the environment, options override."""
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "UseDevelopmentStorage=true")
    monkeypatch.setenv("AZURE_COSMOS_KEY", "k")
    a = from_url(
        "azure://jobs?cosmos=https://acct.documents.azure.com:443/&database=db&container=c"
        "&concurrency=3&visibility=45"
    )
    assert isinstance(a, AzureAdapter)
    assert (a.queue, a.poison_queue, a.concurrency, a.visibility_timeout) == (
        "jobs",
        "jobs-poison",
        3,
        45,
    )
    cfg = a.cosmos.config
    assert (cfg.endpoint, cfg.database, cfg.container, cfg.key) == (
        "https://acct.documents.azure.com:443/",
        "db",
        "c",
        "k",
    )
    assert cfg.client_kwargs == {}
    emulator = from_url("azure://jobs?cosmos=https://127.0.0.1:8081/&verify=false")
    assert emulator.cosmos.config.client_kwargs == {"connection_verify": False}
    with pytest.raises(ValueError, match="cosmos"):
        from_url("azure://jobs")
    with pytest.raises(ValueError, match="nope"):
        from_url("azure://jobs?cosmos=https://x/&nope=1")


def test_constructor_validates_limits() -> None:
    """Visibility timeouts are 1 s to 7 days; concurrency at least 1."""
    kw = {"queue": "q", "storage": StorageConfig("UseDevelopmentStorage=true")}
    cosmos = CosmosConfig("https://x/", key="k")
    with pytest.raises(ValueError, match="visibility_timeout"):
        AzureAdapter(**kw, cosmos=cosmos, visibility_timeout=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="concurrency"):
        AzureAdapter(**kw, cosmos=cosmos, concurrency=0)  # type: ignore[arg-type]
