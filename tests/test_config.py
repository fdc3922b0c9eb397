import pytest

from srcore.cli import build_parser, config_from_args
from srcore.config import PRESETS, Config, ConfigError, build_config


def test_defaults_are_the_seed_recipe():
    cfg = Config()
    assert (cfg.batch_size, cfg.learning_rate, cfg.adv_weight, cfg.limit) == (30, 1e-4, 1e-3, 10661)
    # content loss "auto": the seed's VGG19 5_4 when its weights are at hand (issue 12)
    assert (cfg.gen_filters, cfg.gen_blocks, cfg.content_loss) == (64, 16, "auto")
    assert build_config("seed") == cfg


def test_layering_preset_yaml_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("preset: smoke\nepochs: 7\nbatch_size: 4\n")
    cfg = build_config(None, y, {"batch_size": "2", "epochs": "", "augment": "false"})
    assert cfg.gen_blocks == PRESETS["smoke"]["gen_blocks"]  # from the preset named in YAML
    assert cfg.epochs == 7  # YAML beats preset; '' override means "not given"
    assert cfg.batch_size == 2  # explicit override beats YAML
    assert cfg.augment is False


@pytest.mark.parametrize(
    "overrides,name",
    [({"limit": "-1"}, "limit"), ({"test_count": "0"}, "test_count"), ({"content_loss": "l1"}, "content_loss"),
     ({"batch_size": "many"}, "batch_size"), ({"augment": "maybe"}, "augment"), ({"nonsense": "1"}, "nonsense")],
)
def test_invalid_parameters_name_themselves(overrides, name):
    with pytest.raises(ConfigError, match=name):
        build_config(overrides=overrides)


def test_unknown_preset_and_missing_yaml(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset"):
        build_config("huge")
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(None, tmp_path / "nope.yaml")


def test_every_config_field_is_a_cli_flag():
    args = build_parser().parse_args(
        ["train", "--preset", "smoke", "--batch-size", "3", "--augment", "--jit-compile", "false", "--data", "/d"]
    )
    cfg = config_from_args(args)
    assert (cfg.batch_size, cfg.augment, cfg.jit_compile, cfg.data_dir) == (3, True, False, "/d")


def test_cli_reports_bad_parameter_and_exits_2(capsys):
    from srcore.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["ingest", "--limit", "-5", "--out", "/tmp/never"])
    assert exc.value.code == 2
    assert "limit" in capsys.readouterr().err
