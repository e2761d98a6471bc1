"""The real-process fixtures of tests/services.py: each service comes up on loopback and answers."""

from __future__ import annotations

import socket

import requests

from tests.services import NginxServer, PostgresServer, RedisServer, free_port


def test_redis_answers_commands(redis_server: RedisServer):
    assert redis_server.ping()
    assert redis_server.command("SET", "test:services", "hello") == b"+OK\r\n"
    assert redis_server.command("GET", "test:services") == b"$5\r\nhello\r\n"
    assert redis_server.command("DEL", "test:services") == b":1\r\n"


def test_postgres_runs_sql_in_its_database(postgres_server: PostgresServer):
    assert postgres_server.ready()
    out = postgres_server.psql(postgres_server.database, "SELECT current_database(), current_user, 6 * 7")
    assert out.strip() == "bridge|postgres|42"


def test_postgres_makes_a_fresh_database_and_restarts_on_the_same_port(postgres_server: PostgresServer):
    url = postgres_server.create_database("services_check")
    assert url.endswith(f":{postgres_server.port}/services_check")
    postgres_server.psql("services_check", "CREATE TABLE t (x int); INSERT INTO t VALUES (7)")
    postgres_server.stop()
    assert not postgres_server.ready()
    postgres_server.start()
    assert postgres_server.psql("services_check", "SELECT x FROM t").strip() == "7"


def test_nginx_proxies_to_a_loopback_upstream(nginx_server: NginxServer):
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(8)
    port = free_port()
    nginx_server.start(
        f"""
    server {{
        listen 127.0.0.1:{port};
        location = /direct {{ return 200 "nginx here\\n"; }}
        location / {{ proxy_pass http://127.0.0.1:{upstream.getsockname()[1]}; }}
    }}""",
        port,
    )
    try:
        assert requests.get(f"{nginx_server.url}/direct", timeout=5).text == "nginx here\n"
        # A dead upstream (accepted, then closed with nothing said) is nginx's 502, not a hang.
        upstream.close()
        assert requests.get(f"{nginx_server.url}/anything", timeout=10).status_code == 502
        assert "GET /direct" in nginx_server.access_log
    finally:
        upstream.close()
