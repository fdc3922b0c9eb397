"""pipeline/k8s: the operator's one-command setup (claim, volume-permissions Job, deploy
RBAC), checked offline against the Kubernetes API schemas (kubernetes-validate, strict:
unknown fields fail) and against the code it serves: the claim and mount the DAG uses,
the image's uid, and the API calls srcore/deploy.py makes."""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path

import kubernetes_validate  # the project's test extra: a missing one fails, never skips
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "pipeline" / "k8s"
KUBERNETES_VERSIONS = ("1.29", "1.31")  # Kubeflow 1.9 / 1.10 era clusters


def _kustomization(folder: Path) -> dict:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


def _build(folder: Path) -> list[dict]:
    """What `kubectl apply -k folder` sends, for the subset of kustomize used here:
    resources (files or bases) and JSON6902 `replace`/`add` patches with a kind/name target."""
    objects: list[dict] = []
    kust = _kustomization(folder)
    assert kust["kind"] == "Kustomization" and set(kust) <= {"apiVersion", "kind", "resources", "patches"}
    for res in kust["resources"]:
        path = (folder / res).resolve()
        assert path.exists(), f"{folder}/kustomization.yaml names a missing resource {res}"
        objects += _build(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in kust.get("patches", []):
        target = patch["target"]
        hits = [o for o in objects if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]]
        assert hits, f"patch target {target} matches nothing"
        for op in yaml.safe_load(patch["patch"]):
            assert op["op"] in ("replace", "add"), op
            *parents, leaf = op["path"].strip("/").split("/")
            for obj in hits:
                node = obj
                for key in parents:
                    node = node[key]
                assert op["op"] == "add" or leaf in node, f"replace of a missing {op['path']}"
                node[leaf] = copy.deepcopy(op["value"])
    return objects


def _by_kind(objects: list[dict]) -> dict[str, dict]:
    kinds = {o["kind"]: o for o in objects}
    assert len(kinds) == len(objects), "one object per kind expected"
    return kinds


@pytest.mark.parametrize("folder", [K8S, K8S / "sweep"], ids=["main", "sweep"])
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_the_kubernetes_api_schema(folder, version):
    objects = _build(folder)
    assert {o["kind"] for o in objects} == {"PersistentVolumeClaim", "Job", "Role", "RoleBinding", "LimitRange"}
    for obj in objects:
        assert "namespace" not in obj["metadata"], "`kubectl apply -k ... -n $NS` places the objects"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']} (Kubernetes {version}): {str(e).splitlines()[0]}")


def test_every_manifest_file_is_applied():
    listed = {(K8S / r).resolve() for r in _kustomization(K8S)["resources"]}
    on_disk = {p.resolve() for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert on_disk == listed


def test_claim_access_modes_main_rwo_sweep_rwx():
    from pipeline.dag import ClusterSettings

    main, sweep = _by_kind(_build(K8S)), _by_kind(_build(K8S / "sweep"))
    assert main["PersistentVolumeClaim"]["metadata"]["name"] == ClusterSettings().pvc_name
    assert main["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert sweep["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert main["Job"] == sweep["Job"] and main["Role"] == sweep["Role"]


def test_permissions_job_chowns_the_claim_to_the_image_uid():
    from pipeline.dag import ClusterSettings

    uid = re.search(r"^ARG UID=(\d+)$", (REPO / "Dockerfile").read_text(), re.M).group(1)
    job = _by_kind(_build(K8S))["Job"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (volume,) = pod["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == ClusterSettings().pvc_name
    (mount,) = container["volumeMounts"]
    assert mount["name"] == volume["name"] and mount["mountPath"] == ClusterSettings().volume_mount
    script = " ".join(container["args"])
    assert f"chown -R {uid}:0 {mount['mountPath']}" in script
    assert pod["securityContext"]["runAsUser"] == 0
    # an Istio sidecar would keep the Job's pod running forever
    assert job["spec"]["template"]["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
    from srcore import volume as volume_check

    assert (REPO / volume_check.FIX_MANIFEST).is_file()


# ---- deploy RBAC against srcore/deploy.py ------------------------------------------------

# kubernetes Python client method prefix -> RBAC verb
_VERBS = {"get": "get", "read": "get", "list": "list", "create": "create", "patch": "patch", "replace": "update",
          "delete": "delete"}


def _deploy_api_calls() -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) for every Kubernetes client call in srcore/deploy.py:
    `<verb>_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, ...)` resolved through the
    module's constants, and `<verb>_namespaced_<kind>` of the core API."""
    from srcore import deploy

    tree = ast.parse(Path(deploy.__file__).read_text())
    needed = set()
    pattern = r"(get|read|list|create|patch|replace|delete)_namespaced_(\w+)"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        # a direct call `api.<method>(args)`, or one made by name through a wrapper:
        # `_call(api, deadline, what, "<method>", args...)` (srcore.api_deadline bounds each call)
        by_name = [i for i, a in enumerate(node.args) if isinstance(a, ast.Constant) and isinstance(a.value, str)
                   and re.fullmatch(pattern, a.value)]
        if by_name:
            method, args = node.args[by_name[0]].value, node.args[by_name[0] + 1:]
        elif isinstance(node.func, ast.Attribute):
            method, args = node.func.attr, node.args
        else:
            continue
        m = re.fullmatch(pattern, method)
        if not m:
            if method in ("Watch", "stream"):
                needed.add(("?", "?", "watch"))  # a watch: the test below must be taught its resource
            continue
        verb, kind = _VERBS[m.group(1)], m.group(2)
        if kind == "custom_object":
            group, plural = (getattr(deploy, a.id) for a in (args[0], args[3]))
            needed.add((group, plural, verb))
        else:
            needed.add(("", kind + "s", verb))
    return needed


def test_deploy_role_grants_what_deploy_py_calls_and_little_more():
    needed = _deploy_api_calls()
    assert ("serving.kserve.io", "inferenceservices", "create") in needed  # the parse found the calls
    role = _by_kind(_build(K8S))["Role"]
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    missing = needed - granted
    assert not missing, f"pipeline/k8s/deploy-rbac.yaml lacks {sorted(missing)} that srcore/deploy.py calls"
    # beyond deploy.py's calls only list/watch of the same resources (watching for Ready)
    extra = {(g, r, v) for g, r, v in granted - needed if v not in ("list", "watch")}
    assert not extra, f"the Role grants {sorted(extra)} that srcore/deploy.py never calls"


def test_role_binding_binds_the_pipeline_service_accounts_in_its_own_namespace():
    objects = _by_kind(_build(K8S))
    binding, role = objects["RoleBinding"], objects["Role"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    subjects = {s["name"]: s for s in binding["subjects"]}
    assert set(subjects) == {"pipeline-runner", "default-editor"}  # standalone KFP, Kubeflow profiles
    # unqualified ServiceAccount subjects mean the RoleBinding's namespace (RBAC authorizer's appliesToUser)
    assert all(s["kind"] == "ServiceAccount" and "namespace" not in s for s in subjects.values())


def test_ephemeral_storage_request_for_every_container_without_one():
    """KFP 2.17 cannot set ephemeral-storage per task (the IR's ResourceSpec has no such
    field): the namespace's LimitRange gives each container a request at admission."""
    from kfp.pipeline_spec import pipeline_spec_pb2

    fields = {f.name for f in pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec
              .DESCRIPTOR.fields}
    assert not any("ephemeral" in f or "storage" in f for f in fields), "KFP can now set it per task: use that"
    (limit,) = _by_kind(_build(K8S))["LimitRange"]["spec"]["limits"]
    assert limit["type"] == "Container" and limit["defaultRequest"]["ephemeral-storage"]
    assert "default" not in limit  # a request only: no limit that could kill a task


def test_istio_exception_keeps_strict_but_accepts_plain_text_on_mlflows_port():
    (policy,) = [d for d in yaml.safe_load_all((K8S / "istio" / "mlflow-permissive.yaml").read_text()) if d]
    assert policy["apiVersion"] == "security.istio.io/v1beta1" and policy["kind"] == "PeerAuthentication"
    spec = policy["spec"]
    assert spec["selector"]["matchLabels"]  # portLevelMtls is ignored without a workload selector
    assert spec["mtls"]["mode"] == "STRICT"
    assert {str(port): v["mode"] for port, v in spec["portLevelMtls"].items()} == {"5000": "PERMISSIVE"}
    assert set(spec) == {"selector", "mtls", "portLevelMtls"}
