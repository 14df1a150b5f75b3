"""mmr.env_secrets: API keys from a file on shared storage, never from a job's runtime env."""

from __future__ import annotations

import pytest

from mmr.env_secrets import SecretsFileError, load_secrets, read_secrets_file


def test_the_file_fills_what_the_environment_lacks(tmp_path):
    path = tmp_path / "secrets.env"
    path.write_text("# keys\nexport OPENAI_API_KEY=sk-file\n\nWANDB_API_KEY='wb = 1'\nX=\n")
    env = {"MMR_SECRETS_FILE": str(path), "X": "from-node"}
    assert load_secrets(env) == ["OPENAI_API_KEY", "WANDB_API_KEY"]  # X: the node's wins
    assert env["OPENAI_API_KEY"] == "sk-file" and env["WANDB_API_KEY"] == "wb = 1"
    assert env["X"] == "from-node"
    assert load_secrets({}) == []  # no MMR_SECRETS_FILE: nothing read


def test_a_bad_or_missing_file_names_the_line_never_a_value(tmp_path):
    path = tmp_path / "secrets.env"
    path.write_text("OPENAI_API_KEY=sk-ok\nsk-pasted-alone\n")
    with pytest.raises(SecretsFileError, match=r"secrets.env:2: not a NAME=value") as err:
        read_secrets_file(path)
    assert "sk-" not in str(err.value).replace(str(path), "")
    with pytest.raises(SecretsFileError, match=r"MMR_SECRETS_FILE=.*cannot read"):
        load_secrets({"MMR_SECRETS_FILE": str(tmp_path / "missing")})


def test_the_llm_client_reads_its_key_from_the_file(tmp_path, monkeypatch):
    from mmr.llm.client import Client, Endpoint

    path = tmp_path / "secrets.env"
    path.write_text("MMR_TEST_JUDGE_KEY=sk-from-file\n")
    monkeypatch.setenv("MMR_SECRETS_FILE", str(path))
    monkeypatch.setenv("MMR_TEST_JUDGE_KEY", "")  # restored (removed) after the test
    client = Client(Endpoint("http://127.0.0.1:9/v1", "judge", api_key_env="MMR_TEST_JUDGE_KEY"))
    assert client._openai.api_key == "sk-from-file"
    assert "sk-from-file" not in repr(client)
