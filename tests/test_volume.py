"""The volume-writability check of ingest, train and evaluate (srcore.volume via
srcore.kfp_glue.check_volume), run for real as the image's uid 1000 on a root-owned
read-only folder. Tests run as root, which writes anywhere: the denied case runs in a
child process that drops to uid 1000 first (os.setgid/os.setuid), as the image does."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UID = 1000  # the Dockerfile's ARG UID

# Imports first, as root: this venv's Python lives under /root (0700 here), which uid 1000
# cannot read; the check itself then runs as uid 1000.
CHILD = """
import os, sys
from srcore import kfp_glue, volume
from srcore.config import Config, apply_overrides
os.setgid(0)
os.setuid({uid})

def cfg(root):
    return apply_overrides(Config(), {{"data_dir": root + "/data/celeba-128-abc", "cache_dir": root + "/cache",
                                      "model_dir": root + "/runs/r1/model", "eval_dir": root + "/runs/r1/eval"}})

for step in ("ingest", "train", "evaluate"):
    kfp_glue.check_volume(cfg({rw!r}), step)
print("writable ok", flush=True)
for step in ("ingest", "train"):
    try:
        kfp_glue.check_volume(cfg({ro!r}), step)
    except SystemExit as e:
        print(e, flush=True)
kfp_glue.check_volume(cfg({ro!r}), "evaluate")  # uncaught: what the component's process prints
print("not reached", flush=True)
"""


@pytest.fixture
def volumes():
    """A traversable base (pytest's tmp_path is 0700 root, closed to uid 1000) with a
    root-owned 0555 folder (a fresh volume's root as uid 1000 sees it) and one chowned to
    uid 1000 (what the Job in pipeline/k8s does)."""
    if os.getuid() != 0:
        pytest.skip("needs root to create a folder owned by another uid")
    base = Path(tempfile.mkdtemp(prefix="srgan-volume-"))
    try:
        base.chmod(0o755)
        ro, rw = base / "ro", base / "rw"
        ro.mkdir(mode=0o555)
        ro.chmod(0o555)
        rw.mkdir()
        os.chown(rw, UID, 0)
        yield ro, rw
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_read_only_volume_fails_in_one_line_as_uid_1000(volumes):
    ro, rw = volumes
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(rw), "MLFLOW_TRACKING_URI": ""}
    proc = subprocess.run([sys.executable, "-c", CHILD.format(uid=UID, ro=str(ro), rw=str(rw))],
                          capture_output=True, text=True, env=env, cwd=str(rw), timeout=120)
    out = proc.stdout.splitlines()
    assert out[0] == "writable ok" and len(out) == 3, proc.stdout + proc.stderr
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr  # one line, no traceback
    for step, line in zip(("ingest", "train", "evaluate"), [*out[1:], lines[0]]):
        assert line.startswith(f"{step}: {ro} is not writable for uid {UID} gid 0 (Permission denied)"), line
        assert "kubectl -n $NS apply -k pipeline/k8s" in line and "pipeline/k8s/volume-permissions.yaml" in line
    assert not list(rw.rglob(".srgan-write-check-*")) and not (rw / "data").exists()  # probes gone, no folders made


def test_writable_check_probes_the_nearest_existing_folder_and_leaves_nothing(tmp_path):
    from srcore.volume import check_writable

    assert check_writable(tmp_path / "a" / "b") == tmp_path
    assert not (tmp_path / "a").exists() and not list(tmp_path.iterdir())
    (tmp_path / "a").mkdir()
    assert check_writable(tmp_path / "a") == tmp_path / "a"


def test_a_file_where_the_folder_should_be_is_refused(tmp_path):
    from srcore.volume import VolumeNotWritableError, check_writable

    (tmp_path / "f").write_text("x")
    with pytest.raises(VolumeNotWritableError, match=r"f is not writable for uid \d+ .*Not a directory"):
        check_writable(tmp_path / "f" / "sub")


def test_ingest_train_evaluate_check_before_they_connect_or_run():
    """The components call the check first: before the MLflow parent run and the step."""
    for step in ("ingest", "train", "evaluate"):
        body = (REPO / "components" / f"{step}.py").read_text()
        check = body.index(f'kfp_glue.check_volume(')
        assert re.search(rf'check_volume\([^\n]*"{step}"\)', body), step
        assert check < body.index("kfp_glue.connect(") < body.index("steps.run("), step


def test_extra_paths_of_a_step_are_checked_too(tmp_path):
    """A step outside STEP_OUTPUTS (e.g. export writing under volume_root) names its folders."""
    from srcore import kfp_glue
    from srcore.config import Config

    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit, match=rf"^export: {tmp_path / 'f'} is not writable"):
        kfp_glue.check_volume(Config(), "export", str(tmp_path / "f" / "serving"))
    kfp_glue.check_volume(Config(), "export", str(tmp_path / "serving"))  # the nearest folder is writable
