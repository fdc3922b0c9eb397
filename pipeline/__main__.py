"""`python -m pipeline compile | submit | upload | run-local`."""

import argparse
import json
import logging
import os
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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 86400:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected seconds in (0, 86400], got {text!r}")
    return value


def _auth_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=os.environ.get("KF_PIPELINES_ENDPOINT"),
                   required=not os.environ.get("KF_PIPELINES_ENDPOINT"),
                   help="KFP API endpoint, e.g. http://localhost:8080 (default $KF_PIPELINES_ENDPOINT)")
    p.add_argument("--namespace", default=None,
                   help="profile namespace on multi-user Kubeflow (default $KFP_NAMESPACE, this pod's, or the kube "
                        "context's)")
    p.add_argument("--token-file", default=None,
                   help="bearer token file, re-read per request (default: $KFP_TOKEN, else the in-cluster "
                        "service-account token when mounted)")
    p.add_argument("--cookie", default=None,
                   help="auth cookie for oauth2-proxy (Kubeflow 1.9+), e.g. oauth2_proxy_kubeflow=... (default $KFP_COOKIE)")
    p.add_argument("--image", default=None, help="component image (default $SRGAN_IMAGE, or "
                   "$SRGAN_IMAGE_REPOSITORY:<git commit>)")
    p.add_argument("--package", default=None, help="use this compiled YAML instead of compiling")
    p.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                   help="each request to the KFP API must be answered within this many seconds, retries "
                        "included (default 60)")
    p.add_argument("--skip-version-check", dest="check_version", action="store_false",
                   help="do not refuse a pipeline the KFP API's version cannot run (pipeline/support.py)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("compile", help="write the pipeline YAML")
    c.add_argument("--out", default="srgan_pipeline.yaml")
    c.add_argument("--image", default=None, help="component image (default $SRGAN_IMAGE, or "
                   "$SRGAN_IMAGE_REPOSITORY:<git commit>; the placeholder registry is refused)")
    c.add_argument("--no-kubernetes", dest="cluster", action="store_false",
                   help="leave out node selector, toleration and the MLflow Secret")
    c.add_argument("--pipeline", choices=("main", "sweep"), default="main",
                   help="main: ingest -> train -> evaluate -> register; sweep: trials in parallel (pipeline/sweep.py)")

    s = sub.add_parser("submit", help="check the parameters, compile and create a run on a KFP API")
    _auth_flags(s)
    s.add_argument("--experiment", default=None, help="KFP experiment (default: Default)")
    s.add_argument("--run-name", default=None)
    s.add_argument("--upload", action="store_true",
                   help="upload as a version (the git commit) of the named pipeline, and run that version")
    s.add_argument("--mlflow-plugin", action="store_true", default=None,
                   help="KFP's MLflow plugin injects the tracking URI: do not require mlflow_tracking_uri "
                        "(or set SRGAN_KFP_MLFLOW_PLUGIN=1)")
    s.add_argument("--pipeline", choices=("main", "sweep"), default="main", help="which pipeline to run")
    s.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="pipeline parameter")

    u = sub.add_parser("upload", help="upload the pipeline as a named version (the git commit)")
    _auth_flags(u)
    u.add_argument("--pipeline", choices=("main", "sweep"), default="main", help="which pipeline to upload")
    u.add_argument("--pipeline-name", default=None, help="default: srgan-celeba (main) or srgan-celeba-sweep")
    u.add_argument("--version", default=None, help="default: the git commit (+ -dirty-<UTC time>)")

    r = sub.add_parser("run-local", help="run the whole DAG here (kfp.local SubprocessRunner)")
    r.add_argument("--preset", default="smoke", help="Config preset (default smoke: tiny, CPU-fast)")
    r.add_argument("--root", default="outputs/kfp-local", help="folder for every output of the run")
    r.add_argument("--cache", action="store_true", help="reuse cacheable tasks (ingest) of earlier runs in --root")
    r.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="pipeline parameter")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from srcore.tracking import configure_logging

    configure_logging(args.log_level)
    from pipeline import run
    from pipeline.client import Auth

    try:
        if args.cmd == "compile":
            if args.pipeline == "sweep":
                from pipeline.sweep import compile_sweep as compile_pipeline
            else:
                compile_pipeline = run.compile_pipeline
            out = compile_pipeline(args.out, image=args.image, cluster=args.cluster)
            print(out)
        elif args.cmd == "submit":
            result = run.submit(args.host, _params(args.param), experiment=args.experiment, run_name=args.run_name,
                                namespace=args.namespace, image=args.image, package=args.package,
                                auth=Auth(token_file=args.token_file, cookie=args.cookie), upload=args.upload,
                                mlflow_plugin=args.mlflow_plugin, pipeline=args.pipeline,
                                check_version=args.check_version, timeout_s=_timeout(args))
            print(result["url"])
        elif args.cmd == "upload":
            result = run.upload(args.host, image=args.image, package=args.package, namespace=args.namespace,
                                auth=Auth(token_file=args.token_file, cookie=args.cookie),
                                pipeline_name=args.pipeline_name, version=args.version, pipeline=args.pipeline,
                                check_version=args.check_version, timeout_s=_timeout(args))
            print(json.dumps(result))
        else:
            params = {"preset": args.preset, **_params(args.param)}
            print(json.dumps(run.run_local(params, root=args.root, cache=args.cache), default=str))
    except ValueError as e:
        log.error("%s", e)
        return 2
    except _api_errors() as e:
        from pipeline.client import describe_failure

        log.error("%s", describe_failure(getattr(args, "host", None), e, _timeout(args)))
        return 1
    return 0


def _timeout(args: argparse.Namespace) -> float:
    from pipeline.client import DEFAULT_TIMEOUT_S

    return getattr(args, "timeout", None) or DEFAULT_TIMEOUT_S


def _api_errors() -> tuple[type[BaseException], ...]:
    """What an unreachable or refusing KFP API raises (a clear line, not a traceback)."""
    import kfp_server_api
    import urllib3

    return kfp_server_api.ApiException, urllib3.exceptions.HTTPError, OSError


if __name__ == "__main__":
    sys.exit(main())
