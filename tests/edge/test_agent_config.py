"""The TOML configuration: defaults, validation, unknown keys, overrides, the example file."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from agent_helpers import REPO_ROOT, run_agent

from edge.config import AgentConfig, config_from_dict, load_config
from edge.errors import EX_CONFIG, ConfigError

EXAMPLE = REPO_ROOT / "edge" / "config.example.toml"


def test_no_file_gives_defaults():
    config = load_config(None)
    assert config == AgentConfig()
    assert config.review.threshold == 0.9 and config.dicom.modalities == ("MR",)


def test_example_file_documents_every_key_with_its_default():
    """The example must list every section and key, each with the built-in default."""
    config = load_config(str(EXAMPLE))
    defaults = AgentConfig()
    for f in dataclasses.fields(AgentConfig):
        if f.name == "source":
            continue
        assert getattr(config, f.name) == getattr(defaults, f.name), f.name
    text = EXAMPLE.read_text()
    for f in dataclasses.fields(AgentConfig):
        if f.name == "source":
            continue
        assert f"[{f.name}]" in text
        for key in dataclasses.fields(getattr(defaults, f.name)):
            assert f"\n{key.name} = " in text, f"{f.name}.{key.name} is not documented"


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        AgentConfig().review.threshold = 0.1  # type: ignore[misc]


@pytest.mark.parametrize("data, message", [
    ({"watch": {"setle_seconds": 2}},
     "unknown key 'setle_seconds' \\(did you mean 'settle_seconds'"),
    ({"wach": {}}, "unknown section 'wach' \\(did you mean 'watch'"),
    ({"review": {"threshold": 1.5}}, "threshold must be between 0 and 1"),
    ({"review": {"threshold": "high"}}, "threshold must be a number"),
    ({"watch": {"recursive": "yes"}}, "recursive must be a bool"),
    ({"watch": {"max_pending": 0}}, "max_pending must be at least 1"),
    ({"watch": {"once_settle_limit": 0}}, "once_settle_limit must be > 0 seconds"),
    ({"watch": {"warn_days": -1}}, "warn_days must be >= 0 days"),
    ({"dicom": {"frame": "last"}}, "frame must be one of middle, first"),
    ({"dicom": {"modalities": "MR"}}, "modalities must be a list of strings"),
    ({"dicom": {"percentile_low": 99, "percentile_high": 1}}, "percentile_low"),
    ({"runtime": {"name": "onnx"}}, "name must be one of"),
    ({"logging": {"level": "loud"}}, "level must be one of"),
    ({"paths": "x"}, "must be a table"),
])
def test_invalid_configs_are_refused_with_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data, "my.toml")


def test_ints_are_accepted_for_floats_and_overrides_apply():
    config = config_from_dict({"watch": {"settle_seconds": 5}})
    assert config.watch.settle_seconds == 5.0 and isinstance(config.watch.settle_seconds, float)
    config = config.override("paths", inbox="/in", outbox=None)
    assert config.paths.inbox == "/in" and config.paths.outbox == ""
    with pytest.raises(ConfigError, match="poll_interval"):
        config.override("watch", poll_interval=0.0)


def test_invalid_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[watch\nsettle_seconds = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.toml"))


def test_cli_unknown_key_exits_78_without_traceback(tmp_path: Path):
    config = tmp_path / "config.toml"
    config.write_text("[watch]\npoll = true\nbogus = 1\n")
    result = run_agent(["--config", str(config), "check"])
    assert result.returncode == EX_CONFIG == 78
    assert "unknown key 'bogus' in [watch]" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_config_that_is_a_folder_or_unreadable_exits_78(tmp_path: Path):
    """Like every other configuration error (click's own check would exit 2)."""
    result = run_agent(["--config", str(tmp_path), "check"])
    assert result.returncode == EX_CONFIG, result.stderr
    assert "is a folder; pass the TOML file itself" in result.stderr
    assert "Traceback" not in result.stderr
    if os.geteuid() == 0:
        return  # root reads any file: the unreadable case cannot be made here
    config = tmp_path / "config.toml"
    config.write_text("[watch]\npoll = true\n")
    config.chmod(0)
    result = run_agent(["--config", str(config), "check"])
    assert result.returncode == EX_CONFIG, result.stderr
    assert "cannot read config file" in result.stderr and "make it readable" in result.stderr
