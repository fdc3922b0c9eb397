"""The project's own files agree with each other: README <-> CI, MLproject <-> CLI,
conda.yaml <-> pyproject pins."""

import re
import shlex
import tomllib
from pathlib import Path

import yaml

from srcore.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_ci_runs_the_readme_test_command():
    readme_cmds = [line.strip() for block in _bash_blocks((REPO / "README.md").read_text()) for line in block.splitlines()]
    test_cmd = next(c for c in readme_cmds if c.endswith("pytest -q"))
    ci = (REPO / ".ci/run").read_text()
    assert any(line.strip() == test_cmd for line in ci.splitlines()), (
        "the test command in README.md and .ci/run differ"
    )


def test_mlproject_commands_use_real_cli_flags():
    spec = yaml.safe_load((REPO / "MLproject").read_text())
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for name, entry in spec["entry_points"].items():
        argv = shlex.split(entry["command"])
        assert argv[:3] == ["python", "-m", "srcore"], name
        step = argv[3]
        known = {opt for action in subparsers[step]._actions for opt in action.option_strings}
        for token in argv[4:]:
            if token.startswith("--"):
                assert token in known, f"MLproject {name}: {token} is not a flag of `srgan {step}`"
        for param in entry.get("parameters", {}):
            assert "{" + param + "}" in entry["command"], f"MLproject {name}: parameter {param} unused"


def test_conda_env_pins_match_pyproject():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip_deps = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert sorted(pip_deps) == sorted(deps)


# Synthetic images a test or doc may track, by path (none today). CelebA-derived images never:
# the CelebA licence forbids redistribution (docs/RESULTS.md's grid goes to the ignored docs/local/).
ALLOWED_IMAGES: set[str] = set()
IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")


def test_no_tracked_image_can_be_a_celeba_face():
    import shutil
    import subprocess

    import pytest

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    images = []
    for name in filter(None, tracked.decode().split("\0")):
        path = REPO / name
        if not path.is_file():
            continue  # deleted in the working tree
        with path.open("rb") as f:
            head = f.read(12)
        if name.lower().endswith((".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")) or \
                head.startswith(IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
            images.append(name)
    assert sorted(set(images) - ALLOWED_IMAGES) == [], "tracked images (CelebA must not be redistributed)"
    ignored = subprocess.run(["git", "check-ignore", "-q", "docs/local/results-grid.png"], cwd=REPO)
    assert ignored.returncode == 0, "benchmarks/quality.py writes its CelebA grid to docs/local/, which git must ignore"
