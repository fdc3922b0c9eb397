"""`srgan <step>` (also `python -m srcore <step>`): flags -> Config -> one step function.

The subcommands come from the step table (srcore/steps.py). `srgan <step> --help` shows
the step's inputs and the Config fields it reads, grouped by section; every other
Config field is still accepted as a flag (hidden from that help), so the CLI, MLproject
and KFP share one vocabulary. `srgan config --help` lists every field; `srgan config`
prints the resolved configuration. An empty value means "not given".

Help shows each flag's default and allowed values; prefixes of flags are not accepted
(`--epoch` is not `--epochs`), and an unknown flag gets a did-you-mean from the step's
own flags. TensorFlow's native start-up noise on CPU machines (absl pre-init warning,
cuInit failure without CUDA drivers) is filtered before TensorFlow is imported; every
other native line still reaches stderr.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import fields
from pathlib import Path

from srcore import tracking
from srcore.config import ADVANCED, PRESETS, SECTIONS, Config, ConfigError, build_config, field_types, range_text
from srcore.steps import STEPS, Step, run

log = logging.getLogger("srgan")

# Deprecated spellings kept working, hidden from help: `--data` meant the source in `main`
# and the ingest output elsewhere; now it is --source or --data-dir.
HIDDEN_ALIASES = {"train": {"data": "data_dir"}, "evaluate": {"data": "data_dir"},
                  "ingest": {"partition": "partition_file"}}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


_METAVARS = {bool: "BOOL", int: "N", float: "X", str: "TEXT"}
INPUT_METAVARS = {"overrides": "JSON", "model": "MODEL", "model_uri": "URI", "metrics": "FILE", "trials": "FILE",
                  "out": "DIR", "tile": "N", "manifest_hash": "HASH", "model_name": "NAME", "model_version": "N",
                  "namespace": "NS", "service_name": "NAME"}


def _short(text: str, limit: int = 44) -> str:
    """The first clause of a field's help, cut to fit one line with its default."""
    text = text.split("; ", 1)[0]
    if len(text) <= limit:
        return text
    cuts = [m.start() for m in re.finditer(r": | \(", text) if 8 <= m.start() <= limit]
    return text[:cuts[-1]] if cuts else text[:limit - 3].rstrip() + "..."


def _field_help(f, full: bool) -> str:
    """Help text with the default [in brackets] and the allowed values (full = `srgan config --help`)."""
    default = f.default
    shown = (default or '""') if isinstance(default, str) else str(default).lower() if isinstance(default, bool) else default
    text = f.metadata.get("help", "")
    text = text if full else _short(text, max(20, 47 - len(f" [{shown}]")))
    text += f" [{shown}]"
    choices = f.metadata.get("choices")
    if choices:
        text += f" of {'|'.join(map(str, choices))}"
    elif full and any(k in f.metadata for k in ("ge", "gt", "le", "lt")):
        text += f"; {range_text(f)}"
    return text.replace("%", "%%")


def _add_field(group: argparse._ActionsContainer, f, hidden: bool = False, full: bool = False) -> None:
    kw: dict = {"dest": f.name, "default": None, "metavar": _METAVARS.get(field_types()[f.name], "VALUE"),
                "help": argparse.SUPPRESS if hidden else _field_help(f, full)}
    if f.type in ("bool", bool):
        kw.update(nargs="?", const="true")
    group.add_argument(_flag(f.name), **kw)


class Parser(argparse.ArgumentParser):
    """No prefix matching; an unknown flag names the closest flags of this parser."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", lambda prog: argparse.HelpFormatter(prog, max_help_position=30))
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        if self.prog == "srgan":  # an unknown step gets a did-you-mean, not the whole usage
            first = next((t for t in (sys.argv[1:] if args is None else args) if not t.startswith("-")), None)
            steps = [c for a in self._actions for c in (getattr(a, "choices", None) or {})]
            if first is not None and steps and first not in steps:
                close = difflib.get_close_matches(first, steps, n=2, cutoff=0.6)
                self.exit(2, f"srgan: unknown step {first!r}" + (f"; did you mean {' or '.join(close)}?" if close else "")
                          + f" (steps: {', '.join(steps)}; see srgan --help)\n")
        # a step's unknown flag is named (with a did-you-mean) before "required argument" errors
        if args is not None and self.prog.startswith("srgan "):
            known = {opt for a in self._actions for opt in a.option_strings}
            bad = [t for t in args if t.startswith("--") and t != "--" and t.split("=", 1)[0] not in known]
            if bad:
                self.unknown(bad)
        return super().parse_known_args(args, namespace)

    def unknown(self, extras: list[str]) -> None:
        flags = [opt for a in self._actions for opt in a.option_strings]
        lines = []
        for token in extras:
            if not token.startswith("-"):
                continue
            name = token.split("=", 1)[0]
            close = difflib.get_close_matches(name, flags, n=2, cutoff=0.75)
            lines.append(f"unknown flag {name}" + (f"; did you mean {' or '.join(close)}?" if close else ""))
        if not lines:
            lines.append(f"unexpected argument(s): {' '.join(extras)}")
        self.exit(2, f"{self.prog}: {'; '.join(lines)} (see {self.prog} --help)\n")


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration source")
    g.add_argument("--preset", default="", metavar="NAME",  # checked by build_config: one line
                   help=f"named preset of {'|'.join(PRESETS)}")
    g.add_argument("--config", default="", metavar="FILE", help="YAML file of Config fields (see configs/)")
    g.add_argument("--log-level", default="INFO", type=str.upper, metavar="LEVEL",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="[INFO] of DEBUG|INFO|WARNING|ERROR")


def _add_step_flags(p: argparse.ArgumentParser, name: str, step: Step) -> None:
    if step.inputs:
        g = p.add_argument_group(f"{name} inputs")
        for i in step.inputs:
            if i.many:
                g.add_argument(i.name, nargs="+", help=i.help)
            else:
                g.add_argument(_flag(i.name), dest=f"input_{i.name}", metavar=INPUT_METAVARS.get(i.name, "VALUE"),
                               required=i.required,
                               default=None, help=i.help)
    _add_common(p)
    by_name = {f.name: f for f in fields(Config)}
    shown = [n for n in step.shown or step.config if n not in ADVANCED]
    for section in step.sections:
        names = [n for n in SECTIONS[section] if n in shown]
        if names:
            g = p.add_argument_group(f"{section} settings")
            for field_name in names:
                _add_field(g, by_name[field_name])
    for f in fields(Config):  # accepted everywhere, listed by `srgan config --help`
        if f.name not in shown:
            _add_field(p, f, hidden=True)
    if step.out:
        p.add_argument("--out", dest=step.out, default=None, help=f"same as {_flag(step.out)}")
    for short, target in HIDDEN_ALIASES.get(name, {}).items():
        p.add_argument(f"--{short}", dest=target, default=None, help=argparse.SUPPRESS)


def _usage(name: str, step: Step) -> str:
    required = " ".join(f"{_flag(i.name)} {i.name.upper()}" for i in step.inputs if i.required and not i.many)
    many = " ".join(f"{i.name.upper()} [{i.name.upper()} ...]" for i in step.inputs if i.many)
    return " ".join(x for x in (f"srgan {name}", required, "[options]", many) if x)


def version_text() -> str:
    """`srgan --version`: the package version and the git commit, saying where the commit came from."""
    from importlib import metadata

    try:
        version = metadata.version("srgan-celeba")
    except metadata.PackageNotFoundError:
        from srcore import __version__ as version
    baked = os.environ.get("SRGAN_GIT_COMMIT", "")
    if baked and baked != "unknown":  # the Dockerfile's default when no commit was passed
        return f"srgan {version} (commit {baked}, baked in at image build time: SRGAN_GIT_COMMIT)"
    repo = Path(__file__).resolve().parents[1]
    try:  # only this project's own checkout, not a repository that happens to contain the venv
        top = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=repo, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        top = None
    lines = top.stdout.split() if top and top.returncode == 0 else []
    if len(lines) == 2 and Path(lines[0]).resolve() == repo:
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"srgan {version} (commit {lines[1]}{' with local changes' if dirty else ''}, from the git checkout {repo})"
    return f"srgan {version} (commit unknown: not a git checkout and no SRGAN_GIT_COMMIT baked in)"


class _Version(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="srgan", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action=_Version, help="print the version and the git commit, then exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, step in STEPS.items():
        p = sub.add_parser(name, help=step.help, usage=_usage(name, step),
                           description=f"{step.help}. Defaults in [brackets]. Every Config field is a flag; "
                                       "`srgan config --help` lists all of them.")
        _add_step_flags(p, name, step)
    p = sub.add_parser("config", help="print the resolved configuration (YAML); --help lists every field",
                       usage="srgan config [options]",
                       description="Every Config field, by section, with its default [in brackets] and allowed "
                                   "values. Each is a flag of every step, a YAML key of --config files and a key "
                                   "of KFP's config_overrides.")
    _add_common(p)
    by_name = {f.name: f for f in fields(Config)}
    for section, names in SECTIONS.items():
        g = p.add_argument_group(f"{section} settings")
        for field_name in names:
            _add_field(g, by_name[field_name], full=True)
    return parser


def subparser(parser: argparse.ArgumentParser, command: str) -> Parser:
    return next(a for a in parser._actions if a.dest == "command").choices[command]


# TensorFlow's native start-up lines on a machine without CUDA: noise, not errors.
_NATIVE_NOISE = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(r"^I\d{4} .*\] oneDNN custom operations are on"),
    re.compile(r"^I\d{4} .*\] Could not find cuda drivers on your machine"),
    re.compile(r"^I\d{4} .*cpu_feature_guard.*|^To enable the following instructions:"),
)
_NO_DRIVER = re.compile(r"Could not find cuda drivers on your machine")
_CUINIT = re.compile(r"^E\d{4} .*\] failed call to cuInit")
TF_STEPS = {"ingest", "train", "evaluate", "upscale", "export", "serve", "sweep", "main"}  # steps that load TensorFlow


def native_lines_to_show(lines: list[str]) -> list[str]:
    """`lines` without TensorFlow's CPU-machine start-up noise (see quiet_tensorflow_import)."""
    no_driver = any(_NO_DRIVER.search(line) for line in lines)
    return [line for line in lines if not any(p.search(line) for p in _NATIVE_NOISE)
            and not (no_driver and _CUINIT.search(line))]


def _keras_quiet_on_stdout() -> None:
    """Keras' progress bars (e.g. MLflow predicting an input example) would go to stdout, where
    the step's one JSON result line must stand alone: route them to logging instead."""
    import keras

    keras.utils.disable_interactive_logging()


def quiet_tensorflow_import() -> None:
    """Import TensorFlow and initialise its devices with native stderr captured, then pass on
    every line but the known CPU-machine noise. The cuInit failure is dropped only when TF
    also said there are no CUDA drivers at all (a CPU machine); on a GPU machine it stays."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's own C++ INFO/WARNING lines
    logging.getLogger("absl").setLevel(logging.WARNING)  # absl-py INFO (sharding callbacks, ...)
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # CUDA platform init: where cuInit is called
            _keras_quiet_on_stdout()
        finally:  # replayed even when the import fails: its native lines may say why
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = native_lines_to_show(captured.read().decode("utf-8", "replace").splitlines())
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = {f.name: getattr(args, f.name, None) for f in fields(Config)}
    return build_config(args.preset or None, args.config or None, overrides)


def _result_line(outputs: dict) -> str:
    return json.dumps({k: v for k, v in outputs.items() if k != "config_json"}, default=str)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        subparser(parser, args.command).unknown(extras)
    tracking.configure_logging(args.log_level)
    # MLflow draws a progress bar for every small artifact it downloads (model loads, registry):
    # noise among the step's log lines; a user who wants them sets the variable to true
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if args.command in TF_STEPS:
        quiet_tensorflow_import()
    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        parser.exit(2, f"srgan {args.command}: {exc}\n")
    if args.command == "config":
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    step = STEPS[args.command]
    inputs = {i.name: getattr(args, i.name if i.many else f"input_{i.name}") for i in step.inputs}
    try:
        outputs = run(args.command, cfg, **inputs)
    except ConfigError as exc:
        log.error("srgan %s: %s", args.command, exc)
        return 2
    except (OSError, ValueError, RuntimeError) as exc:  # OSError: one line naming the path, no traceback
        log.error("srgan %s failed: %s", args.command, exc)
        log.debug("traceback", exc_info=True)
        return 1
    print(_result_line(outputs))
    if args.command == "upscale" and not outputs["outputs"]:
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
