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


# ---- hostile config files (issue 18): one line naming the file and the key, fast -----------

def _bomb() -> str:
    """Eight levels of 9x aliases into a string field: 9**8 strings if expanded."""
    lines = ['a0: &a0 "lol"']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\nrun_name: *a8\n"


HOSTILE_YAML = [
    ("alias bomb", _bomb().encode(), "aliases"),
    ("one alias", b"run_name: &x demo\nexperiment_name: *x\n", "aliases"),
    ("int key", b"1: 2\n", "key 1"),
    ("list preset", b"preset: [smoke, seed]\n", "preset"),
    ("huge int", b"limit: 1e400\n", "limit"),
    ("huge float", b"learning_rate: 1.0e+400\n", "learning_rate"),
    ("nan float", b"serve_max_seconds: .nan\n", "serve_max_seconds"),
    ("negative seconds", b"serve_max_seconds: -1\n", "serve_max_seconds"),
    ("not utf-8", b"run_name: caf\xe9\xff\n", "UTF-8"),
    ("python tag", b"run_name: !!python/object/apply:os.system ['echo owned']\n", "not valid YAML"),
    ("unknown key", b"epoch: 3\n", "did you mean epochs"),
    ("list value", b"epochs: [1, 2]\n", "epochs"),
    ("mapping value", b"run_name: {a: 1}\n", "run_name"),
    ("bool for int", b"epochs: true\n", "epochs"),
    ("float for int", b"epochs: 2.5\n", "epochs"),
    ("not a mapping", b"- epochs\n- 3\n", "mapping"),
    ("bad syntax", b"epochs: [3\n", "not valid YAML"),
    ("deep nesting", b"run_name: " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "nested"),
    ("too big", b"# " + b"x" * (2 << 20) + b"\n", "larger than"),
    ("out of range", b"batch_size: 0\n", "batch_size"),
    ("int 1e308", b"epochs: 1e308\n", "epochs=1000000"),  # an integer of 309 digits, shown cut short
    ("int over 2**53", b"val_count: 99999999999999999999999\n", "val_count"),
]


@pytest.mark.parametrize("case,content,expected", HOSTILE_YAML, ids=[c[0] for c in HOSTILE_YAML])
def test_hostile_config_file_is_one_line_naming_file_and_key(tmp_path, capsys, case, content, expected):
    import time

    from srcore.cli import main

    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    start = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        build_config(None, path)
    message = str(caught.value)
    assert str(path) in message and expected in message, message
    assert "\n" not in message
    with pytest.raises(SystemExit) as exit_:  # the CLI: exit 2, the same one line, no traceback
        main(["config", "--config", str(path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert time.monotonic() - start < 5, f"{case}: config loading must have bounded cost"


@pytest.mark.parametrize("name,value", [
    ("serve_max_seconds", "nan"), ("serve_max_seconds", "-1"), ("serve_max_seconds", "inf"),
    ("learning_rate", "0"), ("adv_weight", "-1e-3"), ("beta_1", "1"), ("gate_min_gain", "nan"),
    ("limit", "1e400"), ("seed", "-1"), ("log_every_steps", "0"), ("gen_init_scale", "-inf"),
])
def test_every_numeric_field_is_finite_and_in_range(name, value):
    with pytest.raises(ConfigError, match=name):
        build_config(overrides={name: value})
    with pytest.raises(ConfigError, match=name):  # Config built directly (KFP JSON, tests) too
        Config(**{name: float(value)})


def test_typed_fields_refuse_the_wrong_type():
    for name, value in [("epochs", "3"), ("augment", "yes"), ("run_name", 3), ("learning_rate", True)]:
        with pytest.raises(ConfigError, match=name):
            Config(**{name: value})
    assert build_config(overrides={"limit": "1e3"}).limit == 1000  # 1e3 from a shell is fine


def test_a_config_path_that_is_not_a_regular_file_says_so(tmp_path):
    import os

    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # opening it would block forever
    for path in (tmp_path, fifo):
        with pytest.raises(ConfigError, match="is not a regular file"):
            build_config(None, path)
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(None, tmp_path / "absent.yaml")
