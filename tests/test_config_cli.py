"""Configuration precedence and errors, and the command line's behaviour for users."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sockway.config import ConfigError, load_config
from support import ROOT, free_port, gateway


def write(tmp_path, text: str):
    path = tmp_path / "sockway.toml"
    path.write_text(text)
    return path


def test_precedence_defaults_file_env_flags(tmp_path):
    path = write(tmp_path, '[server]\nport = 9001\nhost = "0.0.0.0"\nmax_connections = 7\n'
                           '[[endpoint]]\nprefix = "/chat"\nmode = "broadcast"\nhistory = 3\n')
    config = load_config(path, env={})
    assert (config.host, config.port, config.max_connections) == ("0.0.0.0", 9001, 7)
    assert config.endpoints[0].history == 3
    config = load_config(path, env={"SOCKWAY_PORT": "9002", "SOCKWAY_ALLOWED_ORIGINS": "https://a.example, https://b.example"})
    assert config.port == 9002 and config.host == "0.0.0.0"
    assert config.allowed_origins == ["https://a.example", "https://b.example"]
    config = load_config(path, env={"SOCKWAY_PORT": "9002"}, overrides={"port": 9003, "host": None})
    assert config.port == 9003 and config.host == "0.0.0.0"
    assert load_config(None, env={}).port == 8080


def test_endpoint_defaults_and_flag_endpoints(tmp_path):
    path = write(tmp_path, "[endpoint_defaults]\nheartbeat_delay = 10\n"
                           '[[endpoint]]\nprefix = "/a"\n[[endpoint]]\nprefix = "/b"\nheartbeat_delay = 3\n')
    config = load_config(path, env={})
    assert [e.heartbeat_delay for e in config.endpoints] == [10, 3]
    config = load_config(path, env={}, extra_endpoints=[{"prefix": "/x", "mode": "echo"}])
    assert [e.prefix for e in config.endpoints] == ["/x"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nprot = 1\n", "unknown key(s) prot"),
        ("[server]\nport = 'abc'\n", "port must be an integer"),
        ("[server]\nport = 70000\n", "not between 0 and 65535"),
        ("[[endpoint]]\nmode = 'echo'\n", "needs a prefix"),
        ("[[endpoint]]\nprefix = 'chat'\n", "must start with '/'"),
        ("[[endpoint]]\nprefix = '/a'\n[[endpoint]]\nprefix = '/a'\n", "declared twice"),
        ("[[endpoint]]\nprefix = '/a'\ndeflate_window_bits = 20\n", "between 9 and 15"),
        ("[servers]\n", "unknown table(s) servers"),
        ("[server\n", "config file"),
        ("[server]\ncert = 'a.pem'\n", "needs both cert and key"),
        ("[server]\nmax_connections = -3\n", "[server]: max_connections must be at least 1 (got -3)"),
        ("[server]\nsweep_interval = 0\n", "sweep_interval must be a positive number of seconds"),
        ("[[endpoint]]\nprefix = '/a'\nmax_buffer = 0\n", "endpoint /a: max_buffer must be at least 1"),
        ("[[endpoint]]\nprefix = '/a'\nrate_burst = -1\n", "endpoint /a: rate_burst must not be negative"),
        ("[[namespace]]\nname = 'news'\nhistory_size = -5\n", "namespace 'news': history_size must not be"),
        ("[auth]\nleeway = -1\n", "[auth]: leeway must not be negative"),
        ("[zeromq]\nhwm = -1\n", "[zeromq]: hwm must not be negative"),
        ("[webhook]\nurl = 'http://127.0.0.1:1/'\ntimeout = 0\n", "[webhook] timeout must be a positive"),
        ("[[tunnel]]\nlisten = '127.0.0.1:7070'\nmax_line = 0\n", "max_line must be at least 1"),
        ("[broker]\nurl = 'foo://x'\n", "[broker] url: unknown broker 'foo://x'"),
        ("[broker]\nurl = 'nats://127.0.0.1:4222?batch=abc'\n", "option batch must be a whole number"),
        ("[broker]\nurl = 'nats://127.0.0.1:4222?bach=10'\n", "option 'bach' is unknown"),
        ("[broker]\nurl = 'redis://127.0.0.1:6379/0?presence_tll=10'\n", "option 'presence_tll' is unknown"),
        ("[broker]\nurl = 'redis://127.0.0.1:6379/0?timeout=0'\n", "option timeout must be a positive number"),
        ("[broker]\nurl = 'redis://127.0.0.1:6379/0?sessions=maybe'\n", "option sessions must be on or off"),
        ("[broker]\nurl = 'nats://127.0.0.1:4222?prefix=a.>'\n", "option prefix must be a word"),
        ("[broker]\nurl = 'nats://127.0.0.1:4222?events=mine'\n", "option events takes on or off with NATS"),
        ("[broker]\nurl = 'nats://127.0.0.1:4222?replicas=7'\n", "option replicas must be 1 to 5"),
        ("[broker]\nurl = 'redis://127.0.0.1:6379/0?replicas=3'\n", "option replicas is for NATS"),
        ("[broker]\nurl = 'nats://a:4222,b:x'\n", "'nats://b:x' is not a NATS server address"),
    ],
)
def test_config_errors_say_what_to_change(tmp_path, text, message):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text), env={})
    assert message in str(exc.value)


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sockway", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL)


def test_help_and_version():
    result = run_cli("--help")
    assert result.returncode == 0 and "serve" in result.stdout and "testserver" in result.stdout
    assert "Precedence" in result.stdout
    assert run_cli("serve", "--help").returncode == 0
    assert run_cli("--version").stdout.startswith("sockway ")
    assert run_cli().returncode == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--config", "/nonexistent/sockway.toml"], "not found"),
        (["serve", "--endpoint", "/chat"], "PREFIX=MODE"),
        (["serve", "--endpoint", "/chat=nosuchmode"], "unknown mode 'nosuchmode'"),
        (["serve", "--port", "99999"], "not between"),
        (["serve", "--max-connections", "-3"], "max_connections must be at least 1"),
        (["trace", "--count", "-5"], "argument --count/-n: must be at least 1, not -5"),
        (["tail", "events", "--timeout", "0"], "argument --timeout: must be a positive number of seconds"),
        (["cat", "ws://127.0.0.1:1/", "--count", "abc"], "argument --count/-n: not a whole number: 'abc'"),
        (["publish", "--redis", "redis://127.0.0.1:6379/0?bogus=1", "room", "hi"],
         "--redis redis://127.0.0.1:6379/0?bogus=1: option 'bogus' is unknown"),
        (["tail", "channel", "room", "--nats", "nats://127.0.0.1:4222?timeout=-1"],
         "option timeout must be a positive number of seconds, not '-1'"),
    ],
)
def test_cli_errors_exit_nonzero_with_a_message(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_broker_url_from_the_environment_is_a_configuration_error():
    import os

    result = subprocess.run([sys.executable, "-m", "sockway", "serve", "--port", "0"], capture_output=True,
                            text=True, timeout=20, cwd=ROOT, stdin=subprocess.DEVNULL,
                            env={**os.environ, "SOCKWAY_BROKER_URL": "nats://127.0.0.1:4222?batch=abc"})
    assert result.returncode == 2
    assert result.stderr.strip() == ("sockway: configuration error: [broker] url: option batch must be a whole "
                                     "number of at least 1, not 'abc'")


@pytest.mark.parametrize("url", [
    "memory://", "redis://127.0.0.1:6379/0", "rediss://h:6380/1?ssl_cert_reqs=none&prefix=app:rt",
    "unix:///run/redis.sock?db=2&events=app:events", "nats://127.0.0.1:4222?batch=1&events=on&prefix=app.rt",
    "tls://h:4222?session_ttl=7.5&commands=off", "redis://h/0?socket_keepalive=true&health_check_interval=5",
    "nats://a:4222,nats://b:4222,c:4222?replicas=3", "nats://u:p@a:4222,tls://b:4443",
])
def test_broker_urls_users_write_are_accepted(url):
    from sockway.brokers.urls import check_broker_url

    check_broker_url(url)


def test_port_in_use_is_explained():
    port = free_port()
    with gateway(["serve"], port=port):
        result = run_cli("serve", "--port", str(port))
    assert result.returncode == 1
    assert "in use" in result.stderr


def test_json_logs():
    import json

    port = free_port()
    with gateway(["serve", "--log-format", "json"], port=port) as proc:
        pass
    lines = [line for line in proc.output().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert any("listening on" in r["message"] for r in records)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
