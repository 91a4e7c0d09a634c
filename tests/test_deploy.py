"""Offline validation of the deployment files: Compose, worker images, Kubernetes, Slurm, systemd.

Nothing here starts a container or a cluster (there is none on a CI machine): the files are checked
against the Compose specification's JSON schema, the Kubernetes OpenAPI schemas (kubernetes-validate),
shellcheck and `systemd-analyze verify`, plus the properties the farm relies on (Redis AOF and
noeviction, one job per GPU, non-root images, one beat). Each validator also rejects a broken file, so
that a validator which accepts anything cannot pass these tests.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "kubernetes"
SYSTEMD = ROOT / "deploy" / "systemd"
SBATCH = ROOT / "deploy" / "slurm" / "farm-worker.sbatch"
DOCKERFILES = [ROOT / "workers" / "Dockerfile.cpu", ROOT / "workers" / "Dockerfile.cuda"]
SHELL_SCRIPTS = [ROOT / "workers" / "entrypoint.sh", ROOT / "workers" / "healthcheck", SBATCH]
K8S_VERSION = "1.30.0"  # the oldest Kubernetes the manifests promise to fit


def _tool(name: str) -> str | None:
    """An executable from this interpreter's environment first (the venv), then PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in _k8s_docs() if d["kind"] == kind}


# -- Compose ----------------------------------------------------------------------------------------


def _check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    exe = _tool("check-jsonschema")
    if exe is None:
        pytest.skip("check-jsonschema is not installed (pip install check-jsonschema)")
    cmd = [exe, "--builtin-schema", "vendor.compose-spec", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_compose_file_matches_the_compose_spec_schema() -> None:
    proc = _check_compose_schema(COMPOSE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_schema_check_rejects_a_broken_file(tmp_path: Path) -> None:
    data = _compose()
    data["services"]["worker-cpu"]["restartt"] = "always"  # a misspelt key
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(yaml.safe_dump(data))
    proc = _check_compose_schema(bad)
    assert proc.returncode != 0 and "restartt" in proc.stdout + proc.stderr


def test_compose_redis_is_durable_password_protected_and_health_checked() -> None:
    redis = _compose()["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    cmd = redis["command"]
    assert cmd[0] == "redis-server"
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    # `:?`: Compose refuses to start without a password instead of running an open Redis.
    assert cmd[cmd.index("--requirepass") + 1].startswith("${FARM_REDIS_PASSWORD:?")
    volume = redis["volumes"][0].split(":")[0]
    assert volume in _compose()["volumes"], "Redis data must live on a named volume"
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    assert redis["environment"]["REDISCLI_AUTH"] == "${FARM_REDIS_PASSWORD}"  # the ping uses the password
    assert redis["ports"][0].startswith("${REDIS_PUBLISH:-127.0.0.1:"), "Redis stays on loopback by default"


def test_compose_workers_wait_for_redis_and_report_their_health() -> None:
    services = _compose()["services"]
    for name in ("worker-cpu", "worker-gpu", "beat", "flower"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert services[name]["environment"]["FARM_REDIS_URL"].endswith("@redis:6379/0}"), name
    for name in ("worker-cpu", "worker-gpu"):
        check = services[name]["healthcheck"]["test"]
        assert check[0] == "CMD-SHELL" and 'farm workers --check-host "$$(hostname)"' in check[1], name
        assert services[name]["command"][:2] == ["farm", "worker"]
        assert services[name]["command"][-2:] == ["--concurrency", "1"], name
    assert services["beat"]["command"] == ["farm", "beat"]
    assert services["beat"]["healthcheck"] == {"disable": True}  # no worker heartbeat to find


def test_compose_gpu_worker_reserves_one_nvidia_gpu() -> None:
    gpu = _compose()["services"]["worker-gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert gpu["build"]["dockerfile"] == "workers/Dockerfile.cuda"
    assert gpu["command"][2:4] == ["--device", "cuda"]


def test_compose_flower_is_behind_the_monitoring_profile() -> None:
    services = _compose()["services"]
    assert services["flower"]["profiles"] == ["monitoring"]
    assert "celery --broker=" in " ".join(services["flower"]["command"])
    assert [n for n, s in services.items() if "profiles" in s] == ["flower"]


def test_env_example_documents_every_variable_the_compose_file_reads() -> None:
    text = COMPOSE.read_text()
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", text))
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    assert used, "no ${VAR} found in docker-compose.yml"
    assert used <= documented, f"not in .env.example: {sorted(used - documented)}"


def test_dockerignore_keeps_secrets_and_the_venv_out_of_the_build_context() -> None:
    lines = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".env", ".git", ".venv"} <= lines
    assert not lines & {"farm", "workers", "pyproject.toml"}, "the images need these"


# -- worker images ----------------------------------------------------------------------------------


def _stages(path: Path) -> list[list[str]]:
    """Instructions of each build stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_farm_worker_as_a_non_root_user(dockerfile: Path) -> None:
    stages = _stages(dockerfile)
    everything = [i for s in stages for i in s]
    assert any(re.match(r"RUN .*\bpip install \.(\s|$)", i) for i in everything), "the package is not installed"
    assert any(re.match(r"COPY .*\bfarm\b", i) for i in everything), "the package source is not copied"
    # The default target is the last stage; its user is the last USER along its chain of FROM stages.
    final = _final_stage_chain(stages)
    users = [i.split()[1] for i in final if i.upper().startswith("USER ")]
    assert users, "no USER: the image runs as root"
    assert users[-1].split(":")[0] not in ("root", "0"), f"final stage runs as {users[-1]}"
    assert re.fullmatch(r"\d+(:\d+)?", users[-1]), "a numeric USER lets Kubernetes' runAsNonRoot verify it"
    assert any(i.startswith("HEALTHCHECK ") and "farm-healthcheck" in i for i in final)
    assert any(i.startswith("ENTRYPOINT ") and "farm-entrypoint" in i for i in final)
    cmd = [i for i in final if i.startswith("CMD ")][-1]
    assert cmd.startswith('CMD ["farm", "worker"') and '"--concurrency", "1"' in cmd


def _final_stage_chain(stages: list[list[str]]) -> list[str]:
    """The instructions that build the default target: the last stage and the stages it is FROM."""
    names = {}
    for s in stages:
        m = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", s[0], re.I)
        if m and m.group(1):
            names[m.group(1)] = s
    chain: list[str] = []
    stage: list[str] | None = stages[-1]
    while stage is not None:
        chain = stage + chain
        parent = stage[0].split()[1]
        stage = names.get(parent)
    return chain


def test_cuda_image_builds_on_a_real_pytorch_cuda_runtime_tag() -> None:
    text = (ROOT / "workers" / "Dockerfile.cuda").read_text()
    m = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)
    assert m is not None
    assert re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda12\.\d+-cudnn9-runtime", m.group(1))


def test_cpu_image_installs_the_cpu_build_of_torch_first() -> None:
    stages = _stages(ROOT / "workers" / "Dockerfile.cpu")
    runs = [i for i in stages[0] if i.startswith("RUN ")]
    torch_at = next(n for n, i in enumerate(runs) if "download.pytorch.org/whl/cpu" in i)
    package_at = next(n for n, i in enumerate(runs) if "pip install ." in i)
    assert torch_at < package_at


# -- shell scripts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_script_parses(script: Path) -> None:
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    assert script.stat().st_mode & 0o111, f"{script.name} is not executable"


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_script_passes_shellcheck(script: Path) -> None:
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    proc = subprocess.run([exe, "--shell=bash", str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shellcheck_catches_a_broken_script(tmp_path: Path) -> None:
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $1/*\n")  # unquoted: SC2086
    proc = subprocess.run([exe, str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "SC2086" in proc.stdout


def test_sbatch_asks_for_one_gpu_and_a_warm_shutdown_before_the_time_limit() -> None:
    directives = dict(
        re.match(r"#SBATCH --([\w-]+)=?(.*)", ln).groups()  # type: ignore[union-attr]
        for ln in SBATCH.read_text().splitlines()
        if ln.startswith("#SBATCH --")
    )
    assert directives["gres"] == "gpu:1"
    assert directives["time"]
    # B: the signal goes to the batch shell, which passes it on to the worker it started.
    assert re.fullmatch(r"B:TERM@\d+", directives["signal"])
    text = SBATCH.read_text()
    assert re.search(r"^trap 'kill -TERM \"\$worker\"", text, re.M)
    assert "device=${FARM_WORKER_DEVICE:-cuda}" in text
    assert 'farm worker --device "$device" --concurrency 1' in text


# -- Kubernetes -------------------------------------------------------------------------------------


def _kubernetes_validate() -> Any:
    return pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")


@pytest.mark.parametrize("path", sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"), ids=str)
def test_kubernetes_manifest_is_valid_for_the_api(path: Path) -> None:
    kv = _kubernetes_validate()
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        kv.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError naming the field


def test_kubernetes_validation_rejects_a_broken_manifest() -> None:
    kv = _kubernetes_validate()
    deployment = _by_kind("Deployment")["worker-cpu"]
    deployment["spec"]["template"]["spec"]["containers"][0]["argz"] = ["farm"]
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files
    assert kust["namespace"] == "farm"
    used = {c["image"].split(":")[0] for d in _by_kind("Deployment").values() for c in _containers(d)}
    assert used <= {i["name"] for i in kust["images"]}, "every farm image can be pointed at a registry"


def test_kustomize_build_renders_valid_manifests() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` cannot render the kustomization")
    kv = _kubernetes_validate()
    proc = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert len(docs) == len(_k8s_docs())
    for doc in docs:
        kv.validate(doc, K8S_VERSION, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "farm"


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["spec"]["template"]["spec"]["containers"]


def test_kubernetes_redis_keeps_its_data_and_requires_the_password() -> None:
    sts = _by_kind("StatefulSet")["redis"]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    (ctr,) = _containers(sts)
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in ctr["volumeMounts"]
    args = ctr["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert args[args.index("--requirepass") + 1] == "$(FARM_REDIS_PASSWORD)"
    env = {e["name"]: e for e in ctr["env"]}
    assert env["FARM_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "farm-redis"
    assert "redis-cli ping" in " ".join(ctr["readinessProbe"]["exec"]["command"])
    assert _by_kind("Service")["redis"]["spec"]["ports"][0]["port"] == 6379
    assert "password" in _by_kind("Secret")["farm-redis"]["stringData"]


def test_kubernetes_farm_pods_build_the_redis_url_from_the_secret() -> None:
    for name, dep in _by_kind("Deployment").items():
        env = _containers(dep)[0]["env"]
        names = [e["name"] for e in env]
        # $(VAR) is expanded only from variables defined earlier in the list.
        assert names.index("FARM_REDIS_PASSWORD") < names.index("FARM_REDIS_URL"), name
        url = next(e["value"] for e in env if e["name"] == "FARM_REDIS_URL")
        assert url == "redis://:$(FARM_REDIS_PASSWORD)@redis:6379/0", name
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name


def test_kubernetes_gpu_workers_take_one_gpu_of_one_model() -> None:
    gpu = {n: d for n, d in _by_kind("Deployment").items() if n.startswith("worker-gpu-")}
    assert set(gpu) >= {"worker-gpu-h100", "worker-gpu-a100"}
    products = set()
    for name, dep in gpu.items():
        pod = dep["spec"]["template"]["spec"]
        (ctr,) = pod["containers"]
        assert ctr["resources"]["limits"]["nvidia.com/gpu"] == 1, name
        products.add(pod["nodeSelector"]["nvidia.com/gpu.product"])
        assert name.removeprefix("worker-gpu-").upper() in pod["nodeSelector"]["nvidia.com/gpu.product"]
        assert ctr["args"][:4] == ["farm", "worker", "--device", "cuda"]
        assert ctr["args"][-2:] == ["--concurrency", "1"], name
        assert ctr["livenessProbe"]["exec"]["command"] == ["farm-healthcheck"]
    assert len(products) == len(gpu), "two GPU Deployments select the same model"


def test_kubernetes_runs_exactly_one_beat() -> None:
    beat = _by_kind("Deployment")["beat"]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"  # a rollout never overlaps two beats
    assert _containers(beat)[0]["args"] == ["farm", "beat"]


# -- systemd ----------------------------------------------------------------------------------------


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed: cannot verify the unit files")
    # The units run /opt/farm/.venv/bin/farm; verify checks that the binary exists, so point the copies
    # at this checkout's. A template is verified as an instance.
    farm = Path(sys.executable).parent / "farm"
    units = []
    for unit in sorted(SYSTEMD.glob("*.service")):
        text = unit.read_text().replace("/opt/farm/.venv/bin/farm", str(farm))
        copy = tmp_path / unit.name.replace("@.", "@0.")
        copy.write_text(text)
        units.append(str(copy))
    assert len(units) >= 3
    proc = subprocess.run([exe, "verify", "--man=no", *units], capture_output=True, text=True, timeout=60)
    # verify only warns (exit 0) about unknown keys: any output is a finding.
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr


def test_systemd_units_run_as_the_farm_user_and_restart() -> None:
    for unit in SYSTEMD.glob("*.service"):
        text = unit.read_text()
        assert re.search(r"^User=farm$", text, re.M), unit.name
        assert re.search(r"^Restart=always$", text, re.M), unit.name
        assert re.search(r"^EnvironmentFile=/etc/farm/farm.env$", text, re.M), unit.name
    worker = (SYSTEMD / "farm-worker@.service").read_text()
    assert re.search(r"^ExecStart=\S+/farm worker --device cuda --gpu %i --concurrency 1$", worker, re.M)
    assert "KillMode=mixed" in worker  # SIGTERM to the main process only: a warm shutdown


# -- the images' entry point, run here ---------------------------------------------------------------


def _entrypoint(args: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # A stand-in `farm` that prints its argv: what matters here is what the entry point execs.
    fake = tmp_path / "bin" / "farm"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text('#!/bin/sh\necho "farm $*"\n')
    fake.chmod(0o755)
    cmd = ["bash", str(ROOT / "workers" / "entrypoint.sh"), *args]
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin", **env}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


def test_entrypoint_refuses_to_start_without_a_redis_url(tmp_path: Path) -> None:
    proc = _entrypoint(["--device", "cpu"], {}, tmp_path)
    assert proc.returncode == 64
    assert "set FARM_REDIS_URL" in proc.stderr and not proc.stdout


def test_entrypoint_passes_options_to_farm_worker_and_runs_other_commands_as_given(tmp_path: Path) -> None:
    env = {"FARM_REDIS_URL": "redis://:pw@redis:6379/0"}
    proc = _entrypoint(["--device", "cuda", "--concurrency", "1"], env, tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "farm worker --device cuda --concurrency 1\n"), proc.stderr
    assert _entrypoint([], env, tmp_path).stdout == "farm worker\n"
    assert _entrypoint(["farm", "beat"], env, tmp_path).stdout == "farm beat\n"
    proc = _entrypoint(["bash", "-c", 'echo "ran with $FARM_REDIS_URL"'], env, tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "ran with redis://:pw@redis:6379/0\n")
