"""An agent folder's files are read once for every kind of agent, and every way they
can be wrong is a typed AgentError that names the file and says how to fix it."""

import pytest

from dora_rl.errors import AgentError
from dora_rl.learning.agent_files import load_model, read_config


def test_config_missing_invalid_or_not_a_mapping(tmp_path):
    with pytest.raises(AgentError, match=r"config.yml is missing.*retrain"):
        read_config(tmp_path, "x agent", "retrain it")
    (tmp_path / "config.yml").write_text("a: [1, 2\n")
    with pytest.raises(AgentError, match=r"x agent .*config.yml is not valid YAML.*retrain it"):
        read_config(tmp_path, "x agent", "retrain it")
    (tmp_path / "config.yml").write_text("- 1\n- 2\n")
    with pytest.raises(AgentError, match="not a mapping"):
        read_config(tmp_path, "x agent", "retrain it")
    (tmp_path / "config.yml").write_text("kind: adapt\n")
    assert read_config(tmp_path, "x agent", "retrain it") == {"kind": "adapt"}


def test_model_missing_or_corrupt(tmp_path):
    with pytest.raises(AgentError, match=r"model.zip is missing; train one"):
        load_model(tmp_path, "agent", "train one")
    (tmp_path / "model.zip").write_bytes(b"not a zip file")
    with pytest.raises(AgentError, match=r"model.zip is corrupt or unreadable \(.*\); train one"):
        load_model(tmp_path, "agent", "train one")


def test_adapter_agent_with_invalid_yaml_is_an_agent_error(tmp_path):
    """The adapter loader read config.yml without catching YAML errors (a traceback)."""
    from dora_rl.learning.adapter_agent import load_adapter_agent

    (tmp_path / "config.yml").write_text("kind: [adapt\n")
    (tmp_path / "model.zip").write_bytes(b"")
    with pytest.raises(AgentError, match="adapter agent .*not valid YAML"):
        load_adapter_agent(None, tmp_path)
