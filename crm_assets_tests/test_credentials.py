"""The CRM's address and keys from dlt's settings: `[sources.crm]` in .dlt/secrets.toml (and
.dlt/config.toml for the address) or SOURCES__CRM__* in the environment, when the CRM_*
variables are unset. Order: the resource's own config > CRM_* > dlt.

Every test works in a project folder of its own under tmp_path, used as the working directory,
so nothing is written into the repository and a `.dlt/` there cannot take part.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dlt.common.configuration.container import Container
from dlt.common.configuration.specs import PluggableRunContext

from crm_assets.errors import CRMConfigError
from crm_assets.resources import CRMCredentials
from crm_assets_tests.conftest import (
    ACCESS_KEY,
    API_KEY,
    CRM_ENV_VARS,
    Workspace,
    assert_same_records,
    clean_env,
    venv_cli,
)
from crm_assets_tests.fault_support import leak_report
from crm_simulator import CRMSimulator

MISSING_API_KEY = "CRM_API_KEY is not set: export CRM_API_KEY where dagster dev, the daemon"
DLT_ENV = ("SOURCES__CRM__BASE_URL", "SOURCES__CRM__API_KEY", "SOURCES__CRM__ACCESS_KEY")
URL = "https://crm.example.com"


def reload_dlt_settings() -> None:
    """Have dlt read its settings files again, from the current working directory.

    dlt reads .dlt/*.toml once per process (importing the definitions already does). A run
    Dagster starts is a new process in its working directory; a test that changes directory
    inside one process stands in for that by asking dlt to read them again, as dlt's own
    Airflow helper does when a task's settings move."""
    Container()[PluggableRunContext].reload_providers()


@dataclass
class Project:
    """A folder used as the working directory, with dlt's settings folder in it."""

    root: Path

    def settings(self, *, secrets: str = "", config: str = "") -> None:
        """Write .dlt/secrets.toml and .dlt/config.toml (each only if given) and have dlt read
        them."""
        dot_dlt = self.root / ".dlt"
        dot_dlt.mkdir(exist_ok=True)
        if secrets:
            (dot_dlt / "secrets.toml").write_text(secrets)
        if config:
            (dot_dlt / "config.toml").write_text(config)
        reload_dlt_settings()


CREDENTIALS = ("CRM_BASE_URL", "CRM_API_KEY", "CRM_ACCESS_KEY", *DLT_ENV, "DLT_PROJECT_DIR")


def without_credentials(env: dict[str, str]) -> dict[str, str]:
    """`env` without the CRM's address and keys, whether as CRM_* or as dlt's names, nor a dlt
    project folder other than the working directory."""
    return {k: v for k, v in env.items() if k not in CREDENTIALS}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    """An empty project folder as the working directory, with no CRM setting anywhere: not in
    the environment, not in a `.dlt/` of the repository, not in the user's global ~/.dlt/."""
    root = tmp_path / "project"
    root.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    with monkeypatch.context() as patch:
        for name in (*CRM_ENV_VARS, *CREDENTIALS):
            patch.delenv(name, raising=False)
        patch.setenv("HOME", str(home))  # dlt's global folder is ~/.dlt (unless run as root)
        patch.chdir(root)
        reload_dlt_settings()
        yield Project(root)
    # Back in the original directory: later tests must not see this project's keys.
    reload_dlt_settings()


SECRETS_TOML = f"""
[sources.crm]
base_url = "{URL}"
api_key = "{API_KEY}"
access_key = "{ACCESS_KEY}"
"""


def test_secrets_toml_in_the_working_directory_gives_the_connection(project: Project) -> None:
    project.settings(secrets=SECRETS_TOML)
    connection = CRMCredentials().connection()
    assert (connection.base_url, connection.api_key, connection.access_key) == (
        URL,
        API_KEY,
        ACCESS_KEY,
    )
    assert API_KEY not in repr(connection) and ACCESS_KEY not in repr(connection)


def test_base_url_in_config_toml_and_keys_in_secrets_toml(project: Project) -> None:
    project.settings(
        secrets=f'[sources.crm]\napi_key = "{API_KEY}"\naccess_key = "{ACCESS_KEY}"\n',
        config=f'[sources.crm]\nbase_url = "{URL}"\n',
    )
    connection = CRMCredentials().connection()
    assert (connection.base_url, connection.api_key, connection.access_key) == (
        URL,
        API_KEY,
        ACCESS_KEY,
    )


def test_dlt_environment_names_give_the_connection(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCES__CRM__BASE_URL", URL)
    monkeypatch.setenv("SOURCES__CRM__API_KEY", API_KEY)
    monkeypatch.setenv("SOURCES__CRM__ACCESS_KEY", ACCESS_KEY)
    connection = CRMCredentials().connection()
    assert (connection.base_url, connection.api_key, connection.access_key) == (
        URL,
        API_KEY,
        ACCESS_KEY,
    )


def test_resource_config_then_crm_variables_then_dlt_environment_then_secrets_toml(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each setting is given at a different number of levels; the highest level given wins."""
    project.settings(
        secrets='[sources.crm]\nbase_url = "https://toml.example.com"\n'
        'api_key = "sk-toml"\naccess_key = "ak-toml"\n'
    )
    monkeypatch.setenv("SOURCES__CRM__API_KEY", "sk-dlt-env")
    monkeypatch.setenv("SOURCES__CRM__ACCESS_KEY", "ak-dlt-env")
    monkeypatch.setenv("CRM_ACCESS_KEY", "ak-crm-env")
    monkeypatch.setenv("CRM_BASE_URL", "https://crm-env.example.com")

    connection = CRMCredentials(base_url="https://config.example.com").connection()
    assert connection.base_url == "https://config.example.com"  # resource config > CRM_*
    assert connection.access_key == "ak-crm-env"  # CRM_* > dlt
    assert connection.api_key == "sk-dlt-env"  # dlt: its environment names > secrets.toml

    monkeypatch.delenv("CRM_BASE_URL")
    monkeypatch.delenv("SOURCES__CRM__API_KEY")
    connection = CRMCredentials().connection()
    assert connection.base_url == "https://toml.example.com"
    assert connection.api_key == "sk-toml"


def test_crm_variables_win_over_dlt(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    project.settings(secrets=SECRETS_TOML)
    for name in DLT_ENV:
        monkeypatch.setenv(name, f"from-dlt-{name}")
    monkeypatch.setenv("CRM_BASE_URL", "https://crm-env.example.com")
    monkeypatch.setenv("CRM_API_KEY", "sk-crm-env")
    monkeypatch.setenv("CRM_ACCESS_KEY", "ak-crm-env")
    connection = CRMCredentials().connection()
    assert (connection.base_url, connection.api_key, connection.access_key) == (
        "https://crm-env.example.com",
        "sk-crm-env",
        "ak-crm-env",
    )


def test_missing_key_is_one_line_naming_both_ways(project: Project) -> None:
    project.settings(secrets=f'[sources.crm]\nbase_url = "{URL}"\naccess_key = "{ACCESS_KEY}"\n')
    with pytest.raises(CRMConfigError) as raised:
        CRMCredentials().connection()
    message = str(raised.value)
    assert message == (
        "CRM_API_KEY is not set: export CRM_API_KEY where dagster dev, the daemon or the CLI "
        "runs, or put api_key under [sources.crm] in .dlt/secrets.toml "
        "(README: Point it at your CRM)"
    )
    assert message.startswith(MISSING_API_KEY)
    assert ACCESS_KEY not in message


def test_missing_base_url_points_at_config_toml(project: Project) -> None:
    with pytest.raises(CRMConfigError, match=r"put base_url under \[sources.crm\] in .dlt/config"):
        CRMCredentials().connection()


def test_a_key_in_config_toml_is_not_taken(project: Project) -> None:
    """config.toml is the file meant to be committed; dlt takes secrets from secrets.toml and
    the environment only."""
    project.settings(
        secrets=f'[sources.crm]\naccess_key = "{ACCESS_KEY}"\n',
        config=f'[sources.crm]\nbase_url = "{URL}"\napi_key = "{API_KEY}"\n',
    )
    with pytest.raises(CRMConfigError, match=MISSING_API_KEY):
        CRMCredentials().connection()


def test_a_key_that_is_not_a_string_is_named_without_its_value(project: Project) -> None:
    project.settings(secrets=f'[sources.crm]\nbase_url = "{URL}"\napi_key = 73519\n')
    with pytest.raises(CRMConfigError) as raised:
        CRMCredentials().connection()
    assert str(raised.value) == "api_key under [sources.crm] must be a quoted string, got a int"
    assert "73519" not in str(raised.value)


# -- the CLI, from a project folder holding .dlt/secrets.toml ---------------------------------


def dagster_in(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """The real `dagster` CLI of this environment, started in `cwd` (the package is installed,
    so `-m crm_assets` loads from anywhere)."""
    return venv_cli("dagster", *args, env=env, cwd=cwd)


def test_cli_takes_the_crm_settings_from_the_dlt_folder_of_its_working_directory(
    workspace: Workspace, simulator: CRMSimulator, tmp_path: Path
) -> None:
    project = tmp_path / "cli-project"
    (project / ".dlt").mkdir(parents=True)
    (project / ".dlt" / "secrets.toml").write_text(
        f'[sources.crm]\napi_key = "{API_KEY}"\naccess_key = "{ACCESS_KEY}"\n'
    )
    (project / ".dlt" / "config.toml").write_text(
        f'[sources.crm]\nbase_url = "{simulator.base_url}"\n'
    )
    home = tmp_path / "home"  # an empty ~/.dlt, whatever the user running the tests keeps there
    home.mkdir()
    # The workspace's warehouse, pipelines folder and DAGSTER_HOME; no address, no key.
    env = {**without_credentials(clean_env(**workspace.env)), "HOME": str(home)}
    simulator.reset_requests()

    done = dagster_in(
        project, env, "asset", "materialize", "-m", "crm_assets", "--select", "crm/cases"
    )

    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert workspace.count("cases") == simulator.count("cases")
    assert_same_records(workspace, simulator, "cases")
    assert {r.path for r in simulator.requests()} == {"/v1/cases"}
    leaks = leak_report(
        (API_KEY, ACCESS_KEY),
        output=output,
        dagster_home=workspace.dagster_home,
        pipelines_dir=workspace.pipelines_dir,
        duckdb_path=workspace.duckdb_path,
    )
    assert leaks.total == 0, leaks
    # The run wrote nothing into the project folder but what was put there.
    written = sorted(str(p.relative_to(project)) for p in project.rglob("*"))
    assert written == [".dlt", ".dlt/config.toml", ".dlt/secrets.toml"]


def test_cli_missing_key_names_the_variable_and_secrets_toml(
    workspace: Workspace, simulator: CRMSimulator, tmp_path: Path
) -> None:
    project = tmp_path / "cli-project"
    (project / ".dlt").mkdir(parents=True)
    (project / ".dlt" / "secrets.toml").write_text(f'[sources.crm]\naccess_key = "{ACCESS_KEY}"\n')
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **without_credentials(clean_env(**workspace.env)),
        "CRM_BASE_URL": simulator.base_url,
        "HOME": str(home),
    }
    simulator.reset_requests()

    done = dagster_in(
        project, env, "asset", "materialize", "-m", "crm_assets", "--select", "crm/cases"
    )

    assert done.returncode != 0
    lines = [
        line
        for line in done.stderr.splitlines()
        if MISSING_API_KEY in line
        and "put api_key under [sources.crm] in .dlt/secrets.toml" in line
    ]
    assert lines, done.stderr[-3000:]
    assert simulator.requests() == []
    assert ACCESS_KEY not in done.stdout + done.stderr
