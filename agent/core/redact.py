"""Credentials kept out of every output: the one redactor that /diagnose (JSON, text, HTML),
/status, /canaryz, the log, check-config, audit and verify reports and OTLP events go through.

Two layers, because neither alone is enough:

- Patterns, for credentials nobody told the sidecar about (a Dynamo process's command line,
  a URL in an error message): the userinfo of any URL (up to the *last* `@` of the authority,
  so a password holding `@` goes whole), query parameters and `NAME=value` assignments whose
  name says secret (`api_key`, `token`, `sig`, `X_PASSWORD`, ...), command-line flags that do
  (`--api-key X`, `--token=X`), and `Bearer`/`Basic` credentials.
- Literals, for credentials the sidecar was given (its config's URLs and secret keys, the
  OTLP headers, secret-looking environment variables): every occurrence of the exact string
  is replaced, whatever the text around it looks like (a password holding `/`, a value cut
  from its flag).

Redaction runs on plain strings before any escaping (JSON, HTML), so a match never spans
an escape sequence and the replacement never breaks the format it is rendered into.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from itertools import chain
from typing import Any
from urllib.parse import quote, unquote

REDACTED = "<redacted>"

# A name is secret when its last word (split on separators and camelCase) is one of these:
# `api_key`, `X-Api-Key`, `HF_TOKEN`, `accessToken`, `client_secret` are; `max_tokens`,
# `token_count`, `key_file` are not.
SECRET_WORDS = frozenset(
    {
        "key",
        "apikey",
        "token",
        "secret",
        "password",
        "passwd",
        "pwd",
        "pass",
        "passphrase",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "sig",
        "signature",
        "cookie",
        "jwt",
        "headers",  # OTEL_EXPORTER_OTLP_HEADERS=authorization=...: every value is a header
    }
)
# Literal secrets shorter than this are not replaced in free text: "abc" would be replaced
# inside every word that holds it. Patterns still catch them where they stand.
MIN_LITERAL = 4

_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_WORD_SPLIT = re.compile(r"[^a-z0-9]+")

# scheme://userinfo@ - the authority stops at / ? # or whitespace; greedy, so it reaches the
# last @ of the authority (`user:P@ss@host` -> the whole `user:P@ss`).
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^\s/?#<>\"'`]*)@")
# A URL cut inside its userinfo (`http://user:pass` + "..." or the end of a cut string): the
# part after the colon is a password unless it is all digits (then it is host:port); an IPv6
# host ([::1]:8000) is not userinfo.
_URL_CUT = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^\s/?#<>\"'`@:\[\]]*:(?!\d*(?:\u2026|\.\.\.|$))"
    r"[^\s/?#<>\"'`@]*(?=\u2026|\.\.\.|$)"
)
# ?name=value / &name=value / ;name=value (the `;` also covers an HTML `&amp;`).
_QUERY = re.compile(r"(?P<lead>[?&;])(?P<name>[A-Za-z0-9_.\-\[\]]{1,64})=(?P<value>[^&\s#<>\"']*)")
_VALUE = r"(?:\"[^\"]*\"|'[^']*'|[^\s\"']+)"
# NAME=value not inside another word (HF_TOKEN=..., password=...).
_ASSIGN = re.compile(r"(?<![\w.\-/?&;])(?P<name>[A-Za-z_][A-Za-z0-9_.\-]{0,63})=(?P<value>" + _VALUE + ")")
# --flag value / --flag=value / -flag value.
_FLAG = re.compile(
    r"(?<!\S)(?P<flag>--?[A-Za-z][A-Za-z0-9_.\-]{0,63})(?P<sep>=|\s+)(?P<value>" + _VALUE + ")"
)
# 'name': 'value' / "name": "value" (a Python or JSON mapping quoted in a message).
_QUOTED_PAIR = re.compile(
    r"(?P<q>[\"'])(?P<name>[A-Za-z_][A-Za-z0-9_.\-]{0,63})(?P=q)\s*:\s*(?P<value>\"[^\"]*\"|'[^']*')"
)
# `Bearer <token>` anywhere; `Authorization: <scheme> <credentials>` whatever the scheme. A
# credential has a digit or punctuation in it or is long: "the bearer token" is prose.
_CREDENTIAL = r"(?:(?=[A-Za-z]*[0-9._~+/=\-])[A-Za-z0-9._~+/=\-]{4,}|[A-Za-z]{20,})"
_SCHEME_AUTH = re.compile(
    r"(?i)(?:(?P<scheme>\bbearer)(?P<sep>\s+|%20)(?P<value>" + _CREDENTIAL + ")"
    r"|(?P<scheme2>\bauthorization\s*[:=]\s*[A-Za-z][A-Za-z0-9_-]*)(?P<sep2>\s+|%20)"
    r"(?P<value2>[A-Za-z0-9._~+/=\-]{4,}))"
)
# Values that say nothing on their own: a boolean under `*_REQUIRE_TOKEN` is not a secret,
# and replacing every "true" would garble the output.
_NOT_SECRET = frozenset({"true", "false", "yes", "no", "on", "off", "none", "null", "enabled", "disabled"})

_literals: set[str] = set()
_literal_pattern: re.Pattern[str] | None = None


def secret_name(name: str) -> bool:
    """True when a key, variable, flag or parameter name says its value is a credential."""
    words = [w for w in _WORD_SPLIT.split(_CAMEL.sub(r"\1_\2", name).lower()) if w]
    return bool(words) and words[-1] in SECRET_WORDS


def _userinfo(match: re.Match[str]) -> str:
    return match.group("scheme") + REDACTED + "@"


def _named(match: re.Match[str]) -> str:
    found = match.group("value")
    if not found or found.startswith(REDACTED) or found.lower() in _NOT_SECRET:
        return match.group(0)  # nothing there, already redacted (idempotent), or a boolean
    if not secret_name(match.group("name")):
        return match.group(0)
    start, end = match.span("value")
    offset = match.start()
    whole = match.group(0)
    return whole[: start - offset] + REDACTED + whole[end - offset :]


def _flag(match: re.Match[str]) -> str:
    flag, sep, value = match.group("flag"), match.group("sep"), match.group("value")
    if not secret_name(flag.lstrip("-")):
        return match.group(0)
    if value.startswith(REDACTED) or value.lower() in _NOT_SECRET or (sep != "=" and value.startswith("-")):
        return match.group(0)  # `--no-auth --verbose`: the next word is another flag
    return flag + sep + REDACTED


def _scheme_auth(match: re.Match[str]) -> str:
    if match.group("scheme") is not None:
        return match.group("scheme") + match.group("sep") + REDACTED
    return match.group("scheme2") + match.group("sep2") + REDACTED


def text(value: str) -> str:
    """`value` with every credential the patterns or the remembered literals find replaced."""
    if not value:
        return value
    if "://" in value:
        if "@" in value:
            value = _URL_USERINFO.sub(_userinfo, value)
        value = _URL_CUT.sub(lambda m: m.group("scheme") + REDACTED, value)
    if " " in value or "%20" in value:
        value = _SCHEME_AUTH.sub(_scheme_auth, value)
    if "=" in value:
        value = _QUERY.sub(_named, value)
        value = _ASSIGN.sub(_named, value)
    if "-" in value:
        value = _FLAG.sub(_flag, value)
    if ":" in value:
        value = _QUOTED_PAIR.sub(_named, value)
    if _literal_pattern is not None:  # last: what the patterns left, wherever it stands
        value = _literal_pattern.sub(REDACTED, value)
    return value


def value(data: Any) -> Any:
    """A JSON-like value with every string redacted, and the string under a secret-named key
    replaced whole (`{"api_key": "..."}`); numbers, booleans and None pass unchanged."""
    if isinstance(data, str):
        return text(data)
    if isinstance(data, dict):
        out = {}
        for key, item in data.items():
            if isinstance(key, str) and isinstance(item, str) and item and secret_name(key):
                out[text(key)] = REDACTED
            else:
                out[text(key) if isinstance(key, str) else key] = value(item)
        return out
    if isinstance(data, list):
        if data and type(data[0]) is list and _numbers_only(data):
            return data  # /history's [[t, v], ...]: nothing to redact, and the bulk of it
        return [value(item) for item in data]
    if type(data) is tuple:
        return tuple(value(item) for item in data)
    return data


_NUMBER_TYPES = frozenset({float, int})


def _numbers_only(rows: list[Any]) -> bool:
    """True when every item is a list of numbers only (a series' points); set-based, as
    this runs over every point of a /history answer."""
    return set(map(type, rows)) == {list} and set(map(type, chain.from_iterable(rows))) <= _NUMBER_TYPES


# --- what the sidecar was given -------------------------------------------------------------


def remember(*secrets: str) -> None:
    """Literal credentials to replace wherever they appear (and their %-encoded forms)."""
    global _literal_pattern
    added = False
    for secret in secrets:
        for form in {secret, unquote(secret), quote(secret, safe="")}:
            if len(form) < MIN_LITERAL or form.lower() in _NOT_SECRET or form in _literals:
                continue
            if form.replace(".", "", 1).isdigit():
                continue  # a number (a port, a timeout) under a secret-looking name
            _literals.add(form)
            added = True
    if added:
        # Longest first, so a secret that contains another is replaced whole.
        ordered = sorted(_literals, key=len, reverse=True)
        _literal_pattern = re.compile("|".join(re.escape(s) for s in ordered))


def credentials_in(raw: str) -> list[str]:
    """The credentials the patterns would find in `raw`: URL passwords (and tokens given as
    the userinfo alone), secret query and assignment values, secret flag values."""
    found: list[str] = []
    for match in _URL_USERINFO.finditer(raw):
        user, sep, password = match.group("userinfo").partition(":")
        found.append(password if sep else user)
    for pattern in (_QUERY, _ASSIGN, _QUOTED_PAIR):
        for match in pattern.finditer(raw):
            if secret_name(match.group("name")):
                found.append(match.group("value").strip("\"'"))
    for match in _FLAG.finditer(raw):
        if secret_name(match.group("flag").lstrip("-")):
            found.append(match.group("value").strip("\"'"))
    for match in _SCHEME_AUTH.finditer(raw):
        found.append(match.group("value") or match.group("value2"))
    return [item for item in found if item]


def remember_values(values: Iterable[Any]) -> None:
    """Every credential inside these config values (strings, or lists of them)."""
    for item in values:
        for one in item if isinstance(item, list | tuple) else [item]:
            if isinstance(one, str):
                remember(*credentials_in(one))


def remember_environ(environ: Mapping[str, str]) -> None:
    """Credentials in the environment the sidecar runs with (inject copies main's etcd, NATS
    and OTEL settings into it): secret-named variables whole, and credentials inside the
    others (`ETCD_ENDPOINTS=http://user:password@...`). OTLP headers' values one by one."""
    for name, raw in environ.items():
        if not raw:
            continue
        if name.upper().endswith("HEADERS"):
            for item in raw.split(","):
                _, sep, header_value = item.partition("=")
                if sep and header_value.strip():
                    remember(header_value.strip(), *credentials_in(unquote(header_value.strip())))
        elif secret_name(name):
            remember(raw)
        else:
            remember(*credentials_in(raw))


def forget_all() -> None:
    """Tests only: start from no remembered literal."""
    global _literal_pattern
    _literals.clear()
    _literal_pattern = None
