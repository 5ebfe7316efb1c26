"""One configuration for every `baton` command, merged from three sources: a `baton.toml`
file, the environment, and the command's flags, later ones overriding earlier ones
(flags > environment > file > defaults). Pure: the caller reads the file and hands over
its text, the environment as a mapping and the flags given; nothing here does I/O.

The keys (the same name in the file, `BATON_<KEY>` in the environment as `ENV` says,
`--<key>` for the three that are flags):

- `store`: `"jetstream"` or `"sqlite:PATH"`; `BATON_STORE`, `--store`; default the state
  directory's `events.db`.
- `replicas`: of every JetStream stream Baton creates; `BATON_REPLICAS`, `--replicas`; 1.
- `nats`: server URLs, a list (or comma-separated in `BATON_NATS_URL` and `--nats`);
  default none: the state directory's embedded server.
- `creds`, `nkey`: a NATS creds file, a user nkey seed file; `BATON_NATS_CREDS`,
  `BATON_NATS_NKEY`.
- `tls_ca`, `tls_cert`, `tls_key`: the authority to trust, a client certificate and its
  key; `BATON_TLS_CA`, `BATON_TLS_CERT`, `BATON_TLS_KEY`.
- `prices`: what each model's tokens cost, a table by model name, each with `input` and
  `output` (per million tokens, 0 or more) and `currency` (letters, e.g. `USD`); in
  `BATON_PRICES` the same table as a JSON object, which replaces the file's whole table.
  No default: a model without a price has no cost (the console says so).

Bad input of any source is a `ConfigError` naming the source (the file and line, the
variable, the flag) and the key; nothing is merged from a configuration that has one.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any, Final

import msgspec

from bus.errors import BusError

__all__ = ["ENV", "FLAGS", "Config", "ConfigError", "FileSource", "Price", "merge", "parse_file"]

MAX_REPLICAS: Final = 5
"""JetStream's own limit on a stream's replicas."""
NATS_SCHEMES: Final = ("nats", "tls", "ws", "wss")

ENV: Final[Mapping[str, str]] = {
    "store": "BATON_STORE",
    "replicas": "BATON_REPLICAS",
    "nats": "BATON_NATS_URL",
    "creds": "BATON_NATS_CREDS",
    "nkey": "BATON_NATS_NKEY",
    "tls_ca": "BATON_TLS_CA",
    "tls_cert": "BATON_TLS_CERT",
    "tls_key": "BATON_TLS_KEY",
    "prices": "BATON_PRICES",
}
"""The environment variable of each key."""
FLAGS: Final[Mapping[str, str]] = {"store": "--store", "replicas": "--replicas", "nats": "--nats"}
"""The keys a command line may set, and their flags."""


class ConfigError(BusError):
    """A configuration value Baton cannot use: where it came from (`source`: a file with
    its line, `$VARIABLE` or `--flag`), the key, and why."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        named = key and not source.startswith(("$", "--"))
        where = f"{source}: {key}" if named else source
        super().__init__(f"configuration {where}: {reason}")
        self.source = source
        self.key = key
        self.reason = reason


class Price(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a model's tokens cost: `input` and `output` per million tokens, in `currency`."""

    input: float
    output: float
    currency: str


MODEL_NAME_MAX: Final = 200
_CURRENCY: Final = re.compile(r"[A-Za-z]{1,16}")


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The merged configuration: where the event log is, which NATS, and how to log in."""

    store: str = ""
    """'' (the state directory's SQLite `events.db`), `jetstream`, or `sqlite:PATH`."""
    replicas: int = 1
    """Replicas of every JetStream stream Baton creates (the inbox, the event log...)."""
    nats: tuple[str, ...] = ()
    """NATS server URLs ('' none: the embedded server of the state directory)."""
    creds: str = ""
    nkey: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    prices: dict[str, Price] = {}
    """Each model's price, by the model's name (as its agents announce it)."""

    @property
    def jetstream(self) -> bool:
        return self.store == "jetstream"

    @property
    def sqlite_path(self) -> str:
        """The SQLite file `store` names ('' the default one)."""
        return self.store.removeprefix("sqlite:") if self.store.startswith("sqlite:") else ""

    @property
    def nats_url(self) -> str:
        """The servers as one comma-separated string (what `--nats` and
        `$BATON_NATS_URL` carry); '' for the embedded server."""
        return ",".join(self.nats)

    def environ(self) -> dict[str, str]:
        """The login and TLS keys as environment variables (what a child process and the
        NATS connection read), with '' for those not set."""
        return {ENV[key]: getattr(self, key) for key in ("creds", "nkey", *_TLS)}


_TLS: Final = ("tls_ca", "tls_cert", "tls_key")


class FileSource(msgspec.Struct, frozen=True):
    """A `baton.toml` as read: its name (for errors) and text."""

    name: str
    text: str


class _File(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    store: str | None = None
    replicas: int | None = None
    nats: list[str] | str | None = None
    creds: str | None = None
    nkey: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    prices: Any = None


_FIELD: Final = re.compile(r"at `\$\.([A-Za-z0-9_]+)|unknown field `([^`]*)`")


def _line_of(text: str, key: str) -> int:
    """The line `key = ...` is on (1-based), 0 if it is nowhere."""
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return 0


def parse_file(source: FileSource) -> dict[str, tuple[str, object]]:
    """The keys `source` sets, each with where it was set (`FILE line N`)."""
    try:
        raw = tomllib.loads(source.text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source.name, "", f"not valid TOML: {exc}") from None
    try:
        parsed = msgspec.convert(raw, _File)
    except msgspec.ValidationError as exc:
        found = _FIELD.findall(str(exc))
        key = next((a or b for a, b in found), "")
        line = _line_of(source.text, key) if key else 0
        where = f"{source.name} line {line}" if line else source.name
        reason = str(exc).split(" - at ")[0].replace(" | null", "")
        if reason.startswith("Object contains unknown field"):
            reason = f"unknown key (known: {', '.join(ENV)})"
        raise ConfigError(where, key, reason) from None
    values: dict[str, tuple[str, object]] = {}
    for key in ENV:
        value = getattr(parsed, key)
        if value is None:
            continue
        line = _line_of(source.text, key)
        where = f"{source.name} line {line}" if line else source.name
        if key == "nats":
            value = _urls(where, [value] if isinstance(value, str) else value)
        if key == "prices":
            value = _prices(where, value)
        values[key] = (where, value)
    return values


def _urls(where: str, given: Iterable[str]) -> tuple[str, ...]:
    """NATS URLs, each split at commas, blanks dropped."""
    urls = tuple(u.strip() for item in given for u in item.split(",") if u.strip())
    for url in urls:
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in NATS_SCHEMES or not rest or any(c.isspace() for c in url):
            raise ConfigError(
                where, "nats", f"{url!r} is not a NATS URL (scheme {', '.join(NATS_SCHEMES)})"
            )
    return urls


def _prices(where: str, given: object) -> dict[str, Price]:
    """A price table, each entry checked: a model name, two finite prices of 0 or more,
    a currency."""
    if not isinstance(given, dict):
        raise ConfigError(where, "prices", "must be a table of models, each with its price")
    table: dict[str, Price] = {}
    for model, raw in given.items():
        named = f"model {model!r}"
        if not model.strip() or len(model) > MODEL_NAME_MAX or not model.isprintable():
            raise ConfigError(
                where,
                "prices",
                f"{model!r} is not a model name (1 to {MODEL_NAME_MAX} printable characters)",
            )
        try:
            price = msgspec.convert(raw, Price)
        except msgspec.ValidationError as exc:
            field = str(exc).rpartition("$.")[2].rstrip("`") if "$." in str(exc) else ""
            reason = str(exc).split(" - at ")[0]
            if reason.startswith("Object contains unknown field"):
                reason = f"{reason} (known: input, output, currency)"
            at = f" {field}" if field else ""
            raise ConfigError(where, "prices", f"{named}{at}: {reason}") from None
        for name in ("input", "output"):
            value = getattr(price, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(
                    where, "prices", f"{named} {name}: {value} is not a price (0 or more)"
                )
        if not _CURRENCY.fullmatch(price.currency):
            raise ConfigError(
                where, "prices", f"{named} currency: {price.currency!r} is not 1 to 16 letters"
            )
        table[model] = price
    return table


def _from_text(where: str, key: str, text: str) -> object:
    """A value given as text (a variable, a flag) as its key's type."""
    if key == "replicas":
        try:
            return int(text)
        except ValueError:
            raise ConfigError(where, key, f"{text!r} is not a whole number") from None
    if key == "nats":
        return _urls(where, [text])
    if key == "prices":
        try:
            decoded = json.loads(text)
        except ValueError as exc:
            raise ConfigError(where, key, f"not a JSON object: {exc}") from None
        return _prices(where, decoded)
    return text


def merge(
    file: FileSource | None, environ: Mapping[str, str], flags: Mapping[str, str | None]
) -> Config:
    """The configuration `file`, then `environ`, then `flags` (by key: store, replicas,
    nats; None for a flag not given) make, each overriding the ones before. An empty
    variable counts as not set, as it always has for Baton's variables."""
    chosen: dict[str, tuple[str, object]] = parse_file(file) if file is not None else {}
    for key, variable in ENV.items():
        if text := environ.get(variable, ""):
            chosen[key] = (f"${variable}", _from_text(f"${variable}", key, text))
    for key, given in flags.items():
        if key not in FLAGS:
            raise ConfigError(f"--{key}", key, "not a configuration flag")
        if given is not None:
            chosen[key] = (FLAGS[key], _from_text(FLAGS[key], key, given))
    _check(chosen)
    values: dict[str, Any] = {key: value for key, (_, value) in chosen.items()}
    return Config(**values)


def _check(chosen: Mapping[str, tuple[str, Any]]) -> None:
    """Each value, and the ones that go together."""

    def value(key: str) -> Any:
        return chosen[key][1] if key in chosen else getattr(_DEFAULTS, key)

    def source(key: str) -> str:
        return chosen[key][0] if key in chosen else "default"

    store = value("store")
    if store not in ("", "jetstream") and not (store.startswith("sqlite:") and store[7:]):
        raise ConfigError(
            source("store"), "store", f"{store!r}: must be 'jetstream' or 'sqlite:PATH'"
        )
    replicas = value("replicas")
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ConfigError(
            source("replicas"), "replicas", f"{replicas} is not between 1 and {MAX_REPLICAS}"
        )
    if store == "jetstream" and not value("nats"):
        raise ConfigError(
            source("store"),
            "store",
            "'jetstream' needs NATS servers to keep the log on (nats in baton.toml, "
            "$BATON_NATS_URL or --nats)",
        )
    if replicas > 1 and not value("nats"):
        raise ConfigError(
            source("replicas"),
            "replicas",
            f"{replicas} replicas need a NATS cluster (nats in baton.toml, $BATON_NATS_URL "
            "or --nats); the embedded server is one server",
        )
    if bool(value("tls_cert")) != bool(value("tls_key")):
        key = "tls_cert" if value("tls_cert") else "tls_key"
        raise ConfigError(source(key), key, "tls_cert and tls_key go together: give both")
    if value("creds") and value("nkey"):
        raise ConfigError(source("nkey"), "nkey", "give creds or nkey, not both")


_DEFAULTS: Final = Config()
