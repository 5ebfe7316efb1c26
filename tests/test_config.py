"""The one configuration (`bus.config`): baton.toml, then the environment, then flags,
later ones winning; every bad value a `ConfigError` naming where it came from and its key.
Pure: no file, no process environment, no server."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.config import ENV, FLAGS, Config, ConfigError, FileSource, Price, merge

FILE = "/srv/baton/baton.toml"


def _file(text: str) -> FileSource:
    return FileSource(FILE, text)


def test_nothing_configured_is_todays_default() -> None:
    config = merge(None, {}, {})
    assert config == Config()
    assert (config.store, config.replicas, config.nats, config.jetstream) == ("", 1, (), False)
    assert config.sqlite_path == ""
    assert config.nats_url == ""


def test_a_full_file() -> None:
    config = merge(
        _file(
            'store = "jetstream"\nreplicas = 3\n'
            'nats = ["nats://a:4222", "tls://b:4222"]\n'
            'creds = "/etc/baton/orch.creds"\n'
            'tls_ca = "/etc/ca.pem"\ntls_cert = "/etc/c.pem"\ntls_key = "/etc/k.pem"\n'
        ),
        {},
        {},
    )
    assert config.jetstream
    assert config.replicas == 3
    assert config.nats == ("nats://a:4222", "tls://b:4222")
    assert config.nats_url == "nats://a:4222,tls://b:4222"
    assert config.environ() == {
        "BATON_NATS_CREDS": "/etc/baton/orch.creds",
        "BATON_NATS_NKEY": "",
        "BATON_TLS_CA": "/etc/ca.pem",
        "BATON_TLS_CERT": "/etc/c.pem",
        "BATON_TLS_KEY": "/etc/k.pem",
    }


def test_comma_separated_servers_from_the_environment_and_a_flag() -> None:
    env = {"BATON_NATS_URL": "nats://a:1, nats://b:2"}
    assert merge(None, env, {}).nats == ("nats://a:1", "nats://b:2")
    assert merge(None, env, {"nats": "nats://c:3"}).nats == ("nats://c:3",)
    assert merge(None, {}, {"store": "sqlite:/tmp/x.db"}).sqlite_path == "/tmp/x.db"


def test_an_empty_variable_is_not_set() -> None:
    config = merge(_file("replicas = 2\nnats = 'nats://a:1'\n"), {"BATON_REPLICAS": ""}, {})
    assert config.replicas == 2


@pytest.mark.parametrize(
    ("text", "where", "key"),
    [
        ('store = "jetstream"\nstor = "x"\n', f"{FILE} line 2", "stor"),
        ('\n\nreplicas = "three"\n', f"{FILE} line 3", "replicas"),
        ("replicas = 9\nnats = 'nats://a:1'\n", f"{FILE} line 1", "replicas"),
        ('store = "postgres:x"\n', f"{FILE} line 1", "store"),
        ('store = "sqlite:"\n', f"{FILE} line 1", "store"),
        ('nats = ["http://a:80"]\n', f"{FILE} line 1", "nats"),
        ("nats = [1]\n", f"{FILE} line 1", "nats"),
        ('store = "jetstream"\n', f"{FILE} line 1", "store"),
        ('tls_cert = "c.pem"\n', f"{FILE} line 1", "tls_cert"),
        ('creds = "a"\nnkey = "b"\n', f"{FILE} line 2", "nkey"),
        ("replicas = 3\n", f"{FILE} line 1", "replicas"),
        ("store = \n", FILE, ""),
    ],
)
def test_a_bad_file_names_its_line_and_key(text: str, where: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        merge(_file(text), {}, {})
    assert caught.value.source == where
    assert caught.value.key == key
    assert str(caught.value).startswith(f"configuration {where}")


@pytest.mark.parametrize(
    ("env", "flags", "source"),
    [
        ({"BATON_REPLICAS": "x"}, {}, "$BATON_REPLICAS"),
        ({"BATON_STORE": "mysql"}, {}, "$BATON_STORE"),
        ({"BATON_NATS_URL": "a:1"}, {}, "$BATON_NATS_URL"),
        ({}, {"replicas": "0"}, "--replicas"),
        ({}, {"store": "jetstream"}, "--store"),
        ({}, {"nats": "nats://a:1,ftp://b"}, "--nats"),
    ],
)
def test_a_bad_variable_or_flag_names_itself(
    env: dict[str, str], flags: dict[str, str], source: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        merge(None, env, flags)
    assert caught.value.source == source
    assert str(caught.value).startswith(f"configuration {source}: ")


def test_a_later_source_can_mend_an_earlier_ones_combination() -> None:
    # the file alone is refused (jetstream needs servers); the flag completes it
    config = merge(_file('store = "jetstream"\n'), {}, {"nats": "nats://a:1"})
    assert config.jetstream
    assert config.nats == ("nats://a:1",)


_VALUES = {
    "store": st.sampled_from(["jetstream", "sqlite:/a.db", "sqlite:b/c.db"]),
    "replicas": st.integers(1, 5),
    "nats": st.lists(
        st.sampled_from(["nats://a:1", "nats://b:2", "tls://c:3"]), min_size=1, max_size=3
    ).map(tuple),
}


def _toml(key: str, value: object) -> str:
    if isinstance(value, tuple):
        return f"{key} = [{', '.join(repr(v).replace(chr(39), chr(34)) for v in value)}]"
    if isinstance(value, int):
        return f"{key} = {value}"
    return f'{key} = "{value}"'


def _text(key: str, value: object) -> str:
    return ",".join(value) if isinstance(value, tuple) else str(value)


_layer = st.fixed_dictionaries({}, optional=_VALUES)


@settings(max_examples=300, deadline=None)
@given(file=_layer, env=_layer, flags=_layer)
def test_flags_over_environment_over_file_over_defaults(
    file: dict[str, object], env: dict[str, object], flags: dict[str, object]
) -> None:
    expected = {key: getattr(Config(), key) for key in FLAGS}
    expected |= file
    expected |= env
    expected |= flags
    needs_servers = expected["store"] == "jetstream" or expected["replicas"] != 1
    source = _file("\n".join(_toml(k, v) for k, v in file.items()) + "\n") if file else None
    environ = {ENV[k]: _text(k, v) for k, v in env.items()}
    given_flags = {k: (_text(k, flags[k]) if k in flags else None) for k in FLAGS}
    if needs_servers and not expected["nats"]:
        with pytest.raises(ConfigError):
            merge(source, environ, given_flags)
        return
    config = merge(source, environ, given_flags)
    assert {key: getattr(config, key) for key in FLAGS} == expected


PRICES = '[prices."gpt-4o-mini"]\ninput = 0.15\noutput = 0.6\ncurrency = "USD"\n'


def test_prices_from_the_file_and_the_environment_which_replaces_the_files_table() -> None:
    config = merge(_file(PRICES), {}, {})
    assert config.prices == {"gpt-4o-mini": Price(0.15, 0.6, "USD")}
    env = {"BATON_PRICES": '{"local": {"input": 0, "output": 2, "currency": "EUR"}}'}
    assert merge(_file(PRICES), env, {}).prices == {"local": Price(0.0, 2.0, "EUR")}
    assert merge(None, {}, {}).prices == {}


@pytest.mark.parametrize(
    ("table", "said"),
    [
        ('{"m": {"input": -1, "output": 1, "currency": "USD"}}', "model 'm' input: -1.0 is not"),
        ('{"m": {"input": 1, "output": NaN, "currency": "USD"}}', "model 'm' output: nan is not"),
        ('{"m": {"input": 1e999, "output": 1, "currency": "USD"}}', "model 'm' input: inf"),
        ('{"m": {"input": true, "output": 1, "currency": "USD"}}', "Expected `float`, got `bool`"),
        ('{"m": {"input": "1", "output": 1, "currency": "USD"}}', "model 'm' input: Expected"),
        ('{"m": {"input": 1, "output": 1}}', "missing required field `currency`"),
        ('{"m": {"input": 1, "output": 1, "currency": "U$"}}', "model 'm' currency: 'U$'"),
        ('{"m": {"input": 1, "output": 1, "currency": "USD", "per": 1}}', "unknown field `per`"),
        ('{"": {"input": 1, "output": 1, "currency": "USD"}}', "'' is not a model name"),
        ('{"m": 3}', "model 'm': Expected `object`, got `int`"),
        ("[1]", "must be a table of models"),
        ("prices", "not a JSON object"),
    ],
)
def test_a_bad_price_is_a_config_error_naming_the_model_and_what(table: str, said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        merge(_file(PRICES), {"BATON_PRICES": table}, {})
    assert caught.value.source == "$BATON_PRICES"
    assert said in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("prices = 3\n", "must be a table of models"),
        ('[prices.m]\ninput = "x"\noutput = 1\ncurrency = "USD"\n', "model 'm' input: Expected"),
        ("[prices.m]\ninput = 1\noutput = -2\ncurrency = 'USD'\n", "model 'm' output: -2.0"),
    ],
)
def test_a_bad_price_in_the_file_names_the_file(text: str, said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        merge(_file(text), {}, {})
    assert caught.value.source.startswith(FILE)
    assert caught.value.key == "prices"
    assert said in str(caught.value), str(caught.value)
