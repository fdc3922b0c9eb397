"""Which Kubeflow Pipelines backend runs which pipeline: the support matrix, read from the IR.

`SUPPORT` is the one table: pipeline -> the oldest KFP backend (API server) that runs
it, and the IR features that force that version. `ir_features(spec)` finds those
features in a compiled pipeline, so a test keeps the table equal to what the compiler
writes; `check_backend(pipeline, tag_name)` is what `python -m pipeline submit` and
`upload` ask before they create anything (`pipeline.run`).

Facts about backend versions (kubeflow/pipelines; CHANGELOG.md of the release tags and
the files named):

- `dsl.PipelineTaskFinalStatus` (a `taskFinalStatus` task input): the API server
  refuses the run before 2.14.0 with "task final status not supported yet"
  (backend/src/v2/compiler/argocompiler/dag.go, addImplicitDependencies); supported
  by #11953, CHANGELOG 2.14.0. Neither pipeline uses it: `finish` reads the steps'
  MLflow runs instead (srcore/kfp_glue.finish).
- `dsl.Collected` (a fan-in of a ParallelFor's outputs): backend support by #11725,
  CHANGELOG 2.14.0. The sweep does not use it: pick_best reads the trials from MLflow.
- `{{$.pipeline_job_uuid}}` and the other job/task placeholders: resolved by the driver
  from 2.5.0 (#11599, CHANGELOG 2.5.0); before, the literal text reaches the component.
  Not a requirement here: the steps key their folders and parent run by `run_key`
  (srcore/kfp_glue.run_key), which `submit` always sets.
- `retryPolicy` (`set_retry`): not translated into an Argo retryStrategy before
  #11673 (CHANGELOG 2.5.0; reported on 2.2.0 in #9950): older backends drop it
  silently. A degradation, not a refusal: the run works, without retries.
- `iteratorPolicy.parallelismLimit` (ParallelFor parallelism): #10798; older backends run
  every iteration at once. The backend CHANGELOG has no 2.4.0 section: #10798 is listed in
  the 2.5.0 section (compared against 2.3.0), so it is taken as 2.5.0 (a 2.4 server may get
  one warning too many, never one too few).
- A ParallelFor body passing an artifact from one task to the next (start_trial ->
  train -> evaluate): "cannot resolve the upstream artifact output" (#11520) until
  #11627, CHANGELOG 2.5.0. This is what forces the sweep's 2.5.0.
- The platform spec (the IR's second YAML document, kfp-kubernetes): kfp-kubernetes 2.x
  writes `secretNameParameter` / `pvcNameParameter` beside the deprecated `secretName` /
  `componentInputParameter` (#11621, #11770, CHANGELOG 2.5.0), and backends before 2.5.0
  unmarshal that spec strictly: a field they do not know fails the task's driver (#11662,
  "ignore unknown fields for pb json unmarshaling", CHANGELOG 2.5.0). `legacy_platform_spec`
  drops the new twin where it says what the old field says (every compiled package,
  pipeline.run.compile_pipeline / pipeline.sweep.compile_sweep); one that says more is
  the hard feature `platform_parameters`.
- Exit handlers (`dsl.ExitHandler`) and `ignore_upstream_failure()` compile to the same
  trigger policy ALL_UPSTREAM_TASKS_COMPLETED, which the Argo compiler turns into
  "runs whatever the upstream state" (argocompiler/dag.go, depends_exit_handler).
  Before 2.5.0 (#11470 is listed in CHANGELOG 2.5.0, against 2.3.0; as above, taken as
  2.5.0) a run whose exit task succeeds reports Succeeded even when a step failed
  (#11405, fixed by the exit lifecycle hook #11470): `finish` therefore
  fails itself when a step failed, so the run is FAILED on every version.

Kubeflow releases ship: 1.9 -> KFP 2.2/2.3, 1.10 -> 2.4/2.5 (kubeflow/manifests).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

log = logging.getLogger(__name__)

Version = tuple[int, int, int]
FLOOR: Version = (2, 2, 0)  # the oldest backend this project supports at all (Kubeflow 1.9)


@dataclass(frozen=True)
class Feature:
    """An IR feature whose support depends on the backend version."""
    name: str
    since: Version
    hard: bool  # True: older backends refuse or fail the run; False: they silently drop it
    before: str  # what an older backend does
    source: str  # upstream evidence


FEATURES: dict[str, Feature] = {f.name: f for f in (
    Feature("task_final_status", (2, 14, 0), True, "refuses the run: 'task final status not supported yet'",
            "argocompiler/dag.go addImplicitDependencies; #11953 (CHANGELOG 2.14.0)"),
    Feature("collected", (2, 14, 0), True, "cannot resolve the fan-in of a ParallelFor",
            "#11725 (CHANGELOG 2.14.0)"),
    Feature("loop_artifact_passing", (2, 5, 0), True,
            "cannot resolve an artifact passed between tasks of one ParallelFor iteration",
            "#11520, fixed by #11627 (CHANGELOG 2.5.0)"),
    Feature("platform_parameters", (2, 5, 0), True,
            "fails the task's driver on a platform-spec field it does not know (secretNameParameter, ...)",
            "#11662 (CHANGELOG 2.5.0); the fields: #11621, #11770"),
    Feature("job_placeholders", (2, 5, 0), False,
            "passes {{$.pipeline_job_uuid}} etc. through literally (run_key, which submit sets, covers it)",
            "#11599 (CHANGELOG 2.5.0)"),
    Feature("retry_policy", (2, 5, 0), False, "drops set_retry silently (no Argo retryStrategy)",
            "#9950, fixed by #11673 (CHANGELOG 2.5.0)"),
    Feature("parallelism_limit", (2, 5, 0), False, "ignores ParallelFor parallelism (all iterations at once)",
            "#10798 (CHANGELOG 2.5.0 section, against 2.3.0; no 2.4.0 section)"),
    Feature("exit_handler", (2, 5, 0), False,
            "reports a run Succeeded when its exit task succeeds (finish fails itself on a failed step)",
            "#11405, fixed by #11470 (CHANGELOG 2.5.0 section, against 2.3.0; no 2.4.0 section)"),
)}


@dataclass(frozen=True)
class Support:
    pipeline: str
    min_version: Version
    forced_by: tuple[str, ...]  # the hard features that set min_version ('' = the project's floor)
    kubeflow: str


# The one table (tests/test_pipeline_compile.py checks it against the compiled IR).
SUPPORT: dict[str, Support] = {
    "main": Support("main", FLOOR, (), "Kubeflow 1.9+ (KFP 2.2+)"),
    "sweep": Support("sweep", (2, 5, 0), ("loop_artifact_passing",), "Kubeflow 1.10+ with KFP 2.5+"),
}


def fmt(version: Version) -> str:
    return ".".join(map(str, version))


def parse_version(tag: Any) -> Version | None:
    """'2.3.0', 'v2.14.3', '2.5.0-rc.1' -> (major, minor, patch); None when unreadable."""
    m = re.match(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?", str(tag or ""))
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


# ---- reading the IR ---------------------------------------------------------------------


def _dags(spec: Mapping) -> Iterable[tuple[str, Mapping, Mapping]]:
    """(component name, component, its dag) for the root and every DAG component."""
    yield "root", spec["root"], spec["root"].get("dag", {})
    for name, comp in spec.get("components", {}).items():
        if "dag" in comp:
            yield name, comp, comp["dag"]


def _loop_bodies(spec: Mapping) -> set[str]:
    return {task["componentRef"]["name"] for _, _, dag in _dags(spec) for task in dag.get("tasks", {}).values()
            if "parameterIterator" in task or "artifactIterator" in task}


def ir_features(spec: Mapping) -> set[str]:
    """The FEATURES a compiled pipeline (the IR's first YAML document) uses."""
    found: set[str] = set()
    bodies = _loop_bodies(spec)
    for name, _, dag in _dags(spec):
        for task in dag.get("tasks", {}).values():
            params = task.get("inputs", {}).get("parameters", {})
            arts = task.get("inputs", {}).get("artifacts", {})
            if any("taskFinalStatus" in p for p in params.values()):
                found.add("task_final_status")
            if "retryPolicy" in task:
                found.add("retry_policy")
            if task.get("iteratorPolicy", {}).get("parallelismLimit"):
                found.add("parallelism_limit")
            if task.get("triggerPolicy", {}).get("strategy") == "ALL_UPSTREAM_TASKS_COMPLETED":
                found.add("exit_handler")
            for p in params.values():
                constant = p.get("runtimeValue", {}).get("constant")
                if isinstance(constant, str) and "{{$.pipeline_" in constant:
                    found.add("job_placeholders")
            if name in bodies and any("taskOutputArtifact" in a for a in arts.values()):
                found.add("loop_artifact_passing")
            # a fan-in: a task consuming an output of a loop (dsl.Collected)
            producers = {v.get("taskOutputParameter", v.get("taskOutputArtifact", {})).get("producerTask")
                         for v in [*params.values(), *arts.values()]}
            if any(dag["tasks"].get(p, {}).get("componentRef", {}).get("name") in bodies for p in producers if p):
                found.add("collected")
    return found


def required_version(features: Iterable[str]) -> tuple[Version, tuple[str, ...]]:
    """(the oldest backend that runs these features, the hard features forcing it)."""
    hard = [FEATURES[f] for f in features if FEATURES[f].hard]
    top = max([FLOOR, *(f.since for f in hard)])
    return top, tuple(sorted(f.name for f in hard if f.since == top and top > FLOOR))


# ---- the platform spec on old backends -------------------------------------------------

# kfp-kubernetes 2.x's parameterised twin -> the deprecated field(s) an old backend reads
_TWINS = {"secretNameParameter": ("secretName",),
          "pvcNameParameter": ("componentInputParameter", "taskOutputParameter", "constant")}


def _same(new: Any, old_key: str, old: Any) -> bool:
    """The twin says what the old field says: {"runtimeValue": {"constant": old}} for a
    name, {old_key: old} for a reference (a pipeline input, a task output)."""
    return new in ({"runtimeValue": {"constant": old}}, {old_key: old})


def legacy_platform_spec(platform: Any) -> tuple[Any, set[str]]:
    """(`platform` without the fields backends before 2.5 refuse where an older field says
    the same, the FEATURES still left: {"platform_parameters"} when a twin says more)."""
    left: set[str] = set()

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(v) for v in node]
        if not isinstance(node, dict):
            return node
        out = {}
        for key, value in node.items():
            if key in _TWINS:
                olds = [(k, node[k]) for k in _TWINS[key] if k in node]
                if olds and all(_same(value, k, v) for k, v in olds):
                    continue
                left.add("platform_parameters")
            if key == "optional" and "keyToEnv" in node:
                if value is False:
                    continue  # the proto's default: nothing lost
                # SecretAsEnv.optional is newer still (requested in #11401, open in 2025): an old driver
                # refuses it, a newer one may drop it (the Secret then is required after all)
                left.add("platform_parameters")
            out[key] = walk(value)
        return out

    return walk(platform), left


def legacy_package(path: str | os.PathLike) -> set[str]:
    """Rewrite a compiled package so that backends before 2.5 can read its platform spec
    (`legacy_platform_spec`); returns the platform FEATURES it still uses."""
    import yaml
    from pathlib import Path

    from srcore.atomic import write_text_atomic

    text = Path(path).read_text()
    docs = list(yaml.safe_load_all(text))
    if len(docs) < 2 or not docs[1]:
        return set()
    platform, left = legacy_platform_spec(docs[1])
    if platform != docs[1]:
        # the compiler's comment header (name, inputs) stays
        header = "".join(itertools.takewhile(lambda line: line.startswith("#"), text.splitlines(keepends=True)))
        write_text_atomic(path, header + yaml.safe_dump_all([docs[0], platform], sort_keys=False))
    if left:
        log.warning("%s uses platform-spec fields KFP backends before 2.5 refuse (%s; e.g. "
                    "SRGAN_MLFLOW_SECRET_OPTIONAL=true): run it on KFP 2.5 or later", path, ", ".join(sorted(left)))
    return left


# ---- IR type check ---------------------------------------------------------------------


def _param_type(comp: Mapping, side: str, name: str) -> str | None:
    return comp.get(f"{side}Definitions", {}).get("parameters", {}).get(name, {}).get("parameterType")


def _artifact_type(comp: Mapping, side: str, name: str) -> tuple[str, bool] | None:
    art = comp.get(f"{side}Definitions", {}).get("artifacts", {}).get(name)
    if art is None:
        return None
    return art.get("artifactType", {}).get("schemaTitle", ""), bool(art.get("isArtifactList"))


def type_mismatches(spec: Mapping) -> list[str]:
    """Every task input whose declared type differs from what feeds it: another task's
    output, a loop item, or an input of the enclosing DAG (pipeline parameters included).
    The KFP driver type-checks these at run time and fails the task; kfp.local does not.
    Returns one line per mismatch ([] = consistent)."""
    comps = spec.get("components", {})
    problems: list[str] = []
    for dag_name, enclosing, dag in _dags(spec):
        tasks = dag.get("tasks", {})
        for task_name, task in tasks.items():
            consumer = comps.get(task["componentRef"]["name"], {})
            where = f"{dag_name}/{task_name}"
            iterator = task.get("parameterIterator")
            if iterator:
                items = iterator["items"].get("inputParameter")
                fed = task.get("inputs", {}).get("parameters", {}).get(items, {})
                item_type = _param_type(consumer, "input", iterator["itemInput"])
                if items and _param_type(consumer, "input", items) not in (None, "LIST"):
                    problems.append(f"{where}: loop items {items} are not a LIST")
                if fed and item_type not in ("STRUCT", "STRING", "NUMBER_INTEGER", "NUMBER_DOUBLE", "BOOLEAN", "LIST"):
                    problems.append(f"{where}: loop item {iterator['itemInput']} has no usable type ({item_type})")
            for name, src in task.get("inputs", {}).get("parameters", {}).items():
                want = _param_type(consumer, "input", name)
                if "taskOutputParameter" in src:
                    ref = src["taskOutputParameter"]
                    producer = comps.get(tasks.get(ref["producerTask"], {}).get("componentRef", {}).get("name"), {})
                    have, origin = _param_type(producer, "output", ref["outputParameterKey"]), \
                        f"output {ref['producerTask']}.{ref['outputParameterKey']}"
                elif "componentInputParameter" in src:
                    have, origin = _param_type(enclosing, "input", src["componentInputParameter"]), \
                        f"input {src['componentInputParameter']} of {dag_name}"
                    if src.get("parameterExpressionSelector"):
                        continue  # a field of a STRUCT: its type is not declared anywhere
                elif "taskFinalStatus" in src:
                    have, origin = "TASK_FINAL_STATUS", "the exit handler's final status"
                else:
                    continue  # a constant
                if want is None:
                    problems.append(f"{where}: parameter {name} is not an input of {task['componentRef']['name']}")
                elif have != want:
                    problems.append(f"{where}: parameter {name} is {want} but {origin} is {have}")
            for name, src in task.get("inputs", {}).get("artifacts", {}).items():
                want_a = _artifact_type(consumer, "input", name)
                if "taskOutputArtifact" in src:
                    ref = src["taskOutputArtifact"]
                    producer = comps.get(tasks.get(ref["producerTask"], {}).get("componentRef", {}).get("name"), {})
                    have_a, origin = _artifact_type(producer, "output", ref["outputArtifactKey"]), \
                        f"output {ref['producerTask']}.{ref['outputArtifactKey']}"
                elif "componentInputArtifact" in src:
                    have_a, origin = _artifact_type(enclosing, "input", src["componentInputArtifact"]), \
                        f"input {src['componentInputArtifact']} of {dag_name}"
                else:
                    continue
                if want_a is None:
                    problems.append(f"{where}: artifact {name} is not an input of {task['componentRef']['name']}")
                elif have_a != want_a:
                    problems.append(f"{where}: artifact {name} is {want_a} but {origin} is {have_a}")
    return problems


# ---- the check before submit/upload ------------------------------------------------------


class BackendTooOld(ValueError):
    """The KFP API server cannot run this pipeline."""


def check_backend(pipeline: str, tag_name: Any, host: str = "",
                  features: Iterable[str] | None = None) -> Version | None:
    """Refuse (BackendTooOld, one line naming both versions) a pipeline the server cannot
    run: by the SUPPORT table, or by the IR `features` of a given package. An unreadable
    version is refused too, except for a pipeline that needs only the project's floor: a
    server that answers the v2beta1 API at all is KFP 2.x, and what differs within 2.x
    is what the table lists. Returns the server's version (None when unreadable)."""
    if features is None:
        needed, forced_by, soft = SUPPORT[pipeline].min_version, SUPPORT[pipeline].forced_by, DEGRADED[pipeline]
    else:
        features = set(features)
        (needed, forced_by), soft = required_version(features), tuple(f for f in features if not FEATURES[f].hard)
    server = parse_version(tag_name)
    at = f" at {host}" if host else ""
    why = "; ".join(f"{FEATURES[f].name}: {FEATURES[f].source}" for f in forced_by) or "the project's floor"
    if server is None:
        if needed <= FLOOR:
            log.warning("the KFP API%s reports no readable version (tag_name=%r): cannot check that it is KFP %s or "
                        "later, which the %s pipeline needs", at, tag_name, fmt(needed), pipeline)
            return None
        raise BackendTooOld(
            f"the KFP API{at} reports no readable version (tag_name={tag_name!r}); the {pipeline} pipeline needs KFP "
            f"backend {fmt(needed)} or later ({why}): pass --skip-version-check if you know the server is new enough")
    if server < needed:
        raise BackendTooOld(f"the {pipeline} pipeline needs KFP backend {fmt(needed)} or later, the API{at} is "
                            f"{fmt(server)} ({why})")
    for name in sorted(soft):
        f = FEATURES[name]
        if server < f.since:
            log.warning("KFP %s%s %s (fixed in %s: %s)", fmt(server), at, f.before, fmt(f.since), f.source)
    return server


# soft features each pipeline uses (the test checks them against the IR too)
DEGRADED: dict[str, tuple[str, ...]] = {
    "main": ("exit_handler", "job_placeholders", "retry_policy"),
    "sweep": ("exit_handler", "job_placeholders", "parallelism_limit", "retry_policy"),
}
