"""`python -m pipeline compile | submit | run-local`."""

import argparse
import json
import logging
import sys

log = logging.getLogger("pipeline")


def _params(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"-p expects key=value, got {pair!r}")
        out[key.strip().replace("-", "_")] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("compile", help="write the pipeline YAML")
    c.add_argument("--out", default="srgan_pipeline.yaml")
    c.add_argument("--image", default=None, help="component image (default $SRGAN_IMAGE or the versioned tag)")
    c.add_argument("--no-kubernetes", dest="cluster", action="store_false",
                   help="leave out node selector, toleration and the MLflow Secret")

    s = sub.add_parser("submit", help="compile and create a run on a KFP API (token: $KFP_TOKEN)")
    s.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
    s.add_argument("--experiment", default=None, help="KFP experiment (default: Default)")
    s.add_argument("--run-name", default=None)
    s.add_argument("--namespace", default=None, help="profile namespace (multi-user Kubeflow)")
    s.add_argument("--image", default=None)
    s.add_argument("--package", default=None, help="submit this compiled YAML instead of compiling")
    s.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="pipeline parameter")

    r = sub.add_parser("run-local", help="run the whole DAG here (kfp.local SubprocessRunner)")
    r.add_argument("--preset", default="smoke", help="Config preset (default smoke: tiny, CPU-fast)")
    r.add_argument("--root", default="outputs/kfp-local", help="folder for every output of the run")
    r.add_argument("--cache", action="store_true", help="reuse cacheable tasks (ingest) of earlier runs in --root")
    r.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="pipeline parameter")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pipeline import run

    try:
        if args.cmd == "compile":
            out = run.compile_pipeline(args.out, image=args.image, cluster=args.cluster)
            print(out)
        elif args.cmd == "submit":
            result = run.submit(args.host, _params(args.param), experiment=args.experiment, run_name=args.run_name,
                                namespace=args.namespace, image=args.image, package=args.package)
            print(result["url"])
        else:
            params = {"preset": args.preset, **_params(args.param)}
            print(json.dumps(run.run_local(params, root=args.root, cache=args.cache), default=str))
    except ValueError as e:
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
