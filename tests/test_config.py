"""Parameters: one source of defaults, layers (file, profile, --set), errors and bounds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

import engage.config as config
from engage.config import (
    MAX_DAYS,
    PROJECT_ROOT,
    ConfigError,
    Params,
    load_params,
    parse_params,
    resolve_paths,
)

PROJECT_FILE = PROJECT_ROOT / "params.yaml"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    # The layers a developer's shell may set must not leak into these tests.
    for var in (config.PARAMS_ENV, config.PROFILE_ENV, config.DATA_DIR_ENV):
        monkeypatch.delenv(var, raising=False)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def project_raw() -> dict:
    return yaml.safe_load(PROJECT_FILE.read_text())


def sections(model: type[BaseModel]):
    yield model
    for f in model.model_fields.values():
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            yield from sections(f.annotation)


# ------------------------------------------------------------------ one source of defaults


def test_the_models_hold_no_default_values():
    # A default in the code could drift from params.yaml again: every field is required.
    with_defaults = [
        f"{m.__name__}.{name}"
        for m in sections(Params)
        for name, f in m.model_fields.items()
        if not f.is_required()
    ]
    assert with_defaults == []
    with pytest.raises(Exception, match="Field required"):
        config.LabelsParams()


def test_every_value_comes_from_the_project_params_yaml():
    raw = project_raw()
    raw.pop("profiles")
    params = load_params()
    assert params.profile is None
    # Nothing is filled in from elsewhere: the parsed values are the file, key for key.
    assert params.model_dump(mode="json", exclude={"profile"}) == raw


def test_the_values_that_used_to_disagree_are_those_of_params_yaml():
    p = load_params()
    assert p.index.tau_purchase == 0.15
    assert p.training.calibration == "sigmoid"
    assert p.training.lightgbm.max_depth == 6
    assert p.labels.churn_activity_types == (
        "purchase",
        "email_open",
        "email_click",
        "web_visit",
        "cart_add",
    )
    assert p.data.value_event_types == ("purchase", "web_visit", "nps_response")
    assert set(p.features.rates) == {"open_rate", "ctr", "click_to_open"}
    assert p.features.interval_types == ("email_click", "purchase")
    assert p.features.last_value_types == ("nps_response",)


@pytest.mark.parametrize("name", sorted(project_raw()["profiles"]))
def test_every_profile_of_the_project_parses(name):
    assert load_params(profile=name).profile == name


def test_the_project_file_given_explicitly_is_read_once(monkeypatch):
    assert load_params(PROJECT_FILE) == load_params()
    monkeypatch.setenv(config.PARAMS_ENV, str(PROJECT_FILE))
    # Not a second layer: values are still blamed on the project defaults.
    with pytest.raises(ConfigError, match=r"holds the value 30 \(from params\.yaml\)$"):
        load_params(overrides=("labels.horizon_days.max=1",))


# ----------------------------------------------------------- unknown keys and bad types


def test_unknown_keys_are_named_by_dotted_path_with_a_suggestion(tmp_path):
    user = write(tmp_path / "my.yaml", "labels:\n  horizon_dayz: 60\nlables: {}\n")
    with pytest.raises(ConfigError) as err:
        load_params(user)
    text = str(err.value)
    assert f"labels.horizon_dayz: unknown key (did you mean horizon_days?) (from {user})" in text
    assert f"lables: unknown key (did you mean labels?) (from {user})" in text


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "training.lightgbm.num_leaves=many",
            r"training\.lightgbm\.num_leaves: Input should be a valid integer",
        ),
        ("labels.horizon_days=yes", "labels.horizon_days: expected a number, got the boolean true"),
        ("index.tau_churn=.nan", "index.tau_churn: Input should be a finite number"),
        (
            "index.stated_horizon_days=0",
            "index.stated_horizon_days: Input should be greater than 0",
        ),
        ("training.calibration=platt", "training.calibration: Input should be 'isotonic' or"),
        ("features.windows_days=7", r"features\.windows_days: Input should be a valid tuple"),
        ("labels=3", "labels: Input should be a valid dictionary"),
    ],
)
def test_bad_types_are_named_by_dotted_path(override, message):
    with pytest.raises(ConfigError, match=message):
        load_params(overrides=(override,))


# ------------------------------------------------------------------------------ profiles


def test_a_profile_overlays_its_keys_only():
    base, cdnow = load_params(), load_params(profile="cdnow")
    assert (cdnow.labels.horizon_days, cdnow.data.dir, cdnow.features.ttl_days) == (
        91,
        "data/cdnow",
        800,
    )
    assert cdnow.labels.churn_activity_types == ("purchase",)
    assert cdnow.training.lightgbm == base.training.lightgbm
    assert cdnow.profile == "cdnow"


def test_the_profile_comes_from_the_environment_unless_given(monkeypatch):
    monkeypatch.setenv(config.PROFILE_ENV, "scale")
    assert load_params().features.snapshot_every_days == 28
    assert load_params(profile="cdnow").profile == "cdnow"
    monkeypatch.setenv(config.PROFILE_ENV, "nope")
    with pytest.raises(
        ConfigError, match=r"profiles\.nope: unknown profile \(known: cdnow, scale\)"
    ) as err:
        load_params()
    assert "(from $ENGAGE_PROFILE=nope)" in str(err.value)
    with pytest.raises(ConfigError, match=r"unknown profile .*\(from --profile other\)"):
        load_params(profile="other")


def test_the_users_profile_overlays_the_projects_and_wins_over_the_users_base(tmp_path):
    user = write(
        tmp_path / "my.yaml",
        "labels: {horizon_days: 60}\n"
        "profiles:\n"
        "  cdnow: {labels: {active_within_days: 200}}\n"
        "  mine: {index: {tau_churn: 0.7}}\n",
    )
    cdnow = load_params(user, profile="cdnow")
    # The project's cdnow sets the horizon (over the user's base), the user's cdnow adds.
    assert (cdnow.labels.horizon_days, cdnow.labels.active_within_days) == (91, 200)
    assert cdnow.data.dir == "data/cdnow"
    mine = load_params(user, profile="mine")
    assert (mine.index.tau_churn, mine.labels.horizon_days) == (0.7, 60)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("profiles: [a]\n", "profiles: must be a mapping of name: overlay"),
        ("profiles: {x: 3}\n", r"profiles\.x: must be a mapping of overlaid keys"),
        ("profiles: {x: {profiles: {}}}\n", r"profiles\.x\.profiles: profiles do not nest"),
        ("profile: cdnow\n", "profile: not a parameter; choose a profile with --profile NAME"),
    ],
)
def test_malformed_profiles_are_refused(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_params(write(tmp_path / "my.yaml", text))


# ---------------------------------------------------------------------------------- --set


def test_set_values_are_parsed_as_yaml_and_applied_last_in_order():
    p = load_params(
        profile="cdnow",
        overrides=(
            "labels.horizon_days=45",
            "training.lightgbm.max_depth=-1",
            "features.windows_days=[14, 28]",
            "training.max_rows_per_snapshot=1000",
            "training.max_rows_per_snapshot=null",
            "features.cart_event=null",
            "simulate.start=2024-06-01",  # a date stays text
            "index={tau_purchase: 0.2}",  # a mapping merges into the section
            "features.rates.visit_rate=[web_visit, email_sent]",
            " serving.port = 8080",
        ),
    )
    assert p.labels.horizon_days == 45 and p.labels.active_within_days == 365
    assert p.training.lightgbm.max_depth == -1
    assert p.features.windows_days == (14, 28)
    assert p.training.max_rows_per_snapshot is None
    assert p.features.cart_event is None
    assert p.simulate.start == "2024-06-01"
    assert (p.index.tau_purchase, p.index.tau_churn) == (0.2, 0.5)
    assert p.features.rates["visit_rate"] == ("web_visit", "email_sent")
    assert "open_rate" in p.features.rates
    assert p.serving.port == 8080


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("labels.horizon_days", r"--set labels\.horizon_days: expected dotted\.key=value"),
        ("=3", r"--set =3: the key before '=' is empty"),
        ("labels..horizon_days=3", r"empty part in the key 'labels\.\.horizon_days'"),
        ("labels.=3", r"empty part in the key 'labels\.'"),
        (".labels=3", r"empty part in the key '\.labels'"),
        (
            "labels.horizon_days.max=3",
            r"--set labels\.horizon_days\.max=3: labels\.horizon_days is not a section, "
            r"it holds the value 30 \(from params\.yaml\)",
        ),
        (
            "data.event_types.first=purchase",
            r"data\.event_types is not a section, it holds the value \[",
        ),
        (
            "labels.horizon_days=[30",
            r"--set labels\.horizon_days=\[30: not valid YAML: line 1, column 4: expected ','",
        ),
        ("labels.horizon_days={a: 1, a: 2}", "duplicate key 'a'"),
        ("profile=cdnow", "profiles are chosen with --profile NAME"),
        ("profiles.cdnow.labels.horizon_days=3", "profiles are chosen with --profile NAME"),
        (
            "labels.nested.key=1",
            r"labels\.nested: unknown key \(from --set labels\.nested\.key=1\)",
        ),
    ],
)
def test_malformed_overrides_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_params(overrides=(override,))


def test_a_long_override_is_quoted_shortened():
    text = "labels.horizon_days=" + "9" * 500
    with pytest.raises(ConfigError) as err:
        load_params(overrides=(text,))
    assert "(from --set labels.horizon_days=999" in str(err.value)
    assert len(str(err.value)) < 300


# ------------------------------------------------------------------ partial user overlays


def test_a_partial_user_file_overlays_the_defaults(tmp_path):
    user = write(
        tmp_path / "my.yaml",
        "# only what differs\n"
        "labels:\n  horizon_days: 60\n"
        "features:\n  windows_days: [14]\n  rates: {ctr: [email_click, email_sent]}\n"
        "training:\n  lightgbm: {num_leaves: 15}\n",
    )
    p, base = load_params(user), load_params()
    assert p.labels.horizon_days == 60
    assert p.labels.churn_activity_types == base.labels.churn_activity_types
    # Lists and the rates mapping are replaced whole, so an overlay can shorten them.
    assert p.features.windows_days == (14,)
    assert set(p.features.rates) == {"ctr"}
    assert p.training.lightgbm.num_leaves == 15
    assert p.training.lightgbm.learning_rate == base.training.lightgbm.learning_rate
    assert p.model_dump(include={"data", "serving", "index"}) == base.model_dump(
        include={"data", "serving", "index"}
    )


def test_an_empty_user_file_gives_the_defaults(tmp_path):
    assert load_params(write(tmp_path / "empty.yaml", "# nothing\n")) == load_params()


def test_the_user_file_comes_from_the_environment(tmp_path, monkeypatch):
    user = write(tmp_path / "my.yaml", "labels: {horizon_days: 0}\n")
    monkeypatch.setenv(config.PARAMS_ENV, str(user))
    with pytest.raises(ConfigError) as err:
        load_params()
    assert f"(from $ENGAGE_PARAMS={user})" in str(err.value)


def test_parse_params_overlays_a_partial_mapping_on_the_defaults():
    p = parse_params({"labels": {"horizon_days": 14}}, profile="cdnow", source="api")
    assert (p.labels.horizon_days, p.labels.active_within_days) == (91, 365)
    assert parse_params({"labels": {"horizon_days": 14}}).labels.horizon_days == 14
    with pytest.raises(ConfigError, match=r"labels\.horizon_days: .* \(from api\)"):
        parse_params({"labels": {"horizon_days": -3}}, source="api")
    with pytest.raises(ConfigError, match="api: the top level must be a mapping, got list"):
        parse_params([1, 2], source="api")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: d / "missing.yaml", "missing.yaml: parameters file not found"),
        (lambda d: d, "is a directory, not a parameters file"),
        (lambda d: write(d / "list.yaml", "- 1\n"), "the top level must be a mapping, got list"),
        (lambda d: write(d / "bad.yaml", "labels: [\n"), r"bad\.yaml: not valid YAML: line 2"),
        (lambda d: (d / "bin.yaml").write_bytes(b"\xff\xfe\x00") and d / "bin.yaml", "UTF-8"),
        (
            lambda d: write(d / "big.yaml", "# " + "x" * config.MAX_BYTES),
            "over the 1,048,576 bytes a parameters file may have",
        ),
    ],
)
def test_unreadable_user_files_are_config_errors(tmp_path, setup, message):
    with pytest.raises(ConfigError, match=message):
        load_params(setup(tmp_path))


def test_the_effective_file_written_by_serve_reloads_identically(tmp_path, monkeypatch):
    # engage serve writes the effective parameters and hands them over as ENGAGE_PARAMS
    # with the profile already applied; read back, they must be the same parameters.
    from cli.app import Context
    from cli.serve import serve_env

    monkeypatch.setenv(config.DATA_DIR_ENV, str(tmp_path))
    params = load_params(
        profile="cdnow",
        overrides=("labels.horizon_days=60", "features.rates={}", "features.windows_days=[5]"),
    )
    env = serve_env(Context(params, resolve_paths(params)))
    monkeypatch.setenv(config.PARAMS_ENV, env[config.PARAMS_ENV])
    monkeypatch.setenv(config.PROFILE_ENV, env[config.PROFILE_ENV])
    again = load_params()
    assert again.model_dump(exclude={"profile"}) == params.model_dump(exclude={"profile"})


# ---------------------------------------------------------------- errors name their source


def test_an_error_from_set_quotes_the_override():
    with pytest.raises(ConfigError) as err:
        load_params(overrides=("labels.horizon_days=0",))
    assert str(err.value) == (
        "invalid parameters:\n"
        "  labels.horizon_days: Input should be greater than 0 "
        "(from --set labels.horizon_days=0)"
    )


def test_an_error_from_the_user_file_names_its_path(tmp_path):
    user = write(tmp_path / "my.yaml", "index:\n  tau_purchase: 1.5\n")
    with pytest.raises(ConfigError) as err:
        load_params(user)
    assert f"index.tau_purchase: Input should be less than or equal to 1 (from {user})" in str(
        err.value
    )


def test_an_error_from_a_profile_names_the_profile(tmp_path, monkeypatch):
    user = write(tmp_path / "my.yaml", "profiles:\n  tiny:\n    features: {ttl_days: 0}\n")
    with pytest.raises(
        ConfigError, match=rf"features\.ttl_days: .*\(from profiles\.tiny in {user}\)"
    ):
        load_params(user, profile="tiny")
    defaults = project_raw()
    defaults["profiles"]["cdnow"]["labels"]["horizon_days"] = 0
    monkeypatch.setattr(
        config, "DEFAULTS_FILE", write(tmp_path / "params.yaml", yaml.dump(defaults))
    )
    with pytest.raises(ConfigError, match=r"labels\.horizon_days: .*\(from profiles\.cdnow\)$"):
        load_params(profile="cdnow")
    # A later layer that fixes the value also takes the blame away from the profile.
    assert (
        load_params(profile="cdnow", overrides=("labels.horizon_days=7",)).labels.horizon_days == 7
    )


def test_an_error_from_the_project_defaults_names_params_yaml(tmp_path, monkeypatch):
    defaults = project_raw()
    defaults["serving"]["port"] = 70000
    monkeypatch.setattr(
        config, "DEFAULTS_FILE", write(tmp_path / "params.yaml", yaml.dump(defaults))
    )
    with pytest.raises(ConfigError) as err:
        load_params()
    assert str(err.value).endswith(
        "serving.port: Input should be less than 65536 (from params.yaml)"
    )
    del defaults["labels"]["horizon_days"]
    write(tmp_path / "params.yaml", yaml.dump(defaults))
    with pytest.raises(ConfigError, match="labels.horizon_days: missing: every key needs a value"):
        load_params(overrides=("serving.port=3000",))


def test_a_cross_key_rule_names_the_source_of_both_keys(tmp_path):
    user = write(tmp_path / "my.yaml", "features:\n  interval_types: [email_click, app_login]\n")
    with pytest.raises(ConfigError) as err:
        load_params(user)
    assert (
        f"features.interval_types: not in data.event_types: ['app_login'] "
        f"(from {user}; data.event_types from params.yaml)"
    ) in str(err.value)


# ------------------------------------------------------------------ event types vs lists


def test_an_event_type_is_added_without_restating_dependent_lists():
    from features.catalog import feature_names

    base = load_params()
    p = load_params(
        overrides=(f"data.event_types=[{', '.join(base.data.event_types)}, app_login]",)
    )
    assert p.data.event_types[-1] == "app_login"
    assert p.labels == base.labels and p.features == base.features
    assert "days_since_last_app_login" in feature_names(p)


def test_removing_an_event_type_names_every_list_that_must_change():
    base = load_params()
    kept = [t for t in base.data.event_types if t != "email_click"]
    override = f"data.event_types=[{', '.join(kept)}]"
    with pytest.raises(ConfigError) as err:
        load_params(overrides=(override,))
    lines = str(err.value).splitlines()[1:]
    named = sorted(line.split(":")[0].strip() for line in lines)
    assert named == [
        "features.interval_types",
        "features.rates.click_to_open",
        "features.rates.ctr",
        "labels.churn_activity_types",
    ]
    assert all(f"data.event_types from --set {override}" in line for line in lines)


# ----------------------------------------------------------------------- ENGAGE_DATA_DIR


def test_engage_data_dir_moves_the_data_and_the_mlflow_store(tmp_path, monkeypatch):
    params = load_params()
    default = resolve_paths(params)
    assert default.data_dir == PROJECT_ROOT / "data"
    assert default.mlruns_dir == PROJECT_ROOT / "mlruns"
    monkeypatch.setenv(config.DATA_DIR_ENV, str(tmp_path / "elsewhere"))
    moved = resolve_paths(params)
    assert moved.data_dir == tmp_path / "elsewhere"
    assert moved.mlruns_dir == tmp_path / "elsewhere" / "mlruns"
    assert moved.events == tmp_path / "elsewhere" / "events.parquet"
    assert moved.tracking_uri == f"sqlite:///{tmp_path / 'elsewhere' / 'mlruns' / 'mlflow.db'}"


def test_engage_data_dir_naming_a_file_is_a_config_error(tmp_path, monkeypatch):
    target = write(tmp_path / "events.parquet", "")
    monkeypatch.setenv(config.DATA_DIR_ENV, str(target))
    with pytest.raises(
        ConfigError, match=rf"\$ENGAGE_DATA_DIR: {target} is a file, not a directory"
    ):
        resolve_paths(load_params())
    monkeypatch.delenv(config.DATA_DIR_ENV)
    with pytest.raises(ConfigError, match="data.dir: .* is a file, not a directory"):
        resolve_paths(load_params(overrides=(f"data.dir={target}",)), root=tmp_path)


def test_the_cli_reports_config_errors_without_a_traceback(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["--set", "data.event_types=[purchase]", "data", "validate"])
    assert result.exit_code == 2
    # Escaped, so rich does not eat "[purchase]" as markup.
    assert "data.event_types from --set data.event_types=[purchase]" in result.output
    monkeypatch.setenv(config.DATA_DIR_ENV, str(write(tmp_path / "f", "")))
    result = runner.invoke(app, ["data", "validate"])
    assert result.exit_code == 2 and "is a file, not a directory" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


# ----------------------------------------------------------------------------- YAML limits


def test_duplicate_keys_are_errors_naming_the_key_and_line(tmp_path):
    user = write(
        tmp_path / "my.yaml",
        "labels:\n  horizon_days: 30\n  active_within_days: 90\n  horizon_days: 60\n",
    )
    with pytest.raises(
        ConfigError,
        match=r"my\.yaml: not valid YAML: line 4, column 3: duplicate key 'horizon_days' "
        r"\(first on line 2\)",
    ):
        load_params(user)


def test_merge_keys_and_small_aliases_still_work(tmp_path):
    user = write(
        tmp_path / "my.yaml",
        "x-types: &types [purchase, cart_add]\nlabels: {churn_activity_types: *types}\n",
    )
    # The alias works; the anchor's own key is (rightly) unknown.
    with pytest.raises(ConfigError, match="'x-types': unknown key") as err:
        load_params(user)
    assert "labels" not in str(err.value)
    user = write(
        tmp_path / "ok.yaml",
        "labels: {churn_activity_types: &t [purchase, cart_add]}\n"
        "training:\n  lightgbm:\n    <<: {num_leaves: 7, learning_rate: 0.1}\n    num_leaves: 9\n",
    )
    p = load_params(user)
    assert p.labels.churn_activity_types == ("purchase", "cart_add")
    assert (p.training.lightgbm.num_leaves, p.training.lightgbm.learning_rate) == (9, 0.1)


def billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\nlabels: {{churn_activity_types: *a{levels}}}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (billion_laughs(), "aliases expand to more than 10,000 nodes"),
        ("[" * 10_000, "line 1, column 33: nested deeper than 32 levels"),
        ("{" * 10_000, "nested deeper than 32 levels"),
        ("a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 200)), "nested deeper than 32"),
        ("- " * 5_000 + "x\n", "nested deeper than 32 levels"),
        ("a: &a [*a]\n", "an alias refers to its own anchor"),
        ("[" + "0, " * 20_000 + "]\n", "more than 10,000 nodes"),
        (
            # Each alias is shallow; chained, they nest 40 deep.
            "a0: &a0 [x]\n"
            + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 40))
            + "b: *a39\n",
            "aliases nest deeper than 32 levels",
        ),
    ],
)
def test_bombs_and_deep_nesting_are_refused_quickly(tmp_path, text, message):
    user = write(tmp_path / "bomb.yaml", text)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=message):
        load_params(user)
    # Not a speed target: unbounded, these expand for hours. Refused here in milliseconds;
    # the bound only has to tell "refused by the limits" from "expanded" on a busy machine.
    assert time.perf_counter() - start < 10


def test_a_bomb_in_an_override_is_refused_too():
    bomb = billion_laughs().replace("\n", ", ").replace("a0:", "{a0:").rstrip(", ") + "}"
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="aliases expand to more than 10,000 nodes"):
        load_params(overrides=(f"labels.horizon_days={bomb}",))
    assert time.perf_counter() - start < 10  # see above: a hang guard, not a speed target


# ------------------------------------------------------------------------ semantic bounds


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "features.windows_days=[0]",
            r"features\.windows_days\[0\]: Input should be greater than 0",
        ),
        ("features.windows_days=[7, -30]", r"features\.windows_days\[1\]: Input should be greater"),
        ("features.windows_days=[7, 30, 7]", r"features\.windows_days: duplicate entries \[7\]"),
        ("features.windows_days=[]", r"features\.windows_days: must not be empty"),
        (
            f"features.rfm_windows_days=[30, {MAX_DAYS + 1}]",
            r"features\.rfm_windows_days\[1\]: Input should be less than or equal to 3650",
        ),
        ("features.rfm_windows_days=[90, 90]", r"rfm_windows_days: duplicate entries \[90\]"),
        (
            "labels.horizon_days=100000000",
            r"labels\.horizon_days: Input should be less than or equal to 3650",
        ),
        ("labels.active_within_days=0", r"labels\.active_within_days: Input should be greater"),
        ("labels.churn_activity_types=[]", r"labels\.churn_activity_types: must not be empty"),
        ("features.ttl_days=99999", r"features\.ttl_days: Input should be less than or equal"),
        ("features.trend_days=0", r"features\.trend_days: Input should be greater than 0"),
        ("features.snapshot_every_days=-7", r"features\.snapshot_every_days: Input should be"),
        ("data.event_types=[purchase, purchase]", r"duplicate entries \['purchase'\]"),
        ("data.event_types=[Purchase]", r"data\.event_types\[0\]: String should match pattern"),
        (
            "features.rates={bad name: [purchase, web_visit]}",
            r"features\.rates\.'bad name' \(key\)",
        ),
        ("data.future_tolerance_minutes=100000", r"future_tolerance_minutes: Input should be less"),
        ("data.events=''", r"data\.events: String should have at least 1 character"),
        ("simulate.customers=0", r"simulate\.customers: Input should be greater than 0"),
        ("simulate.days=36500", r"simulate\.days: Input should be less than or equal to 3650"),
        ("simulate.seed=-1", r"simulate\.seed: Input should be greater than or equal to 0"),
        ("training.seed=4294967296", r"training\.seed: Input should be less than or equal"),
        ("simulate.start=someday", r"simulate\.start: not an ISO 8601 date or time: 'someday'"),
        ("simulate.amount_log_mean=800", r"amount_log_mean: Input should be less than or equal"),
        ("serving.port=0", r"serving\.port: Input should be greater than 0"),
        ("serving.port=65536", r"serving\.port: Input should be less than 65536"),
        ("serving.stale_after_hours=1e300", r"stale_after_hours: Input should be less than or"),
        ("serving.webhook_retries=1000", r"webhook_retries: Input should be less than or equal"),
        ("serving.webhook_timeout_s=0", r"webhook_timeout_s: Input should be greater than 0"),
        ("serving.webhook_url=localhost:9000", r"webhook_url: not an http\(s\) URL"),
        ("serving.api_key_env=MY-KEY", r"serving\.api_key_env: String should match pattern"),
        ("feast.project=my-project", r"feast\.project: String should match pattern"),
        ("training.lightgbm.num_leaves=1000000", r"num_leaves: Input should be less than or equal"),
        (
            "training.lightgbm.max_depth=-2",
            r"max_depth: Input should be greater than or equal to -1",
        ),
        ("training.promotion_tolerance=2", r"promotion_tolerance: Input should be less than or"),
        ("value.lifespan_years=1000", r"value\.lifespan_years: Input should be less than or equal"),
        ("segments.lost_inactive_days=99999", r"lost_inactive_days: Input should be less than or"),
        (
            "segments.at_risk_inactive_days=180",
            r"segments\.at_risk_inactive_days: must be less than segments\.lost_inactive_days "
            r"\(180\), else no contact is ever At risk \(from --set segments\.at_risk_inactive_"
            r"days=180; segments\.lost_inactive_days from params\.yaml\)",
        ),
    ],
)
def test_semantic_bounds(override, message):
    with pytest.raises(ConfigError, match=message):
        load_params(overrides=(override,))


def test_values_at_the_bounds_are_accepted():
    p = load_params(
        overrides=(
            f"labels.horizon_days={MAX_DAYS}",
            f"features.windows_days=[1, {MAX_DAYS}]",
            "serving.port=65535",
            "training.seed=0",
            "simulate.start=2025-01-01T00:00:00+02:00",
            "serving.webhook_url=https://hooks.example.com/engage",
            "segments.at_risk_inactive_days=0",
            "training.lightgbm.learning_rate=1e-3",  # YAML 1.1 reads this as text; still a float
        )
    )
    assert p.labels.horizon_days == MAX_DAYS
    assert p.training.lightgbm.learning_rate == 0.001


# ------------------------------------------------------------- compute engine and Spark


def test_the_default_engine_is_duckdb_with_a_local_spark_master():
    p = load_params()
    assert p.compute.engine == "duckdb"
    assert p.spark.master == "local[*]"
    conf = p.spark.conf
    assert all(isinstance(v, str) for v in conf.values())
    assert conf["spark.ui.enabled"] == "false"


def test_yaml_numbers_and_booleans_in_the_spark_conf_become_sparks_strings():
    p = load_params(overrides=("spark.conf={spark.ui.enabled: true, spark.executor.cores: 2}",))
    assert p.spark.conf == {"spark.ui.enabled": "true", "spark.executor.cores": "2"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("compute.engine=polars", r"compute\.engine: Input should be 'duckdb' or 'spark'"),
        ("spark.master=local[0]", r"spark\.master: not a Spark master URL: 'local\[0\]'"),
        (
            "spark.master='http://host:7077'",
            r"spark\.master: not a Spark master URL: 'http://host:7077'",
        ),
        ("spark.master=''", r"spark\.master: not a Spark master URL: ''"),
        ("spark.conf={driver.memory: 2g}", r"spark\.conf\.'driver\.memory' \(key\)"),
        (
            "spark.conf={spark.driver.memory: ''}",
            r"spark\.conf\.'spark\.driver\.memory': empty: a Spark setting needs a value",
        ),
        (
            "spark.conf={spark.master: 'local[2]'}",
            r"spark\.conf\.spark\.master: not allowed here: set spark\.master instead",
        ),
        (
            "spark.conf={spark.sql.session.timeZone: Europe/Paris}",
            r"spark\.conf\.spark\.sql\.session\.timeZone: not allowed here: engage runs Spark "
            r"in UTC",
        ),
    ],
)
def test_bad_compute_and_spark_settings_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_params(overrides=(override,))


@pytest.mark.parametrize(
    "master",
    [
        "local",
        "local[2]",
        "local[*]",
        "local[4,3]",
        "spark://h:7077",
        "yarn",
        "k8s://https://h:6443",
        "sc://h:15002",
    ],
)
def test_every_kind_of_spark_master_is_accepted(master):
    p = load_params(overrides=("compute.engine=spark", f"spark.master='{master}'"))
    assert (p.compute.engine, p.spark.master) == ("spark", master)


def test_the_spark_conf_mapping_is_replaced_whole_and_frozen():
    p = load_params(overrides=("spark.conf={spark.sql.shuffle.partitions: 2}",))
    assert p.spark.conf == {"spark.sql.shuffle.partitions": "2"}
    with pytest.raises(Exception, match="frozen"):
        p.spark.master = "yarn"
