from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from tuneforge.settings import Settings, child_environment, describe_settings_error, is_loopback


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No TUNEFORGE_* variable leaks in from the developer's shell; relative defaults land in tmp."""
    for name in list(os.environ):
        if name.startswith("TUNEFORGE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_bind_loopback_8080() -> None:
    settings = Settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.endpoint_url == "http://127.0.0.1:8080"


def test_default_data_dir_is_absolute_dot_tuneforge_in_cwd(tmp_path: Path) -> None:
    settings = Settings()
    assert settings.data_dir.is_absolute()
    assert settings.data_dir == (tmp_path / ".tuneforge").resolve()


def test_default_database_is_sqlite_file_in_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "d")
    assert settings.db_url == f"sqlite:///{(tmp_path / 'd').resolve() / 'tuneforge.db'}"


def test_default_object_root_is_objects_in_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "d")
    assert settings.objects_dir == (tmp_path / "d").resolve() / "objects"
    assert settings.allowed_local_roots == [(tmp_path / "d").resolve()]


def test_explicit_database_url_and_object_root_replace_defaults(tmp_path: Path) -> None:
    settings = Settings(database_url="postgresql://u@h/db", object_root=tmp_path / "obj")
    assert settings.db_url == "postgresql://u@h/db"
    assert settings.objects_dir == (tmp_path / "obj").resolve()


def test_ensure_dirs_creates_data_objects_models_and_logs(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "d")
    settings.ensure_dirs()
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["logs", "models", "objects"]


def test_env_vars_override_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNEFORGE_PORT", "9123")
    monkeypatch.setenv("TUNEFORGE_HOST", "localhost")
    monkeypatch.setenv("TUNEFORGE_DATA_DIR", str(tmp_path / "envdata"))
    monkeypatch.setenv("TUNEFORGE_ACCESS_KEYS", '{"AKID": "secret"}')
    monkeypatch.setenv("TUNEFORGE_LOCAL_ROOTS", json.dumps([str(tmp_path / "in")]))
    monkeypatch.setenv("TUNEFORGE_ALLOW_ANONYMOUS", "false")
    settings = Settings()
    assert settings.port == 9123
    assert settings.host == "localhost"
    assert settings.data_dir == (tmp_path / "envdata").resolve()
    assert settings.access_keys == {"AKID": "secret"}
    assert settings.local_roots == [(tmp_path / "in").resolve()]
    assert settings.allow_anonymous is False


def test_keyword_arguments_beat_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEFORGE_PORT", "9123")
    assert Settings(port=9200).port == 9200


def test_config_file_toml_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "tuneforge.toml"
    path.write_text('port = 9300\nregion = "eu-west-1"\n[access_keys]\nAKID = "s"\n')
    monkeypatch.setenv("TUNEFORGE_CONFIG_FILE", str(path))
    settings = Settings()
    assert (settings.port, settings.region, settings.access_keys) == (9300, "eu-west-1", {"AKID": "s"})


def test_config_file_json_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "tuneforge.json"
    path.write_text(json.dumps({"port": 9400, "worker_concurrency": 3}))
    monkeypatch.setenv("TUNEFORGE_CONFIG_FILE", str(path))
    settings = Settings()
    assert (settings.port, settings.worker_concurrency) == (9400, 3)


def test_env_var_beats_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "tuneforge.toml"
    path.write_text('port = 9300\nregion = "eu-west-1"\n')
    monkeypatch.setenv("TUNEFORGE_CONFIG_FILE", str(path))
    monkeypatch.setenv("TUNEFORGE_PORT", "9500")
    settings = Settings()
    assert settings.port == 9500
    assert settings.region == "eu-west-1"


def test_config_file_with_unknown_key_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "tuneforge.toml"
    path.write_text("prot = 1\n")
    monkeypatch.setenv("TUNEFORGE_CONFIG_FILE", str(path))
    with pytest.raises(ValidationError, match="prot"):
        Settings()


@pytest.mark.parametrize("account_id", ["12345", "1234567890123", "12345678901a", ""])
def test_invalid_account_id_is_refused(account_id: str) -> None:
    with pytest.raises(ValidationError, match="account_id"):
        Settings(account_id=account_id)


def test_invalid_account_id_from_env_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEFORGE_ACCOUNT_ID", "not-an-account")
    with pytest.raises(ValidationError, match="account_id"):
        Settings()


@pytest.mark.parametrize("port", [-1, 65536])
def test_port_outside_tcp_range_is_refused(port: int) -> None:
    with pytest.raises(ValidationError, match="port"):
        Settings(port=port)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com"])
def test_check_bind_is_safe_refuses_non_loopback_without_access_keys(host: str) -> None:
    with pytest.raises(ValueError, match=f"refusing to bind to {host}.*TUNEFORGE_ACCESS_KEYS"):
        Settings(host=host).check_bind_is_safe()


def test_check_bind_is_safe_accepts_non_loopback_with_access_keys() -> None:
    Settings(host="0.0.0.0", access_keys={"AKID": "secret"}).check_bind_is_safe()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_check_bind_is_safe_accepts_loopback_without_keys(host: str) -> None:
    Settings(host=host).check_bind_is_safe()


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("not an ip", False),
    ],
)
def test_is_loopback_classifies_hosts(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


def test_anonymous_allowed_on_loopback_by_default() -> None:
    assert Settings().anonymous_allowed is True


def test_anonymous_not_allowed_on_non_loopback_even_when_requested() -> None:
    settings = Settings(host="0.0.0.0", access_keys={"AKID": "s"}, allow_anonymous=True)
    assert settings.anonymous_allowed is False


def test_anonymous_not_allowed_on_loopback_when_disabled() -> None:
    assert Settings(allow_anonymous=False).anonymous_allowed is False


def test_endpoint_url_of_wildcard_bind_points_at_loopback() -> None:
    assert Settings(host="0.0.0.0", port=9000).endpoint_url == "http://127.0.0.1:9000"


def test_endpoint_url_brackets_ipv6_host() -> None:
    assert Settings(host="::1").endpoint_url == "http://[::1]:8080"


def _apply_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name in list(os.environ):
        if name.startswith("TUNEFORGE_") and name not in env:
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("TUNEFORGE_"):
            monkeypatch.setenv(name, value)


def test_child_environment_round_trips_to_equal_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNEFORGE_OBJECT_ROOT", str(tmp_path / "parent-objects"))
    original = Settings(
        data_dir=tmp_path / "d",
        object_root=None,
        local_roots=[tmp_path / "a", tmp_path / "b"],
        host="0.0.0.0",
        port=9001,
        region="eu-central-1",
        account_id="000011112222",
        worker_concurrency=2,
        heartbeat_timeout_s=2.5,
        access_keys={"AKID": "secret", "OTHER": "s2"},
        allow_anonymous=False,
        price_per_compute_hour=0.1,
    )
    env = child_environment(original)
    assert "TUNEFORGE_OBJECT_ROOT" not in env
    _apply_env(monkeypatch, env)
    assert Settings() == original


def test_child_environment_carries_config_file_values_but_not_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "tuneforge.toml"
    path.write_text('port = 9300\ndatabase_url = "sqlite:////tmp/x.db"\n')
    monkeypatch.setenv("TUNEFORGE_CONFIG_FILE", str(path))
    original = Settings(data_dir=tmp_path / "d")
    env = child_environment(original)
    assert "TUNEFORGE_CONFIG_FILE" not in env
    path.unlink()
    _apply_env(monkeypatch, env)
    rebuilt = Settings()
    assert rebuilt == original
    assert (rebuilt.port, rebuilt.database_url) == (9300, "sqlite:////tmp/x.db")


def test_child_environment_keeps_unrelated_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_OTHER_VAR", "kept")
    assert child_environment(Settings())["SOME_OTHER_VAR"] == "kept"


def test_make_state_private_tightens_tuneforge_state_and_leaves_the_users_files(tmp_path: Path) -> None:
    data_dir = tmp_path / "shared"
    (data_dir / "objects" / "bucket").mkdir(parents=True)
    (data_dir / "objects" / "bucket" / "train.jsonl").write_text("{}")
    (data_dir / "tuneforge.db").write_text("")
    (data_dir / "notes-of-the-user.txt").write_text("mine")
    for path in [data_dir, *data_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    previous = os.umask(0o022)
    try:
        Settings(data_dir=data_dir).make_state_private()
        assert os.umask(0o022) == 0o077
    finally:
        os.umask(previous)
    modes = {str(p.relative_to(data_dir)): stat.S_IMODE(p.stat().st_mode) for p in [data_dir, *data_dir.rglob("*")]}
    assert modes.pop("notes-of-the-user.txt") == 0o644
    assert modes["."] == 0o700
    assert {name: mode for name, mode in modes.items() if mode & 0o077} == {}


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("TUNEFORGE_PORT", "abc", "TUNEFORGE_PORT: Input should be a valid integer"),
        ("TUNEFORGE_ACCESS_KEYS", '{"AKID": ', "TUNEFORGE_ACCESS_KEYS: not valid JSON"),
        ("TUNEFORGE_CONFIG_FILE", "/nonexistent/tuneforge.toml", "TUNEFORGE_CONFIG_FILE: [Errno 2]"),
    ],
)
def test_invalid_setting_is_described_in_one_line_without_its_value(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises((ValueError, OSError)) as exc:
        Settings()
    message = describe_settings_error(exc.value)
    assert message.startswith(expected) and "\n" not in message
    assert "AKID" not in message


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")
def test_default_thread_counts_follow_the_cpus_this_process_may_run_on() -> None:
    """A container's cpuset or taskset gives fewer CPUs than the machine has: torch threads beyond them spin
    against each other, so the worker's default counts the affinity mask, not os.cpu_count()."""
    from tuneforge.jobs.worker import worker_threads
    from tuneforge.settings import available_cpus

    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert available_cpus() == 1
        assert worker_threads(Settings()) == 1
        # An explicit count past the CPUs is cut to them: the surplus threads would only spin.
        assert worker_threads(Settings(worker_threads=2)) == 1
    finally:
        os.sched_setaffinity(0, before)
    assert available_cpus() == len(before)
