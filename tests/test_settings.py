import subprocess
import sys
from pathlib import Path

import pytest

from settings import ConfigError, Settings

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_need_no_environment_and_make_a_development_token():
    settings = Settings.from_env({})
    assert settings.port == 3000
    assert settings.vapi.base_url == "https://api.vapi.ai"
    assert settings.vapi.audio_format == "pcm_s16le"
    assert settings.keepalive.interval_s == 5.0 and settings.keepalive.pong_timeout_s == 2.0
    assert settings.outbound_max_frames == 1500 and settings.vapi.replay_ms == 2000
    assert settings.twilio.auth_token_generated and len(settings.twilio.auth_token) >= 32


def test_secrets_never_appear_in_the_repr():
    settings = Settings.from_env({"TWILIO_AUTH_TOKEN": "tok-secret-1", "VAPI_API_KEY": "key-secret-2"})
    text = repr(settings)
    assert "tok-secret-1" not in text and "key-secret-2" not in text


@pytest.mark.parametrize(
    "name, value",
    [
        ("PORT", "http"),
        ("PORT", "70000"),
        ("PUBLIC_URL", "ftp://x"),
        ("PUBLIC_URL", "https://x.example/?q=1"),
        ("VAPI_AUDIO_FORMAT", "opus"),
        ("KEEPALIVE_INTERVAL_S", "nan"),
        ("PONG_TIMEOUT_S", "9"),  # not below the 5 s interval
        ("OUTBOUND_MAX_FRAMES", "10"),
        ("LOG_FORMAT", "xml"),
        ("VAD_THRESHOLD_DB", "-3"),
        ("TRUSTED_PROXIES", "-1"),
        ("TRUSTED_PROXIES", "all"),
        ("CALL_RECORDS_RETENTION_DAYS", "-1"),
        ("BARGE_IN_RESUME_MS", "6000"),
    ],
)
def test_a_bad_value_names_the_variable_and_what_is_allowed(name, value):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    assert info.value.name == name
    assert value in str(info.value) and "expected" in str(info.value)


def test_run_py_exits_2_with_one_line_before_binding_a_port(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py")],
        cwd=tmp_path,  # no .env of the checkout's
        env={"PATH": "/usr/bin:/bin", "PORT": "not-a-port"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "PORT" in lines[0] and "not-a-port" in lines[0]


def test_only_settings_reads_the_environment():
    offenders = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", ".venv", "bench", "sims") or rel.name in ("settings.py", "run.py"):
            continue
        # prometheus-client's multiprocess mode is switched on through its own variable,
        # which observability/metrics.py writes (for the workers) and never reads.
        text = path.read_text().replace("os.environ[MULTIPROC_ENV] = ", "")
        if "os.environ" in text or "getenv(" in text:
            offenders.append(str(rel))
    assert offenders == []


KEY, TOK = "vapi-key-secret", "twilio-token-secret"


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, []),  # the development server: its simulator, loopback and generated token are the point
        ({"VAPI_API_KEY": KEY, "TWILIO_AUTH_TOKEN": TOK, "PUBLIC_URL": "https://bridge.example.com"}, []),
        ({"VAPI_API_KEY": KEY, "TWILIO_AUTH_TOKEN": TOK}, ["PUBLIC_URL"]),  # the default: loopback
        ({"VAPI_API_KEY": KEY, "TWILIO_AUTH_TOKEN": TOK, "PUBLIC_URL": "https://10.1.2.3"}, ["PUBLIC_URL"]),
        ({"VAPI_API_KEY": KEY, "TWILIO_AUTH_TOKEN": TOK, "PUBLIC_URL": "https://192.168.0.7:8443"}, ["PUBLIC_URL"]),
        ({"VAPI_API_KEY": KEY, "TWILIO_AUTH_TOKEN": TOK, "PUBLIC_URL": "http://localhost:3000"}, ["PUBLIC_URL"]),
        ({"VAPI_API_KEY": KEY, "TWILIO_AUTH_TOKEN": TOK, "PUBLIC_URL": "https://[::1]:3000"}, ["PUBLIC_URL"]),
        ({"VAPI_API_KEY": KEY, "PUBLIC_URL": "https://bridge.example.com"}, ["TWILIO_AUTH_TOKEN"]),
        ({"VAPI_API_KEY": KEY}, ["PUBLIC_URL", "TWILIO_AUTH_TOKEN"]),
    ],
)
def test_production_warnings_name_settings_that_cannot_work_with_a_real_twilio(env, expected):
    warnings = Settings.from_env(env).production_warnings()
    assert [name for name, _ in warnings] == expected
    for _, problem in warnings:
        assert "\n" not in problem and KEY not in problem and TOK not in problem


def test_fleet_settings_default_to_one_process_named_for_this_host():
    fleet = Settings.from_env({}).fleet
    assert fleet.redis_url is None and fleet.directory_path is None and fleet.fleet_secret is None
    assert fleet.node_name and all(c.isalnum() or c in "._-" for c in fleet.node_name)


def test_relay_ports_are_a_range_or_one_port():
    assert Settings.from_env({}).fleet.relay_ports is None  # any free port
    assert Settings.from_env({"RELAY_PORTS": "4100-4107"}).fleet.relay_ports == (4100, 4107)
    assert Settings.from_env({"RELAY_PORTS": "4100"}).fleet.relay_ports == (4100, 4100)
    for value in ("4107-4100", "0-10", "4100-70000", "a-b", "4100-4101-4102"):
        with pytest.raises(ConfigError) as info:
            Settings.from_env({"RELAY_PORTS": value})
        assert info.value.name == "RELAY_PORTS"


@pytest.mark.parametrize("value", ["node a", "n/../x", "x" * 65, "ünïcode"])
def test_a_node_id_that_could_not_go_into_logs_and_keys_is_refused(value):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"NODE_ID": value})
    assert info.value.name == "NODE_ID"


def test_a_bad_redis_url_is_refused_without_echoing_it_and_fleet_secrets_stay_out_of_the_repr():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"REDIS_URL": "http://:hunter2@redis.internal:6379"})
    assert info.value.name == "REDIS_URL" and "hunter2" not in str(info.value)
    settings = Settings.from_env({"REDIS_URL": "redis://:hunter2@redis.internal:6379/0", "FLEET_SECRET": "s3cret-7"})
    assert settings.fleet.redis_url == "redis://:hunter2@redis.internal:6379/0"
    assert "hunter2" not in repr(settings) and "s3cret-7" not in repr(settings)
