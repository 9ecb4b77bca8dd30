"""Secrets are redacted by key and from the job's output however the engine chunks it; values
written in the spec are recorded as written."""
import json

import pytest
from hypothesis import given, settings, strategies as st

from orchestrator.secrets import (REDACTED, Redactor, StreamRedactor, looks_secret,
                                  recorded_environment_env, recorded_inputs_env)


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.text(alphabet="abc", min_size=2, max_size=5), min_size=1, max_size=3),
       st.text(alphabet="abcx", max_size=60), st.lists(st.integers(0, 60), max_size=8))
def test_streamed_output_is_redacted_exactly_as_the_whole_would_be(secrets, text, cuts):
    redactor = Redactor(secrets)
    data = text.encode()
    cuts = sorted({c for c in cuts if c <= len(data)})
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
    stream = StreamRedactor(redactor)
    emitted = [stream.feed(piece) for piece in pieces] + [stream.flush()]
    assert b"".join(emitted) == redactor.bytes(data)
    # Emitted chunks are final: none ends inside a replacement, so stdout and stderr can
    # interleave safely. (The text has no "<"; every "<" starts a replacement.)
    for chunk in emitted:
        assert chunk.count(b"<") == chunk.count(b"<redacted>")


# --------------------------------------------------------------------------- by name, by key


SPEC_VALUES = {"API_KEY": "2026", "AUTH_MODE": "none", "DB_PASSWORD": "root",
               "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.parametrize("name", ["HF_TOKEN", "GITHUB_TOKEN", "AWS_SESSION_TOKEN", "DB_PASSWORD",
                                  "PGPASSWORD", "MYSQL_PWD", "WANDB_API_KEY", "OPENAI_APIKEY",
                                  "AWS_SECRET_ACCESS_KEY", "MINIO_SECRET_KEY", "CLIENT_SECRET",
                                  "GPG_PASSPHRASE", "SSH_PRIVATE_KEY", "api_key"])
def test_names_that_end_like_a_credential_look_secret(name):
    assert looks_secret(name)


@pytest.mark.parametrize("name", ["TOKENIZERS_PARALLELISM", "AUTH_MODE", "MAX_TOKENS", "PWD",
                                  "KEY_COLUMN", "SSH_AUTH_SOCK", "TOKEN_LIMIT", "PASSWORD_POLICY",
                                  "OMP_NUM_THREADS"])
def test_names_that_only_mention_a_credential_are_settings(name):
    assert not looks_secret(name)


def test_the_spec_values_are_recorded_as_written_and_declared_secrets_by_key():
    assert recorded_inputs_env(SPEC_VALUES, ["UPLOAD_TARGET"]) == {**SPEC_VALUES,
                                                                 "UPLOAD_TARGET": REDACTED}
    seen = {"API_KEY": REDACTED, "HF_TOKEN": REDACTED, "UPLOAD_TARGET": "dst-1234",
            "PATH": "/usr/bin"}           # as the probe parsed it: redacted by name
    assert recorded_environment_env(seen, set_by_reprun={"API_KEY": "2026", "UPLOAD_TARGET": "dst-1234"},
                                    spec_env={"API_KEY": "2026"}, declared=["UPLOAD_TARGET"]) == {
        "API_KEY": "2026", "HF_TOKEN": REDACTED, "UPLOAD_TARGET": REDACTED, "PATH": "/usr/bin"}


# --------------------------------------------------------------------------- against the engine

SETTINGS_JOB = """
import json, os, sys
names = ["API_KEY", "AUTH_MODE", "DB_PASSWORD", "TOKENIZERS_PARALLELISM"]
print("settings:", *(os.environ[n] for n in names), flush=True)
json.dump({"score": 1, "parallel_" + os.environ["TOKENIZERS_PARALLELISM"]: 1},
          open("/out/metrics.json", "w"))
print("uploading to", os.environ["UPLOAD_TARGET"], flush=True)
sys.stdout.write("the last words, without a newline")
"""


def settings_spec(project, script=SETTINGS_JOB, secrets="secrets: [UPLOAD_TARGET]\n"):
    project.dataset()
    env = ", ".join(f'{k}: "{v}"' for k, v in SPEC_VALUES.items())
    return project.spec(script=script, extra=f"env: {{{env}}}\n{secrets}")


@pytest.fixture
def settings_run(project):
    """One run of a job whose spec sets values that look like the words of its own record."""
    target = "dst-upload-9f3a"
    result = project.reprun("run", str(settings_spec(project)),
                            extra_env={"UPLOAD_TARGET": target})
    assert result.returncode == 0, result.stderr
    [run] = json.loads(project.reprun("runs", "--json").stdout)
    shown = project.reprun("runs", "show", run["id"], "--json")
    assert shown.returncode == 0, shown.stderr
    return result, json.loads(shown.stdout), target


@pytest.mark.engine
def test_an_api_key_of_2026_does_not_rewrite_the_run_id(project, settings_run):
    result, record, _ = settings_run
    assert "2026" in record["id"]       # the attack: run IDs start with the year
    assert record["id"] in result.stdout + result.stderr
    assert (project.store / "runs" / record["id"] / "record.json").is_file()
    assert record["inputs"]["env"]["API_KEY"] == "2026"
    assert record["environment"]["env"]["API_KEY"] == "2026"


@pytest.mark.engine
def test_auth_mode_none_and_db_password_root_leave_the_hermetic_settings_named(settings_run):
    _, record, _ = settings_run
    container = record["inputs"]["container"]
    assert container["network"] == "none" and container["read_only_root"] is True
    assert {k: record["inputs"]["env"][k] for k in ("AUTH_MODE", "DB_PASSWORD")} == \
        {"AUTH_MODE": "none", "DB_PASSWORD": "root"}


@pytest.mark.engine
def test_tokenizers_parallelism_false_is_recorded_as_is_in_env_logs_and_metrics(project, settings_run):
    _, record, target = settings_run
    assert record["inputs"]["env"] == {**SPEC_VALUES, "UPLOAD_TARGET": REDACTED}
    assert record["environment"]["env"]["TOKENIZERS_PARALLELISM"] == "false"
    assert record["environment"]["env"]["UPLOAD_TARGET"] == REDACTED
    assert "parallel_false" in record["outputs"]["metrics"]
    log = (project.store / "runs" / record["id"] / "log.txt").read_text()
    assert "settings: 2026 none root false" in log
    assert f"uploading to {REDACTED}" in log and target not in log     # declared: scrubbed


@pytest.mark.engine
def test_the_tail_of_a_stream_reaches_the_terminal_while_a_secret_is_redacted(project, settings_run):
    result, record, target = settings_run
    shown = result.stdout + result.stderr
    assert "the last words, without a newline" in shown and target not in shown
    log = (project.store / "runs" / record["id"] / "log.txt").read_text()
    assert log.endswith("the last words, without a newline")


@pytest.mark.engine
def test_a_rerun_uses_the_recorded_tokenizers_parallelism_not_the_callers(project):
    # The job fails unless it sees the spec's value: a rerun that took the caller's `true`
    # would blame the job for nondeterminism instead.
    script = ("import json, os; assert os.environ['TOKENIZERS_PARALLELISM'] == 'false'\n"
              "json.dump({'score': 1}, open('/out/metrics.json', 'w'))\n")
    spec = settings_spec(project, script=script, secrets="")
    assert project.reprun("run", str(spec), "-q").returncode == 0
    [run] = json.loads(project.reprun("runs", "--json").stdout)
    replay = project.reprun("rerun", run["id"], "-q", extra_env={"TOKENIZERS_PARALLELISM": "true"})
    assert replay.returncode == 0, replay.stderr
    assert replay.stdout.startswith("IDENTICAL")
