"""`srgan <step>` (also `python -m srcore <step>`): flags -> Config -> one step function.

The subcommands come from the step table (srcore/steps.py). `srgan <step> --help` shows
the step's inputs and the Config fields it reads, grouped by section; every other
Config field is still accepted as a flag (hidden from that help), so the CLI, MLproject
and KFP share one vocabulary. `srgan config --help` lists every field; `srgan config`
prints the resolved configuration. An empty value means "not given".
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields

from srcore import tracking
from srcore.config import PRESETS, SECTIONS, Config, ConfigError, build_config
from srcore.steps import STEPS, Step, run

log = logging.getLogger("srgan")

# Deprecated spellings kept working, hidden from help: `--data` meant the source in `main`
# and the ingest output elsewhere; now it is --source or --data-dir.
HIDDEN_ALIASES = {"train": {"data": "data_dir"}, "evaluate": {"data": "data_dir"},
                  "ingest": {"partition": "partition_file"}}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_field(group: argparse._ActionsContainer, f, hidden: bool = False) -> None:
    kw: dict = {"dest": f.name, "default": None,
                "help": argparse.SUPPRESS if hidden else f.metadata.get("help", "")}
    if f.type in ("bool", bool):
        kw.update(nargs="?", const="true", metavar="BOOL")
    group.add_argument(_flag(f.name), **kw)


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration source")
    g.add_argument("--preset", default="", help=f"named preset: {', '.join(PRESETS)}")
    g.add_argument("--config", default="", help="YAML file of Config fields (see configs/; `srgan config --help`)")
    g.add_argument("--log-level", default="INFO")


def _add_step_flags(p: argparse.ArgumentParser, name: str, step: Step) -> None:
    if step.inputs:
        g = p.add_argument_group(f"{name} inputs")
        for i in step.inputs:
            if i.many:
                g.add_argument(i.name, nargs="+", help=i.help)
            else:
                g.add_argument(_flag(i.name), dest=f"input_{i.name}", metavar=i.name.upper(), required=i.required,
                               default=None, help=i.help)
    _add_common(p)
    by_name = {f.name: f for f in fields(Config)}
    for section in step.sections:
        g = p.add_argument_group(f"{section} settings")
        for field_name in SECTIONS[section]:
            if field_name in step.config:
                _add_field(g, by_name[field_name])
    for f in fields(Config):  # accepted everywhere, listed by `srgan config --help`
        if f.name not in step.config:
            _add_field(p, f, hidden=True)
    if step.out:
        p.add_argument("--out", dest=step.out, default=None, help=f"same as {_flag(step.out)}")
    for short, target in HIDDEN_ALIASES.get(name, {}).items():
        p.add_argument(f"--{short}", dest=target, default=None, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srgan", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, step in STEPS.items():
        p = sub.add_parser(name, help=step.help, description=step.help)
        _add_step_flags(p, name, step)
    p = sub.add_parser("config", help="print the resolved configuration (YAML); --help lists every field",
                       description="Every Config field, by section. Each is a flag of every step, a YAML key of "
                                   "--config files and a key of KFP's config_overrides.")
    _add_common(p)
    by_name = {f.name: f for f in fields(Config)}
    for section, names in SECTIONS.items():
        g = p.add_argument_group(f"{section} settings")
        for field_name in names:
            _add_field(g, by_name[field_name])
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = {f.name: getattr(args, f.name, None) for f in fields(Config)}
    return build_config(args.preset or None, args.config or None, overrides)


def _result_line(outputs: dict) -> str:
    return json.dumps({k: v for k, v in outputs.items() if k != "config_json"}, default=str)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    tracking.configure_logging(args.log_level)
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
