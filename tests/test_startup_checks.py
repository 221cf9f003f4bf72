"""Start-up checks that keep an example configuration from serving for real (issue 10)."""

from __future__ import annotations

import pytest

from bot.cli import main
from tests.harness import BASE_CONFIG, write_config


@pytest.mark.parametrize("key", ["change-me", "short-key-15chr"])
def test_a_placeholder_or_short_ofrep_key_stops_start_up(tmp_path, capsys, key):
    config = write_config(tmp_path, "", BASE_CONFIG.replace('"test-key-for-ofrep-0001"', f'"{key}"'))
    assert main(["--config", str(config), "config", "check"]) == 2
    err = capsys.readouterr().err
    assert "flags.api_keys: key #1 is a placeholder or shorter than 16 characters" in err
    assert key not in err  # the key itself is not echoed


def test_config_check_warns_when_anyone_may_deploy_to_an_environment_that_respects_windows(tmp_path, capsys):
    config = write_config(tmp_path, "", BASE_CONFIG)
    assert main(["--config", str(config), "config", "check"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "environments.production respects school windows" in err and "deployers" in err
    assert "environments.staging" not in err  # staging ignores windows


def test_the_repositorys_own_recess_toml_passes_its_checks():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    assert main(["--config", str(root / "recess.toml"), "config", "check"]) == 0
