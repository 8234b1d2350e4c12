import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_stdlib_codecs_is_not_shadowed():
    import codecs

    import soundsmith.codecs

    assert codecs.encode("abc", "rot13") == "nop"
    assert soundsmith.codecs.read_audio


def test_every_package_folder_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    folder_of = {name: Path(folder) for name, folder in config["package-dir"].items()}
    found = set()
    for name, folder in folder_of.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    assert found == listed, f"pyproject packages differ from folders: missing {found - listed}, extra {listed - found}"


def test_import_soundsmith_does_not_import_torch():
    code = "import sys, soundsmith, soundsmith.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "soundsmith.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("generate", "data", "train", "eval", "app", "convert"):
        assert command in out.stdout


def test_console_script_installed():
    exe = Path(sys.executable).parent / "soundsmith"
    assert exe.exists() and os.access(exe, os.X_OK)
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("soundsmith ")
