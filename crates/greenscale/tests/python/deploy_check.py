"""Offline checks of the Kubernetes deployment: renders every Kustomize overlay with
`kubectl kustomize`, validates the output against the Kubernetes schemas
(kubernetes-validate, strict), checks the ScaledObjects, the worker's and every container's
safety settings, lints the Dockerfile with hadolint, and reads docker-compose.yaml.

Usage: deploy_check.py REPO_ROOT      (exits non-zero with the reasons on failure)
"""

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(sys.argv[1])
BIN = Path(sys.executable).parent
failures = []


def check(ok, message):
    if not ok:
        failures.append(message)


def render(path):
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        failures.append(f"kubectl kustomize {path}: {out.stderr.strip()}")
        return [], ""
    return [d for d in yaml.safe_load_all(out.stdout) if d], out.stdout


def seconds(text):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def check_workloads(name, docs):
    for d in docs:
        if d["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = d["spec"]["template"]["spec"]
        where = f"{name}: {d['kind']}/{d['metadata']['name']}"
        check(pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{where}: runAsNonRoot")
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            w = f"{where} container {c['name']}"
            check(sc.get("allowPrivilegeEscalation") is False, f"{w}: allowPrivilegeEscalation")
            check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{w}: drop ALL capabilities")
            if c["name"] != "vllm":  # vLLM writes its caches and compiled kernels
                check(sc.get("readOnlyRootFilesystem") is True, f"{w}: read-only root filesystem")
            check("requests" in c.get("resources", {}), f"{w}: resource requests")
            check("readinessProbe" in c, f"{w}: readiness probe")
        if d["metadata"]["name"] == "greenscale-worker":
            check(d["spec"]["replicas"] == 0, f"{where}: starts at 0 replicas")
            grace = seconds(env_of(pod["containers"][0]).get("GREENSCALE_GRACE", "25s"))
            check(pod["terminationGracePeriodSeconds"] > grace,
                  f"{where}: terminationGracePeriodSeconds must exceed the drain grace {grace}")


def scaled_objects(docs):
    return [d for d in docs if d["kind"] == "ScaledObject"]


def main():
    overlays = sorted((ROOT / "deploy" / "overlays").iterdir()) + sorted((ROOT / "deploy" / "examples").iterdir())
    modes = {p.name for p in overlays}
    check({"keda-redis", "keda-external-push", "direct-actuator"} <= modes, f"overlays: {modes}")
    for path in overlays:
        docs, text = render(path)
        if not docs:
            continue
        rendered = Path("/tmp") / f"greenscale-{path.name}.yaml"
        rendered.write_text(text)
        v = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "-k", "1.33.0", "--quiet", str(rendered)],
                           capture_output=True, text=True)
        check(v.returncode == 0, f"{path.name}: schema validation failed:\n{v.stdout}{v.stderr}")
        kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
        for needed in [("Namespace", "greenscale"), ("StatefulSet", "redis"), ("Service", "redis"),
                       ("Deployment", "greenscale-gateway"), ("Service", "greenscale-gateway"),
                       ("Deployment", "greenscale-worker"), ("Deployment", "greenscale-scaler"),
                       ("Service", "greenscale-scaler"), ("Secret", "greenscale-secrets")]:
            check(needed in kinds, f"{path.name}: missing {needed}")
        for d in docs:
            if d["kind"] == "Secret":
                for k, v in d.get("stringData", {}).items():
                    check(v.startswith("replace-"), f"{path.name}: Secret {k} must be a placeholder")
            if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "redis":
                args = d["spec"]["template"]["spec"]["containers"][0]["args"]
                check("--appendonly" in args and "yes" in args, f"{path.name}: Redis with AOF")
                check(d["spec"].get("volumeClaimTemplates"), f"{path.name}: Redis volume")
        check_workloads(path.name, docs)
        sos = scaled_objects(docs)
        services = {(d["metadata"]["name"], d["metadata"].get("namespace")): d for d in docs if d["kind"] == "Service"}
        if path.name == "keda-redis":
            check(len(sos) == 1, "keda-redis: one ScaledObject")
            for so in sos:
                s, t = so["spec"], so["spec"]["triggers"][0]
                check(s["scaleTargetRef"]["name"] == "greenscale-worker", "keda-redis: target")
                check((s["minReplicaCount"], s["maxReplicaCount"], s["pollingInterval"], s["cooldownPeriod"]) == (0, 5, 5, 30),
                      f"keda-redis: prototype's min/max/polling/cooldown, got {s}")
                check(t["type"] == "redis" and t["metadata"]["listName"] == "jobs" and t["metadata"]["listLength"] == "1",
                      f"keda-redis: redis trigger on list jobs with listLength 1, got {t}")
                host = t["metadata"]["address"].split(".")[0]
                check((host, "greenscale") in services, f"keda-redis: address {t['metadata']['address']} is not a Service")
        if path.name in ("keda-external-push", "keda-external-push-tls", "vllm-sidecar"):
            check(len(sos) == 1, f"{path.name}: one ScaledObject")
            for so in sos:
                t = so["spec"]["triggers"][0]
                check(t["type"] == "external-push", f"{path.name}: external-push trigger")
                host, port = t["metadata"]["scalerAddress"].split(":")
                name, namespace = host.split(".")[0], host.split(".")[1]
                svc = services.get((name, namespace))
                check(svc is not None and any(p["port"] == int(port) for p in svc["spec"]["ports"]),
                      f"{path.name}: scalerAddress {host}:{port} is not a Service port")
                # Whether the scaler accepts this metadata is checked against the real scaler
                # (tests/keda.rs), with the values KEDA resolves for *FromEnv keys.
                check(so["spec"]["minReplicaCount"] == 0, f"{path.name}: scale to zero")
        if path.name == "keda-external-push-tls":
            scaler = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "greenscale-scaler")
            env = env_of(scaler["spec"]["template"]["spec"]["containers"][0])
            check({"GREENSCALE_TLS_CERT", "GREENSCALE_TLS_KEY", "GREENSCALE_TLS_CLIENT_CA"} <= set(env),
                  f"keda-external-push-tls: scaler TLS env {env}")
            auth = [d for d in docs if d["kind"] == "TriggerAuthentication"]
            params = {p["parameter"] for a in auth for p in a["spec"]["secretTargetRef"]}
            check(params == {"caCert", "tlsClientCert", "tlsClientKey"}, f"keda-external-push-tls: {params}")
            for so in sos:
                t = so["spec"]["triggers"][0]
                check(t["metadata"].get("enableTLS") == "true" and t.get("authenticationRef", {}).get("name") in
                      {a["metadata"]["name"] for a in auth}, f"keda-external-push-tls: trigger {t}")
        if path.name == "direct-actuator":
            check(not sos, "direct-actuator: no ScaledObject")
            scaler = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "greenscale-scaler")
            env = env_of(scaler["spec"]["template"]["spec"]["containers"][0])
            check(env.get("GREENSCALE_ACTUATOR") == "kubernetes" and env.get("GREENSCALE_DEPLOYMENT") == "greenscale-worker",
                  f"direct-actuator: scaler env {env}")
            role = next(d for d in docs if d["kind"] == "Role")
            rules = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
            for need in [("deployments/scale", "patch"), ("leases", "update"), ("leases", "create"), ("pods", "list")]:
                check(need in rules, f"direct-actuator: Role lacks {need}")
        if path.name == "vllm-sidecar":
            worker = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "greenscale-worker")
            containers = {c["name"]: c for c in worker["spec"]["template"]["spec"]["containers"]}
            check("nvidia.com/gpu" in containers.get("vllm", {}).get("resources", {}).get("requests", {}),
                  "vllm-sidecar: GPU request")
            check(env_of(containers["worker"]).get("GREENSCALE_MODEL_URL", "").startswith("http://127.0.0.1"),
                  "vllm-sidecar: worker calls the sidecar")
    lint = subprocess.run([str(BIN / "hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    check(lint.returncode == 0, f"hadolint:\n{lint.stdout}{lint.stderr}")
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    check({"redis", "gateway", "worker", "demo-model"} <= set(compose["services"]), "compose services")
    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print(f"deployment checks passed for {', '.join(sorted(modes))}")


if __name__ == "__main__":
    main()
