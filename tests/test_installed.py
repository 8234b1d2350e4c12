"""soundsmith installed from its wheel, not run from the checkout, finds its shipped models and generates.

The wheel is built from a copy of the package folders (so the checkout's build/ and egg-info are neither used
nor touched), installed with `pip install --no-deps --target`, and that folder is put first on PYTHONPATH: the
.venv's python still provides the dependencies, and PYTHONPATH wins over the editable install's finder (the
child prints where soundsmith came from, and the test checks it). Everything runs from an empty folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent

# Runs in the child: where soundsmith and its models come from, the app's pieces, then one generate call.
CHILD = """
import contextlib, io, json, sys
import soundsmith, soundsmith.cli
from soundsmith.app.launch import ENTRY
from soundsmith.app.models import find_models
from soundsmith.core.paths import checkout_folder, shipped_models

parser = soundsmith.cli.build_parser()
help_text = io.StringIO()
with contextlib.redirect_stdout(help_text), contextlib.suppress(SystemExit):
    parser.parse_args(["app", "--help"])
with contextlib.redirect_stderr(io.StringIO()):  # train-labels writes only where --out says: it has no default
    try:
        parser.parse_args(["eval", "train-labels", "--data", "corpus"])
        labels_out_required = False
    except SystemExit:
        labels_out_required = True
print(json.dumps({"soundsmith": soundsmith.__file__, "models": str(shipped_models()), "entry": str(ENTRY),
                  "app_models": {k: str(v) for k, v in find_models().items()},
                  "app_model_dir_default": parser.parse_args(["app"]).model_dir,
                  "app_help": "--model-dir" in help_text.getvalue(), "labels_out_required": labels_out_required,
                  "prompts": str(checkout_folder("benchmarks", "prompts"))}))
sys.stdout.flush()
sys.exit(soundsmith.cli.main(sys.argv[1:]))
"""


def package_folders() -> list[str]:
    """The folders pyproject.toml maps into the package (soundsmith/, core/, ..., models/)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return sorted(set(config["package-dir"].values()))


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts}


def test_the_installed_wheel_generates_from_another_folder():
    # a temporary folder removed at the end, not tmp_path: pytest keeps those, and this one holds ~250 MB
    with tempfile.TemporaryDirectory(prefix="soundsmith-wheel-", ignore_cleanup_errors=True) as tmp:
        check_installed_wheel(Path(tmp))


def check_installed_wheel(tmp_path: Path) -> None:
    src, dist, site, work = (tmp_path / name for name in ("src", "dist", "site", "work"))
    for name in package_folders():
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # stored, not deflated: the weights hardly compress, and zipping 54 MB was a third of this test's time
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-C--build-option=--compression=stored",
                    "-w", str(dist), str(src)], check=True, capture_output=True)
    (wheel,) = dist.glob("soundsmith-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True)
    installed = site / "soundsmith"
    models_before = files_under(installed / "models")
    assert {"default-ldm/config.json", "clap/model.safetensors", "mel-codec/vae/model.safetensors"} <= models_before

    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOUNDSMITH_")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.setdefault("SOUNDSMITH_CACHE", str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", CHILD, "generate", "rain on a tin roof", "--duration", "1",
                           "--seed", "0", "--out", "out"], cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.splitlines()[0])

    # the installed copy ran, with its own models, not the checkout's
    assert Path(seen["soundsmith"]).is_relative_to(installed), seen["soundsmith"]
    assert Path(seen["models"]) == installed / "models"
    assert Path(seen["entry"]).is_file() and Path(seen["entry"]).is_relative_to(installed)
    shipped = [str(installed / "models" / name) for name in ("default-ldm", "default-tokens")]
    assert sorted(seen["app_models"].values()) == shipped  # the app offers the installed defaults
    assert seen["app_model_dir_default"] == str(installed / "models") and seen["app_help"]
    assert seen["labels_out_required"]
    assert seen["prompts"] == "None"  # benchmarks/prompts is the checkout's: the app offers uploads instead
    (clip,) = (work / "out").glob("*.wav")
    assert sf.info(str(clip)).frames >= 16000
    assert files_under(installed / "models") == models_before  # nothing wrote into the installed package
