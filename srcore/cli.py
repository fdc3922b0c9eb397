"""`srgan <step>` (also `python -m srcore <step>`): flags -> Config -> one step function.

Every Config field is a flag on every step (`--batch-size 16`, `--augment false`), so
the CLI, MLproject and KFP share one vocabulary. An empty value means "not given".
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import fields
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ banner out of our logs

from srcore.config import PRESETS, Config, ConfigError, build_config  # noqa: E402

log = logging.getLogger("srgan")

# Per-step short names for the folders a step reads and writes.
ALIASES: dict[str, dict[str, str]] = {
    "ingest": {"out": "data_dir", "partition": "partition_file"},
    "train": {"data": "data_dir", "out": "model_dir"},
    "evaluate": {"data": "data_dir", "out": "eval_dir"},
    "register": {"data": "data_dir"},
    "main": {"data": "source"},
}


def _add_config_flags(p: argparse.ArgumentParser, step: str) -> None:
    p.add_argument("--preset", default="", help=f"named preset: {', '.join(PRESETS)}")
    p.add_argument("--config", default="", help="YAML file of Config fields (see configs/)")
    p.add_argument("--log-level", default="INFO")
    g = p.add_argument_group("configuration (every field of srcore.config.Config)")
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        kw: dict = {"dest": f.name, "default": None, "help": f.metadata.get("help", "")}
        if f.type in ("bool", bool):
            kw.update(nargs="?", const="true", metavar="BOOL")
        g.add_argument(flag, **kw)
    for short, target in ALIASES.get(step, {}).items():
        p.add_argument(f"--{short}", dest=target, default=None, help=f"alias of --{target.replace('_', '-')}")


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = {f.name: getattr(args, f.name, None) for f in fields(Config)}
    return build_config(args.preset or None, args.config or None, overrides)


def _cmd_ingest(cfg: Config, args: argparse.Namespace) -> int:
    from srcore.workflow import ingest_step

    manifest = ingest_step(cfg)
    log.info("ingest output %s: %s", cfg.data_dir, json.dumps(manifest["counts"]))
    return 0


def _cmd_train(cfg: Config, args: argparse.Namespace) -> int:
    from srcore.train import train

    result = train(cfg)
    log.info("generator %s, MLflow model %s (run %s)", result.generator_path, result.model_uri, result.run_id)
    return 0


def _cmd_evaluate(cfg: Config, args: argparse.Namespace) -> int:
    from srcore.evaluate import evaluate

    evaluate(cfg, args.model)
    return 0


def _cmd_register(cfg: Config, args: argparse.Namespace) -> int:
    from srcore.workflow import register_step

    result = register_step(cfg, args.model_uri, args.metrics)
    log.info("registered %s version %s; champion: %s (%s)", result.name, result.version, result.champion, result.reason)
    return 0


def _cmd_upscale(cfg: Config, args: argparse.Namespace) -> int:
    from srcore.upscale import upscale_files

    # --scale is only a sanity check against the model's own factor when given explicitly
    scale = int(args.scale) if args.scale else None
    outputs = upscale_files(args.model, args.inputs, args.out, scale=scale, tile=args.tile)
    log.info("wrote %d image(s) to %s", len(outputs), args.out)
    return 0 if outputs else 1


def _cmd_main(cfg: Config, args: argparse.Namespace) -> int:
    from srcore.workflow import run_main

    run_main(cfg)
    return 0


COMMANDS: dict[str, tuple[Callable[[Config, argparse.Namespace], int], str]] = {
    "ingest": (_cmd_ingest, "select, center-crop and split images into train shards + test PNGs"),
    "train": (_cmd_train, "train (or resume) the SRGAN; logs to MLflow"),
    "evaluate": (_cmd_evaluate, "PSNR/SSIM/LPIPS on the test split, sample grids"),
    "register": (_cmd_register, "register a model version; promote to champion if it beats the current one"),
    "upscale": (_cmd_upscale, "upscale image files x4 with a generator"),
    "main": (_cmd_main, "ingest -> train -> evaluate -> register as one MLflow parent run"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srgan", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _add_config_flags(p, name)
        if name == "evaluate":
            p.add_argument("--model", required=True, help=".keras path, runs:/ or models:/name@alias URI, or 'bicubic'")
        if name == "register":
            p.add_argument("--model-uri", required=True, help="MLflow model URI to register")
            p.add_argument("--metrics", required=True, help="metrics.json written by `srgan evaluate`")
        if name == "upscale":
            p.add_argument("--model", required=True, help=".keras path or MLflow model URI")
            p.add_argument("inputs", nargs="+", help="image files")
            p.add_argument("--out", required=True, help="output folder")
            p.add_argument("--tile", type=int, default=None, help="LR tile size for bounded memory")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        parser.exit(2, f"srgan {args.command}: {exc}\n")
    handler, _ = COMMANDS[args.command]
    try:
        return handler(cfg, args)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        log.error("srgan %s failed: %s", args.command, exc)
        log.debug("traceback", exc_info=True)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
