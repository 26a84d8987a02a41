"""The ``state`` and ``console`` sections: named defaults, and a clear error per bad value."""

from __future__ import annotations

import pytest

from sidecar.config import ConfigError, parse_settings
from sidecar.state import SqliteStateDb, StateError, open_state, read_dsn
from sidecar.state.migrations import migrations, pending, statements

IDENTITY = {"identity": {"mode": "static", "spiffe_id": "spiffe://demo.example/agent/a"}}


def _parse(tmp_path, **sections):
    return parse_settings(IDENTITY | sections, source=tmp_path / "c.yaml")


def test_defaults_are_the_embedded_store_and_a_loopback_console(tmp_path):
    settings = _parse(tmp_path)
    assert settings.state.backend == "sqlite"
    assert settings.state.postgres.pool_size == 4
    assert settings.console.listen == "127.0.0.1:7490" and settings.console.auth == "proxy"
    assert settings.console.trusted_proxies == ("127.0.0.1/32", "::1/128")


@pytest.mark.parametrize(
    ("sections", "key", "message"),
    [
        ({"state": {"backend": "mysql"}}, "state.backend", "is not one of sqlite, postgres"),
        ({"state": {"backend": "postgres"}}, "state.postgres", "needs postgres.dsn_file"),
        ({"state": {"postgres": {"pool_size": 0}}}, "state.postgres.pool_size", "1..64"),
        ({"state": {"postgres": {"pool_size": "4"}}}, "state.postgres.pool_size", "integer"),
        ({"state": {"postgres": {"statement_timeout_ms": 5}}}, "statement_timeout_ms", "10..60000"),
        ({"state": {"postgres": {"dsn": "postgresql://x"}}}, "state.postgres.dsn", "unknown key"),
        ({"console": {"listen": "7490"}}, "console.listen", "is not HOST:PORT"),
        ({"console": {"auth": "basic"}}, "console.auth", "is not one of proxy, mtls"),
        ({"console": {"trusted_proxies": ["proxy.local"]}}, "trusted_proxies", "not an IP"),
        ({"console": {"auth": "mtls"}}, "console.tls_cert_file", "auth mtls needs"),
        ({"console": {"tls_cert_file": "c.pem"}}, "console.auth", "auth is proxy"),
        ({"console": {"user_header": "X User"}}, "console.user_header", "not a header name"),
        ({"console": {"page_size": 0}}, "console.page_size", "1..500"),
    ],
)
def test_a_bad_value_names_its_key(tmp_path, sections, key, message):
    with pytest.raises(ConfigError) as refused:
        _parse(tmp_path, **sections)
    assert key in str(refused.value) and message in str(refused.value)


def test_the_dsn_comes_from_its_file_and_is_never_echoed(tmp_path):
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text("  postgresql://u:pw-123@db:5432/state \n")
    settings = _parse(tmp_path, state={"backend": "postgres", "postgres": {"dsn_file": "dsn"}})
    assert read_dsn(settings.state.postgres) == "postgresql://u:pw-123@db:5432/state"
    dsn_file.chmod(0)
    dsn_file.unlink()
    with pytest.raises(StateError, match="cannot read") as missing:
        read_dsn(settings.state.postgres)
    assert "pw-123" not in str(missing.value)


def test_sqlite_migrations_adopt_a_database_from_before_they_were_versioned(tmp_path):
    import sqlite3

    path = tmp_path / "state.db"
    old = sqlite3.connect(path)
    old.executescript(migrations("sqlite")[0].sql)  # the schema every earlier build created
    old.execute("INSERT INTO tasks (id, owner, intent, started_ns, expires_ns) "
                "VALUES ('t-1', 'a', 'i', 1, 2)")  # fmt: skip
    old.commit()
    old.close()
    db = SqliteStateDb(path)
    shipped = [m.version for m in migrations("sqlite")]
    assert db.schema_version == shipped[-1]
    assert db.query("SELECT id FROM tasks")[0]["id"] == "t-1"
    versions = [r["version"] for r in db.query("SELECT version FROM schema_migrations")]
    assert versions == shipped
    db.close()
    again = open_state(_parse(tmp_path, state={"dir": str(tmp_path)}).state)
    assert [r["version"] for r in again.query("SELECT version FROM schema_migrations")] == shipped
    again.close()


def test_a_newer_schema_is_refused_and_the_migration_files_parse(tmp_path):
    from sidecar.state import MigrationError

    with pytest.raises(MigrationError, match="version 99, newer than this build knows"):
        pending({1, 2, 99}, migrations("sqlite"), "db")
    later = [m.version for m in migrations("postgres")][1:]
    assert [m.version for m in pending({1}, migrations("postgres"), "db")] == later
    assert statements("-- c\nCREATE TABLE a (x INT);\n\nCREATE INDEX i ON a (x);\n") == [
        "CREATE TABLE a (x INT)",
        "CREATE INDEX i ON a (x)",
    ]
    db = SqliteStateDb(tmp_path / "s.db")
    with db.transaction() as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (9, 'future', 0)")
    db.close()
    with pytest.raises(MigrationError, match="version 9"):
        SqliteStateDb(tmp_path / "s.db")
