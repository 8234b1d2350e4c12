import subprocess
import sys

import pytest

from soundsmith.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "soundsmith.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args", [["generate"], ["data", "synth"], ["data", "stats"], ["train"], ["eval"], ["app"],
                                  ["convert"]])
def test_help_everywhere(args):
    out = run_cli(*args, "--help")
    assert out.returncode == 0 and "usage: soundsmith" in out.stdout


@pytest.mark.parametrize("args,needle", [
    (["generate", "rain", "--model", "/nonexistent/model"], "model folder not found: /nonexistent/model"),
    (["generate", "rain", "--duration", "-1"], "argument --duration: must be in (0"),
    (["data", "synth", "--out", "x", "--num-clips", "5", "--seed", "-3"], "argument --seed: must be in [0, 2**63-1]"),
    (["data", "synth", "--out", "x"], "one of the arguments --num-clips --hours is required"),
    (["data", "synth", "--out", "x", "--hours", "1", "--sample-rate", "100"], "--sample-rate: must be in [8000, 48000]"),
    (["nosuchcommand"], "invalid choice"),
])
def test_user_mistakes_are_one_line(args, needle):
    out = run_cli(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("soundsmith: error: "), out.stderr
    assert needle in lines[0]
    assert "Traceback" not in out.stderr


def test_verbose_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["--verbose", "generate", "x", "--model", str(tmp_path / "missing")])


def test_bad_model_config_names_the_field(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"backend": "banana"}')
    assert main(["generate", "x", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "config.json: field 'backend' is 'banana'" in err
