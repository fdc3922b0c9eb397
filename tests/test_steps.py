"""The step table (srcore/steps.py) drives the CLI, MLproject, the KFP components and the
docs; Config sections; the resolved Config as JSON; no run without a source."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from srcore.cli import build_parser, main
from srcore.config import ADVANCED, SECTIONS, Config, ConfigError, build_config, config_from_json, config_to_json, require_source
from srcore.steps import STEPS, docs_table, mlproject_text

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _subparsers() -> dict:
    return next(a for a in build_parser()._actions if a.dest == "command").choices


def _visible_flags(parser) -> set[str]:
    return {opt for a in parser._actions if a.help != "==SUPPRESS==" for opt in a.option_strings} | {
        a.dest for a in parser._actions if not a.option_strings}


def test_every_config_field_is_in_exactly_one_section():
    listed = [name for names in SECTIONS.values() for name in names]
    field_names = {f.name for f in fields(Config)}
    assert sorted(n for n in set(listed) if listed.count(n) > 1) == [], "listed in two sections"
    assert field_names - set(listed) == set(), "Config fields missing from config.SECTIONS"
    assert set(listed) - field_names == set(), "SECTIONS names fields Config does not have"


def test_cli_subcommands_and_help_come_from_the_table():
    subs = _subparsers()
    assert set(subs) == set(STEPS) | {"config"}
    for name, step in STEPS.items():
        visible = _visible_flags(subs[name])
        for i in step.inputs:
            assert (i.name if i.many else "--" + i.name.replace("_", "-")) in visible, (name, i.name)
        for field in step.shown or step.config:
            if field not in ADVANCED:  # rarely changed: listed by `srgan config --help`
                assert "--" + field.replace("_", "-") in visible, (name, field)
        # every other Config field is still accepted, hidden from the step's help
        all_flags = {opt for a in subs[name]._actions for opt in a.option_strings}
        assert {"--" + f.name.replace("_", "-") for f in fields(Config)} <= all_flags
    assert {"--" + f.name.replace("_", "-") for f in fields(Config)} <= _visible_flags(subs["config"])


def test_step_help_is_short_and_grouped():
    help_text = _subparsers()["upscale"].format_help()
    assert len(help_text.splitlines()) <= 40, help_text
    assert "upscale inputs:" in help_text and "--model" in help_text and "--max-pixels" in help_text
    assert "--batch-size" not in help_text
    train_help = _subparsers()["train"].format_help()
    assert "train settings:" in train_help and "model settings:" in train_help
    assert "--registered-model-name" not in train_help


def test_step_help_shows_defaults_and_choices_in_under_70_lines(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # a plain terminal
    for name in ("train", "sweep"):
        text = _subparsers()[name].format_help()
        assert len(text.splitlines()) < 70, (name, len(text.splitlines()))
    train = _subparsers()["train"].format_help()
    assert "adversarial (SRGAN) epochs [60]" in train
    assert "[auto] of" in train and "vgg16_53" in train  # allowed values of a choice field
    full = " ".join(_subparsers()["config"].format_help().split())
    assert "--beta-1" in full and "--beta-1" not in train  # the rest is in `srgan config --help`
    assert "a finite number > 0 and <= 86400" in full  # ranges too


def test_no_prefix_abbreviations_and_a_did_you_mean(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--epoch", "3"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "srgan train: unknown flag --epoch; did you mean --epochs" in err, err
    assert len(err.strip().splitlines()) == 1 and "usage: srgan [-h]" not in err
    with pytest.raises(SystemExit):
        main(["upscale", "--modl", "m.keras", "--out", "o", "a.png"])
    assert "did you mean --model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # a misspelt step, too: one line, not the whole usage
        main(["trian", "--epochs", "3"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "unknown step 'trian'; did you mean train?" in err, err
    assert len(err.strip().splitlines()) == 1


def test_version_names_the_package_version_and_commit(capsys, monkeypatch):
    from importlib import metadata

    monkeypatch.delenv("SRGAN_GIT_COMMIT", raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and out.startswith(f"srgan {metadata.version('srgan-celeba')} (commit "), out
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    if head:  # a checkout: the commit comes from git, and says so
        assert head in out and "from the git checkout" in out
    monkeypatch.setenv("SRGAN_GIT_COMMIT", "abc1234")  # what the Dockerfile bakes into an image
    with pytest.raises(SystemExit):
        main(["--version"])
    assert "commit abc1234, baked in" in capsys.readouterr().out


def test_hidden_config_flags_still_work_and_unknown_ones_fail(capsys):
    args = build_parser().parse_args(["upscale", "--model", "m.keras", "--out", "o", "a.png", "--batch-size", "3"])
    assert args.batch_size == "3"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["upscale", "--model", "m", "--out", "o", "a.png", "--no-such-flag", "1"])
    assert main(["config", "--preset", "smoke", "--epochs", "7"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["epochs"] == 7


def test_mlproject_is_generated_from_the_table():
    assert (REPO / "MLproject").read_text() == mlproject_text(), "run `python -m srcore.steps`"
    spec = yaml.safe_load(mlproject_text())
    entry_points = spec["entry_points"]
    assert set(entry_points) == {n for n, s in STEPS.items() if s.mlproject is not None}
    for name, entry in entry_points.items():
        step = STEPS[name]
        assert set(entry["parameters"]) == {"preset", "config", *step.mlproject, *(i.name for i in step.inputs)}
        for param, decl in entry["parameters"].items():
            # '' = not given: never overrides a preset or a --config file's folders
            required = any(i.name == param and i.required for i in step.inputs)
            assert ("default" not in decl) if required else decl["default"] == "", (name, param)
    assert "data" not in entry_points["main"]["parameters"]  # `source` and `data_dir`, never `data`


def test_docs_table_is_generated_from_the_table():
    assert docs_table() in (REPO / "docs" / "ARCHITECTURE.md").read_text(), "run `python -m srcore.steps`"


def test_docs_name_functions_that_exist():
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    for step in STEPS.values():
        assert callable(step.load())
    assert "both optimizers" not in text


def _component_params(comp) -> tuple[set[str], set[str]]:
    """(plain parameters, artifact parameters) of a component's Python function."""
    plain, artifacts = set(), set()
    for name, p in inspect.signature(comp.python_func).parameters.items():
        ann = p.annotation
        is_artifact = "Input[" in str(ann) or "Output[" in str(ann) or hasattr(ann, "schema_title") or \
            "typing.Annotated" in str(ann) or "Annotated" in str(type(ann))
        (artifacts if is_artifact else plain).add(name)
    return plain, artifacts


def test_components_match_the_table():
    import components
    from srcore.kfp_glue import FIRST_STEP_PARAMS, STEP_PARAMS

    comps = components.all_components()
    kfp_steps = {n for n in comps if n != "finish"}
    assert {"ingest", "train", "evaluate", "register"} <= kfp_steps <= set(STEPS)
    for name in kfp_steps:
        plain, artifacts = _component_params(comps[name])
        inputs = {i.name for i in STEPS[name].inputs}
        assert inputs <= plain | artifacts, f"component {name} lacks table inputs {inputs - plain - artifacts}"
        glue = set(FIRST_STEP_PARAMS) if name == "ingest" else set(STEP_PARAMS)
        assert plain == glue | (inputs - artifacts), f"component {name}: {sorted(plain ^ (glue | (inputs - artifacts)))}"
        # a parameter is a string ('' = not given): one vocabulary with the CLI and MLproject
        for pname in plain:
            assert inspect.signature(comps[name].python_func).parameters[pname].annotation in (str, "str"), (name, pname)


def test_pipeline_and_first_step_share_the_named_config_parameters():
    from pipeline.dag import build_pipeline
    from srcore.kfp_glue import PIPELINE_CONFIG_PARAMS

    params = set(build_pipeline(cluster=True).component_spec.inputs)
    assert set(PIPELINE_CONFIG_PARAMS) | {"preset", "config_overrides", "mlflow_tracking_uri"} <= params
    for name in PIPELINE_CONFIG_PARAMS:
        assert name in {f.name for f in fields(Config)}, name


def test_config_json_round_trip_and_overrides():
    cfg = build_config("smoke", overrides={"epochs": "3", "source": "demo"})
    text = config_to_json(cfg)
    assert config_from_json(text) == cfg
    tuned = config_from_json(text, json.dumps({"learning_rate": 5e-4, "batch_size": 4}))
    assert (tuned.learning_rate, tuned.batch_size, tuned.epochs) == (5e-4, 4, 3)
    with pytest.raises(ConfigError, match="overrides"):
        config_from_json(text, "[1]")
    with pytest.raises(ConfigError, match="config_json"):
        config_from_json("")


def test_no_source_is_refused_with_instructions():
    assert Config().source == ""
    with pytest.raises(ConfigError, match="source") as caught:
        require_source(Config())
    assert "img_align_celeba.zip" in str(caught.value) and "smoke" in str(caught.value)
    require_source(build_config("smoke"))  # the smoke preset asks for demo explicitly


@pytest.mark.parametrize("step", ["ingest", "main"])
def test_cli_without_source_exits_2_naming_source(step, tmp_path, caplog):
    assert main([step, "--data-dir", str(tmp_path / "d"), "--model-dir", str(tmp_path / "m")]) == 2
    assert "source" in caplog.text
    assert not (tmp_path / "d").exists()


def test_kfp_first_step_config_places_folders_on_the_volume(tmp_path):
    from srcore.kfp_glue import pipeline_config

    with pytest.raises(ConfigError, match="source"):
        pipeline_config("seed", "", str(tmp_path))
    cfg = pipeline_config("smoke", '{"epochs": 5}', str(tmp_path), "run-1", "", epochs="", batch_size="4")
    assert (cfg.epochs, cfg.batch_size) == (5, 4)
    assert Path(cfg.data_dir).parent == tmp_path / "data" and Path(cfg.cache_dir) == tmp_path / "cache"
    assert Path(cfg.model_dir) == tmp_path / "runs" / "run-1" / "model"
    again = pipeline_config("smoke", "", str(tmp_path), "run-2", str(tmp_path / "ckpt"))
    assert again.data_dir == cfg.data_dir  # same data parameters: the same folder, reused
    assert again.model_dir == str(tmp_path / "ckpt")
    other = pipeline_config("smoke", "", str(tmp_path), "run-3", limit="40")
    assert other.data_dir != cfg.data_dir
    on_zip = pipeline_config("seed", "", str(tmp_path), source="img_align_celeba.zip")
    assert on_zip.source == str(tmp_path / "img_align_celeba.zip")  # a relative source lives on the volume


def test_run_names_tell_runs_apart():
    from srcore.tracking import run_name

    cfg = build_config("smoke")
    assert run_name(cfg) == "demo p1+e2 mse bs8"
    assert run_name(cfg, "train") == "train demo p1+e2 mse bs8"
    seed = build_config("seed", overrides={"source": "/data/img_align_celeba.zip"})
    assert run_name(seed) == f"celeba e60 {seed.content_loss} bs30"
    assert run_name(seed.replace(run_name="mine")) == "mine"
    # `srgan train --data-dir data/celeba-128` (no source): named after the folder it reads, not "data"
    no_source = build_config("seed", overrides={"data_dir": "data/celeba-128"})
    assert run_name(no_source, "train") == f"train celeba-128 e60 {seed.content_loss} bs30"


def test_upscale_help_fits_in_40_lines():
    out = subprocess.run([sys.executable, "-m", "srcore", "upscale", "--help"], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert out.returncode == 0
    assert len(out.stdout.splitlines()) <= 40


def test_tensorflow_start_up_noise_is_filtered_and_real_errors_are_not():
    from srcore.cli import native_lines_to_show

    cpu = ["WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
           "I0000 00:00:1.2 7 port.cc:153] oneDNN custom operations are on. You may see slightly different numbers",
           "I0000 00:00:1.2 7 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.",
           "E0000 00:00:1.3 7 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: UNKNOWN ERROR (303)",
           "E0000 00:00:1.4 7 some_op.cc:1] a real error"]
    assert native_lines_to_show(cpu) == ["E0000 00:00:1.4 7 some_op.cc:1] a real error"]
    # with CUDA drivers present a cuInit failure is a real problem: shown
    assert native_lines_to_show(cpu[3:4]) == cpu[3:4]
    # and in a real process: TensorFlow's import on this machine leaves stderr clean
    code = "from srcore.cli import quiet_tensorflow_import as q; q(); import tensorflow as tf; tf.zeros(1)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and "cuInit" not in proc.stderr and "absl::InitializeLog" not in proc.stderr, proc.stderr
