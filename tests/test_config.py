"""Settings: layer precedence, parsing, validation, did-you-mean, and secrets kept out of sight."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from r2migrate.errors import ConfigError, ExitCode
from r2migrate.settings.config import (
    SECRET_FIELDS,
    Settings,
    load_settings,
    redact_url,
)

DB_PASSWORD = "pg-Pa55word-9f3a"
SECRET_KEY = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SESSION_TOKEN = "FwoGZXIvYXdzEJr-session-token-value"
ACCOUNT_ID = "0123456789abcdef0123456789abcdef"


def write_toml(folder: Path, text: str, name: str = "r2migrate.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def write_stack(state_dir: Path, data: dict[str, object]) -> Path:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "stack.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def load(tmp_path: Path, **kwargs: object) -> Settings:
    """load_settings with an empty environment and tmp_path as cwd unless told otherwise."""
    kwargs.setdefault("env", {})
    kwargs.setdefault("cwd", tmp_path)
    return load_settings(**kwargs)  # type: ignore[arg-type]


def config_error(tmp_path: Path, **kwargs: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, **kwargs)
    return info.value


# -- defaults and layers ------------------------------------------------------------------------


def test_defaults_with_nothing_configured(tmp_path: Path) -> None:
    s = load(tmp_path)
    assert s.batch_size == 50
    assert s.workers == 16
    assert s.references == ("list_cutter_savedfile.file_path",)
    assert s.multipart_chunksize_bytes == 8 * 1024**2
    assert s.state_dir == tmp_path / ".r2migrate"
    assert s.effective_log_file == tmp_path / ".r2migrate" / "r2migrate.log"
    assert s.effective_endpoint_url is None
    assert set(s.sources.values()) == {"default"}
    assert set(s.sources) == {f.name for f in dataclasses.fields(Settings)} - {"sources"}


def test_each_layer_overrides_the_one_below_and_sources_say_where(tmp_path: Path) -> None:
    stack = write_stack(
        tmp_path / ".r2migrate",
        {
            "database_url": "postgresql://demo@127.0.0.1:5432/demo",
            "endpoint_url": "http://127.0.0.1:8333",
            "bucket_name": "stack-bucket",
            "region_name": "us-east-1",
            "media_root": "media",
            "pid": 1234,  # devstack bookkeeping: not a setting, not an error
        },
    )
    toml = write_toml(
        tmp_path,
        'bucket_name = "toml-bucket"\nregion_name = "eu-west-1"\nbatch_size = 10\nworkers = 2\n',
    )
    env = {"R2MIGRATE_REGION_NAME": "auto", "R2MIGRATE_BATCH_SIZE": "20", "R2MIGRATE_WORKERS": "3"}
    s = load(tmp_path, env=env, overrides={"workers": 4, "batch_size": None})

    assert s.endpoint_url == "http://127.0.0.1:8333"
    assert s.media_root == tmp_path / ".r2migrate" / "media"  # relative to the stack file
    assert s.bucket_name == "toml-bucket"
    assert s.region_name == "auto"
    assert s.batch_size == 20  # a None override means "not given"
    assert s.workers == 4
    assert s.sources["endpoint_url"] == f"embedded stack ({stack})"
    assert s.sources["bucket_name"] == f"r2migrate.toml ({toml})"
    assert s.sources["region_name"] == "env R2MIGRATE_REGION_NAME"
    assert s.sources["batch_size"] == "env R2MIGRATE_BATCH_SIZE"
    assert s.sources["workers"] == "override"
    assert s.sources["max_attempts"] == "default"
    assert ("workers", "4", "override") in s.describe()


def test_stack_file_is_read_from_a_state_dir_set_in_toml(tmp_path: Path) -> None:
    write_stack(tmp_path / "elsewhere", {"bucket_name": "moved-stack"})
    write_toml(tmp_path, 'state_dir = "elsewhere"\n')
    s = load(tmp_path)
    assert s.state_dir == tmp_path / "elsewhere"
    assert s.bucket_name == "moved-stack"


def test_r2migrate_variables_win_over_standard_names(tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": "postgresql://std@h/db",
        "R2MIGRATE_DATABASE_URL": "postgresql://ours@h/db",
        "AWS_ENDPOINT_URL": "https://generic.example",
        "AWS_ENDPOINT_URL_S3": "https://s3-specific.example",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_REGION": "eu-central-1",
        "AWS_STORAGE_BUCKET_NAME": "django-bucket",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_SESSION_TOKEN": SESSION_TOKEN,
    }
    s = load(tmp_path, env=env)
    assert s.database_url == "postgresql://ours@h/db"
    assert s.sources["database_url"] == "env R2MIGRATE_DATABASE_URL"
    assert s.endpoint_url == "https://s3-specific.example"
    assert s.sources["endpoint_url"] == "env AWS_ENDPOINT_URL_S3"
    assert s.region_name == "eu-central-1"
    assert s.bucket_name == "django-bucket"
    assert (s.access_key, s.secret_key, s.session_token) == (ACCESS_KEY, SECRET_KEY, SESSION_TOKEN)
    assert s.sources["secret_key"] == "env AWS_SECRET_ACCESS_KEY"


def test_empty_standard_variable_falls_through_to_the_next(tmp_path: Path) -> None:
    s = load(tmp_path, env={"AWS_ENDPOINT_URL_S3": "", "AWS_ENDPOINT_URL": "http://h:9000"})
    assert s.endpoint_url == "http://h:9000"


def test_env_none_reads_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith(("R2MIGRATE_", "AWS_")) or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("R2MIGRATE_BATCH_SIZE", "7")
    assert load_settings(cwd=tmp_path).batch_size == 7


# -- finding the toml file ----------------------------------------------------------------------


def test_config_file_argument_then_env_then_cwd(tmp_path: Path) -> None:
    write_toml(tmp_path, "batch_size = 1\n")
    (tmp_path / "other").mkdir()
    by_env = write_toml(tmp_path / "other", "batch_size = 2\n", name="env.toml")
    by_arg = write_toml(tmp_path / "other", "batch_size = 3\n", name="arg.toml")

    assert load(tmp_path).batch_size == 1
    assert load(tmp_path, env={"R2MIGRATE_CONFIG": str(by_env)}).batch_size == 2
    s = load(tmp_path, env={"R2MIGRATE_CONFIG": str(by_env)}, config_file=by_arg)
    assert s.batch_size == 3
    assert s.sources["batch_size"] == f"r2migrate.toml ({by_arg})"


@pytest.mark.parametrize("how", ["argument", "env"])
def test_a_named_config_file_must_exist(tmp_path: Path, how: str) -> None:
    missing = tmp_path / "nope.toml"
    if how == "argument":
        err = config_error(tmp_path, config_file=missing)
    else:
        err = config_error(tmp_path, env={"R2MIGRATE_CONFIG": str(missing)})
    assert str(missing) in str(err)
    assert "not found" in str(err)
    assert err.exit_code == ExitCode.CONFIG


def test_corrupt_toml_reports_the_line(tmp_path: Path) -> None:
    write_toml(tmp_path, 'bucket_name = "ok"\nbatch_size = \nworkers = 3\n')
    err = config_error(tmp_path)
    assert "not valid TOML" in str(err)
    assert "line 2" in str(err)


def test_corrupt_stack_file_reports_the_line(tmp_path: Path) -> None:
    state = tmp_path / ".r2migrate"
    state.mkdir()
    (state / "stack.json").write_text('{\n"bucket_name": "x",\n}', encoding="utf-8")
    err = config_error(tmp_path)
    assert "embedded stack" in str(err)
    assert "line 3" in str(err)


# -- unknown keys -------------------------------------------------------------------------------


def test_unknown_toml_key_gets_a_did_you_mean(tmp_path: Path) -> None:
    write_toml(tmp_path, 'bucket_nme = "b"\nAWS_STORAGE_BUCKET_NAME = "b"\n[r2migrate]\nx = 1\n')
    err = config_error(tmp_path)
    assert len(err.problems) == 3
    assert "unknown key 'bucket_nme'; did you mean 'bucket_name'?" in err.problems[0]
    assert "'AWS_STORAGE_BUCKET_NAME'; did you mean 'bucket_name'?" in err.problems[1]
    assert "flat top-level keys" in err.problems[2]


def test_unknown_env_variable_gets_a_did_you_mean(tmp_path: Path) -> None:
    err = config_error(tmp_path, env={"R2MIGRATE_BATCHSIZE": "5", "R2MIGRATE_CONFIG": ""})
    assert err.problems == [
        "env R2MIGRATE_BATCHSIZE: unknown setting; did you mean R2MIGRATE_BATCH_SIZE?"
    ]


def test_unknown_override_gets_a_did_you_mean(tmp_path: Path) -> None:
    err = config_error(tmp_path, overrides={"worker": 3})
    assert err.problems == ["override 'worker': unknown setting; did you mean 'workers'?"]


def test_unrelated_environment_is_ignored(tmp_path: Path) -> None:
    s = load(tmp_path, env={"PATH": "/bin", "AWS_PROFILE": "x", "r2migrate_lower": "y"})
    assert set(s.sources.values()) == {"default"}


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    write_toml(tmp_path, 'batch_size = "many"\nworkerz = 3\naddressing_style = "sideways"\n')
    env = {"R2MIGRATE_MAX_ATTEMPTS": "99", "R2MIGRATE_VERIFY": "perhaps", "R2MIGRATE_X": "1"}
    err = config_error(tmp_path, env=env, overrides={"bucket_name": "Bad_Bucket", "nope": 1})
    text = str(err)
    assert text.startswith(f"{len(err.problems)} configuration problems:")
    for expected in [
        "workerz",
        "R2MIGRATE_X",
        "'nope'",
        "batch_size (r2migrate.toml",
        "expected an integer",
        "verify (env R2MIGRATE_VERIFY): expected true/false",
        "max_attempts (env R2MIGRATE_MAX_ATTEMPTS): must be between 1 and 20, got 99",
        "addressing_style",
        "bucket_name (override)",
    ]:
        assert expected in text
    assert len(err.problems) == 8


# -- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("1", True),
        ("YES", True),
        ("on", True),
        ("false", False),
        ("0", False),
        ("no", False),
        ("Off", False),
    ],
)
def test_bool_from_env(tmp_path: Path, text: str, expected: bool) -> None:
    assert load(tmp_path, env={"R2MIGRATE_WRITE_BACK": text}).write_back is expected


def test_numbers_from_env_and_toml(tmp_path: Path) -> None:
    write_toml(tmp_path, "backoff_base_s = 1\nmultipart_chunksize_bytes = 16_777_216\n")
    env = {
        "R2MIGRATE_BATCH_SIZE": "50",
        "R2MIGRATE_LEASE_S": "120.5",
        "R2MIGRATE_MULTIPART_THRESHOLD_BYTES": "64MiB",
    }
    s = load(tmp_path, env=env)
    assert s.batch_size == 50
    assert s.lease_s == 120.5
    assert s.backoff_base_s == 1.0
    assert isinstance(s.backoff_base_s, float)
    assert s.multipart_threshold_bytes == 64 * 1024**2
    assert s.multipart_chunksize_bytes == 16 * 1024**2


def test_toml_booleans_are_not_integers(tmp_path: Path) -> None:
    write_toml(tmp_path, "batch_size = true\n")
    assert "expected an integer" in str(config_error(tmp_path))


def test_tuples_from_env_string_and_toml_array(tmp_path: Path) -> None:
    env = {"R2MIGRATE_REFERENCES": "app_doc.file, public.app_img.path ,"}
    assert load(tmp_path, env=env).references == ("app_doc.file", "public.app_img.path")
    write_toml(tmp_path, 'references = ["a.b", "s.t.c"]\n')
    assert load(tmp_path).references == ("a.b", "s.t.c")


@pytest.mark.parametrize("bad", ["justtable", "a.b.c.d", "a.b-c", "1a.b", "a..b"])
def test_references_must_be_identifiers(tmp_path: Path, bad: str) -> None:
    err = config_error(tmp_path, overrides={"references": (bad,)})
    assert "references (override)" in str(err)


def test_models_and_exclude_from_toml_env_and_set(tmp_path: Path) -> None:
    assert (load(tmp_path).models, load(tmp_path).exclude) == ((), ())
    write_toml(tmp_path, 'models = ["shop.Product", "shop.Invoice.pdf"]\n')
    env = {"R2MIGRATE_EXCLUDE": "shop.Product.thumbnail, blog.Post"}
    s = load(tmp_path, env=env, set_values={"models": "shop.Product"})
    assert s.models == ("shop.Product",) and s.sources["models"] == "--set"
    assert s.exclude == ("shop.Product.thumbnail", "blog.Post")
    assert s.sources["exclude"] == "env R2MIGRATE_EXCLUDE"
    assert dict((name, shown) for name, shown, _ in s.describe())["exclude"] == (
        "shop.Product.thumbnail, blog.Post"
    )


@pytest.mark.parametrize("bad", ["Product", "shop.Product.file.x", "shop.Pro-duct", "shop..x"])
def test_models_and_exclude_must_name_app_model_or_field(tmp_path: Path, bad: str) -> None:
    err = config_error(tmp_path, overrides={"models": (bad,), "exclude": (bad,)})
    assert f"models (override): {bad!r} is not app_label.Model or app_label.Model.field" in str(err)
    assert "exclude (override)" in str(err)


@pytest.mark.parametrize("how", ["toml", "env", "set"])
def test_the_plain_cli_refuses_models_and_exclude(tmp_path: Path, how: str) -> None:
    """They name Django models: only the Django adapter can apply them, never silently dropped."""
    from click.testing import CliRunner

    from r2migrate.cli.main import main

    env = {"R2MIGRATE_STATE_DIR": str(tmp_path / "state")}
    args = ["config", "show"]
    if how == "toml":
        write_toml(tmp_path, 'exclude = ["shop.Product"]\n')
        env["R2MIGRATE_CONFIG"] = str(tmp_path / "r2migrate.toml")
    elif how == "env":
        env["R2MIGRATE_EXCLUDE"] = "shop.Product"
    else:
        args = ["--set", "exclude=shop.Product", *args]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == ExitCode.CONFIG, result.output
    assert "names Django models, which only the Django adapter can resolve" in result.output
    assert "list exactly the columns to migrate in `references`" in result.output
    assert "config show" not in result.output.partition("hint:")[2]
    plain = CliRunner().invoke(main, ["config", "show"], env={**env, "R2MIGRATE_EXCLUDE": ""})
    if how != "toml":
        assert plain.exit_code == 0, plain.output


def test_object_parameters_from_toml_table_and_env_json(tmp_path: Path) -> None:
    write_toml(tmp_path, '[object_parameters]\nCacheControl = "max-age=86400"\n')
    s = load(tmp_path)
    assert dict(s.object_parameters) == {"CacheControl": "max-age=86400"}
    env = {"R2MIGRATE_OBJECT_PARAMETERS": '{"ContentDisposition": "attachment"}'}
    s = load(tmp_path, env=env)
    assert dict(s.object_parameters) == {"ContentDisposition": "attachment"}
    with pytest.raises(TypeError):
        s.object_parameters["X"] = "y"  # type: ignore[index]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{not json", "expected a JSON object"),
        ('{"IfNoneMatch": "*"}', "set by r2migrate itself"),
        ('{"cache-control": "x"}', "not a put_object parameter"),
    ],
)
def test_bad_object_parameters(tmp_path: Path, value: str, expected: str) -> None:
    err = config_error(tmp_path, env={"R2MIGRATE_OBJECT_PARAMETERS": value})
    assert expected in str(err)


def test_paths_relative_to_toml_folder_or_cwd(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    toml = write_toml(conf, 'media_root = "media"\nlog_file = "logs/r.log"\n')
    s = load(tmp_path, config_file=toml)
    assert s.media_root == conf / "media"
    assert s.effective_log_file == conf / "logs" / "r.log"

    s = load(tmp_path, config_file=toml, env={"R2MIGRATE_MEDIA_ROOT": "uploads"})
    assert s.media_root == tmp_path / "uploads"
    s = load(tmp_path, overrides={"media_root": Path("~/m"), "log_file": ""})
    assert s.media_root == Path("~/m").expanduser()
    assert s.log_file is None


def test_choices_are_case_insensitive(tmp_path: Path) -> None:
    env = {"R2MIGRATE_LOG_LEVEL": "debug", "R2MIGRATE_LOG_FORMAT": "JSON"}
    s = load(tmp_path, env=env)
    assert (s.log_level, s.log_format) == ("DEBUG", "json")


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["abc", "my-bucket", "media.example.com", "a1-b2", "x" * 63, "0bucket9"]
)
def test_valid_bucket_names(tmp_path: Path, name: str) -> None:
    assert load(tmp_path, overrides={"bucket_name": name}).bucket_name == name


@pytest.mark.parametrize(
    "name",
    [
        "ab",
        "x" * 64,
        "My-Bucket",
        "under_score",
        "-leading",
        "trailing-",
        "a..b",
        "192.168.1.1",
        "has space",
    ],
)
def test_invalid_bucket_names(tmp_path: Path, name: str) -> None:
    err = config_error(tmp_path, overrides={"bucket_name": name})
    assert "not a valid bucket name" in str(err)


def test_r2_account_id_gives_endpoint_and_region(tmp_path: Path) -> None:
    s = load(tmp_path, env={"R2MIGRATE_R2_ACCOUNT_ID": ACCOUNT_ID})
    assert s.effective_endpoint_url == f"https://{ACCOUNT_ID}.r2.cloudflarestorage.com"
    assert s.effective_region_name == "auto"
    assert s.endpoint_url is None
    rows = {name: shown for name, shown, _ in s.describe()}
    assert rows["endpoint_url"] == f"https://{ACCOUNT_ID}.r2.cloudflarestorage.com (derived)"
    s.require("endpoint_url", "region_name")


def test_explicit_endpoint_beats_the_account_id(tmp_path: Path) -> None:
    overrides = {"r2_account_id": ACCOUNT_ID, "endpoint_url": "http://127.0.0.1:8333"}
    s = load(tmp_path, overrides=overrides)
    assert s.effective_endpoint_url == "http://127.0.0.1:8333"
    assert s.effective_region_name is None
    s = load(tmp_path, overrides={**overrides, "region_name": "us-east-1"})
    assert s.effective_region_name == "us-east-1"


@pytest.mark.parametrize("bad", ["0123", ACCOUNT_ID.upper(), ACCOUNT_ID + "0", "g" * 32])
def test_bad_account_id(tmp_path: Path, bad: str) -> None:
    assert "32 lowercase hex" in str(config_error(tmp_path, overrides={"r2_account_id": bad}))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"endpoint_url": "ftp://h"}, "must be an http(s) URL"),
        ({"state_schema": "drop table;"}, "SQL identifier"),
        ({"batch_size": 0}, "between 1 and 10,000"),
        ({"multipart_chunksize_bytes": 1024}, "between 5,242,880"),
        ({"backoff_base_s": 10, "backoff_max_s": 1}, "at least backoff_base_s"),
        ({"lease_s": 30}, "longer than read_timeout_s"),
        ({"read_timeout_s": 0, "lease_s": 5}, "more than 0 seconds"),
        ({"log_level": "LOUD"}, "DEBUG, INFO, WARNING, ERROR"),
        ({"access_key": ACCESS_KEY}, "access_key is set but secret_key is not"),
        ({"session_token": SESSION_TOKEN}, "session_token is set without"),
        ({"location": "/media"}, "relative key prefix"),
    ],
)
def test_invalid_values(tmp_path: Path, overrides: dict[str, object], expected: str) -> None:
    assert expected in str(config_error(tmp_path, overrides=overrides))


def test_direct_construction_validates_too() -> None:
    with pytest.raises(ConfigError, match="batch_size: must be between"):
        Settings(batch_size=0)
    s = Settings(batch_size=5, references=["a.b"])  # type: ignore[arg-type]
    assert s.references == ("a.b",)
    assert ("batch_size", "5", "argument") in s.describe()


def test_settings_are_frozen_and_hashable(tmp_path: Path) -> None:
    s = load(tmp_path, overrides={"object_parameters": {"CacheControl": "no-cache"}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.batch_size = 1  # type: ignore[misc]
    assert hash(s) == hash(
        load(tmp_path, overrides={"object_parameters": {"CacheControl": "no-cache"}})
    )
    assert dataclasses.replace(s, workers=2).workers == 2


# -- require ------------------------------------------------------------------------------------


def test_require_lists_every_missing_setting_and_how_to_set_it() -> None:
    s = Settings(media_root=Path("/srv/media"))
    with pytest.raises(ConfigError) as info:
        s.require("database_url", "media_root", "bucket_name", "endpoint_url")
    problems = info.value.problems
    assert len(problems) == 3
    assert "R2MIGRATE_DATABASE_URL or DATABASE_URL" in problems[0]
    assert "AWS_STORAGE_BUCKET_NAME" in problems[1]
    assert "r2_account_id" in problems[2]
    with pytest.raises(ValueError, match="not settings"):
        s.require("bucket")


# -- secrets ------------------------------------------------------------------------------------


def secret_settings(tmp_path: Path) -> Settings:
    return load(
        tmp_path,
        env={
            "DATABASE_URL": f"postgresql://app:{DB_PASSWORD}@db.internal:5432/app",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_SESSION_TOKEN": SESSION_TOKEN,
        },
    )


def test_secrets_never_shown(tmp_path: Path) -> None:
    s = secret_settings(tmp_path)
    shown = [repr(s), str(s), json.dumps(s.redacted()), repr(s.describe())]
    for text in shown:
        for secret in (DB_PASSWORD, SECRET_KEY, SESSION_TOKEN, ACCESS_KEY):
            assert secret not in text
    redacted = s.redacted()
    assert redacted["database_url"] == "postgresql://app:***@db.internal:5432/app"
    assert redacted["secret_key"] == "***"
    assert redacted["session_token"] == "***"
    assert redacted["access_key"] == "…MPLE"
    assert set(redacted) == set(s.sources)
    assert set(redacted) >= SECRET_FIELDS


def test_secret_values_feed_the_log_filter(tmp_path: Path) -> None:
    assert set(secret_settings(tmp_path).secret_values()) == {
        DB_PASSWORD,
        SECRET_KEY,
        SESSION_TOKEN,
        ACCESS_KEY,
    }


def test_bad_secret_values_are_reported_without_echoing_them(tmp_path: Path) -> None:
    write_toml(tmp_path, f'secret_kye = "{SECRET_KEY}"\nsession_token = 12345678901\n')
    env = {"DATABASE_URL": f"mysql://app:{DB_PASSWORD}@db/app", "R2MIGRATE_ACCESS_KEY": ACCESS_KEY}
    err = config_error(tmp_path, env=env)
    text = f"{err} {err.problems} {err.hint}"
    for secret in (DB_PASSWORD, SECRET_KEY, "12345678901", ACCESS_KEY):
        assert secret not in text
    assert "session_token (r2migrate.toml" in text
    assert "expected a string, got integer" in text
    assert "database_url (env DATABASE_URL): must be a postgresql://" in text
    assert "did you mean 'secret_key'" in text


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://app:pw@h:5432/db", "postgresql://app:***@h:5432/db"),
        ("postgresql://app@h/db", "postgresql://app@h/db"),
        ("postgresql://app:p@ss/w@h/db", "postgresql://app:***@h/db"),
        (
            "postgresql://h/db?user=a&password=pw&sslmode=require",
            "postgresql://h/db?user=a&password=***&sslmode=require",
        ),
        ("https://example.com/x", "https://example.com/x"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_config_file_with_tilde_is_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    write_toml(tmp_path, "workers = 5\n", name="home.toml")
    assert load(tmp_path / "elsewhere", config_file=Path("~/home.toml")).workers == 5
