"""The deployment files against the real CLI and settings: no command, option or variable that drifted.

Every `farm ...` command line in the deployment files (Compose commands and health checks, Kubernetes
args, Dockerfile CMDs, the shell scripts, the systemd units, the docs' code blocks) must name a real
subcommand and only options that its `--help` lists; every FARM_* variable they mention must be a
field of farm.settings.Settings, except FARM_REDIS_PASSWORD, which only Compose and Kubernetes use to
build FARM_REDIS_URL. The example settings files must also load as valid Settings.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from farm.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
SYSTEMD = ROOT / "deploy" / "systemd"
SCRIPTS = [
    ROOT / "workers" / "entrypoint.sh",
    ROOT / "workers" / "healthcheck",
    ROOT / "deploy/slurm/farm-worker.sbatch",
]
DOCKERFILES = [ROOT / "workers" / "Dockerfile.cpu", ROOT / "workers" / "Dockerfile.cuda"]
DOCS = [ROOT / "docs" / "deploy.md", ROOT / "deploy" / "slurm" / "README.md"]

# Only the Redis service and the URL built for it use the password variable; it is no farm setting.
PASSWORD_VAR = "FARM_REDIS_PASSWORD"
PASSWORD_FILES = {"docker-compose.yml", ".env.example", "redis.yaml", "redis-secret.yaml", "deploy.md"}
PASSWORD_FILES |= {p.name for p in K8S.glob("worker-*.yaml")} | {"beat.yaml"}


@dataclass(frozen=True)
class FarmCommand:
    source: str  # file and where in it
    argv: tuple[str, ...]  # starting after `farm`

    @property
    def subcommand(self) -> str:
        return self.argv[0] if self.argv else ""

    @property
    def options(self) -> list[str]:
        return [a.split("=", 1)[0] for a in self.argv[1:] if a.startswith("--")]


def _from_argv(source: str, argv: list[str]) -> FarmCommand | None:
    """The farm command in an argv whose program is `farm` or a path ending in /farm, else None."""
    for i, token in enumerate(argv):
        if token == "farm" or token.endswith("/farm"):
            return FarmCommand(source, tuple(argv[i + 1 :]))
        if token != "exec":
            return None
    return None


def _from_shell(source: str, line: str) -> FarmCommand | None:
    line = line.strip().removesuffix("&").strip()
    if not re.match(r"^(exec\s+)?(\S*/)?farm\s", line):
        return None
    return _from_argv(source, shlex.split(line, comments=True))


def _compose_commands() -> list[FarmCommand]:
    found = []
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name, svc in services.items():
        cmd = svc.get("command")
        if isinstance(cmd, list) and (c := _from_argv(f"docker-compose.yml:{name}:command", cmd)):
            found.append(c)
        test = (svc.get("healthcheck") or {}).get("test")
        if isinstance(test, list) and test[0] == "CMD-SHELL":
            # `$$` is Compose's escaped `$`; the container's shell sees `$`.
            shell = test[1].replace("$$", "$")
            if c := _from_shell(f"docker-compose.yml:{name}:healthcheck", shell):
                found.append(c)
    return found


def _k8s_commands() -> list[FarmCommand]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            pod = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
            for ctr in pod.get("containers", []):
                argv = [*ctr.get("command", []), *ctr.get("args", [])]
                if c := _from_argv(f"{path.name}:{ctr['name']}", argv):
                    found.append(c)
    return found


def _dockerfile_commands() -> list[FarmCommand]:
    found = []
    for path in DOCKERFILES:
        for m in re.finditer(r"^(CMD|ENTRYPOINT) (\[.*\])$", path.read_text(), re.M):
            if c := _from_argv(f"{path.name}:{m.group(1)}", yaml.safe_load(m.group(2))):
                found.append(c)
    return found


def _script_commands() -> list[FarmCommand]:
    found = []
    for path in SCRIPTS:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.lstrip().startswith("#") and (c := _from_shell(f"{path.name}:{n}", line)):
                found.append(c)
    return found


def _systemd_commands() -> list[FarmCommand]:
    found = []
    for path in sorted(SYSTEMD.glob("*.service")):
        for m in re.finditer(r"^ExecStart=(.*)$", path.read_text(), re.M):
            if c := _from_argv(f"{path.name}:ExecStart", shlex.split(m.group(1))):
                found.append(c)
    return found


def _doc_commands() -> list[FarmCommand]:
    """`farm ...` lines inside the fenced code blocks of the deployment docs."""
    found = []
    for path in DOCS:
        if not path.exists():
            continue
        in_code = False
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                in_code = not in_code
            elif in_code and (c := _from_shell(f"{path.name}:{n}", line.strip().removeprefix("$ "))):
                found.append(c)
    return found


ALL_COMMANDS = [
    *_compose_commands(),
    *_k8s_commands(),
    *_dockerfile_commands(),
    *_script_commands(),
    *_systemd_commands(),
    *_doc_commands(),
]


def _help_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(COLUMNS="200", NO_COLOR="1", TERM="dumb")
    return env


@dataclass(frozen=True)
class Help:
    returncode: int
    stdout: str
    stderr: str


# One interpreter prints every `--help` (the CLI's import costs seconds; the test budget is tight):
# it calls the console script's own `main()` with each argv, as `farm <sub> --help` would.
_HELP_BATCH = """
import contextlib, io, json, sys
from farm.cli.main import main
out = {}
for name in json.loads(sys.argv[1]):
    buf, err = io.StringIO(), io.StringIO()
    sys.argv = ["farm", *([name] if name else []), "--help"]
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
    out[name] = [code, buf.getvalue(), err.getvalue()]
sys.__stdout__.write(json.dumps(out))
"""


@functools.cache
def _helps() -> dict[str, Help]:
    """`farm --help` and `farm <sub> --help` for every subcommand the files use."""
    names = sorted({"", "worker"} | {c.subcommand for c in ALL_COMMANDS})
    cmd = [sys.executable, "-c", _HELP_BATCH, json.dumps(names)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_help_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return {name: Help(*v) for name, v in json.loads(proc.stdout).items()}


def _help(subcommand: str = "") -> Help:
    return _helps()[subcommand]


@functools.lru_cache(maxsize=1)
def _subcommands() -> frozenset[str]:
    proc = _help()
    assert proc.returncode == 0, proc.stderr
    # Rich's command table: "│ worker   Serve jobs: ..." (plain "  worker  ..." without Rich).
    return frozenset(re.findall(r"^[│|\s]\s*([a-z][a-z0-9-]*)\s{2,}\S", proc.stdout, re.M))


def test_the_extraction_finds_the_commands_of_every_kind_of_file() -> None:
    sources = {c.source.split(":")[0] for c in ALL_COMMANDS}
    expected = {
        "docker-compose.yml",
        "worker-cpu.yaml",
        "worker-gpu-h100.yaml",
        "beat.yaml",
        "Dockerfile.cpu",
        "Dockerfile.cuda",
        "healthcheck",
        "farm-worker.sbatch",
        "farm-worker@.service",
        "farm-beat.service",
    }
    assert expected <= sources, f"no farm command found in {sorted(expected - sources)}"
    kinds = {c.subcommand for c in ALL_COMMANDS}
    assert {"worker", "workers", "beat"} <= kinds


def test_the_help_parser_sees_the_real_commands() -> None:
    assert {"worker", "workers", "run"} <= _subcommands()
    assert "--device" in _help("worker").stdout
    # The batch prints what the real command prints (but for the program's name on the usage line).
    cmd = [sys.executable, "-m", "farm.cli.main", "worker", "--help"]
    real = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_help_env(), cwd=ROOT)
    assert real.returncode == 0, real.stderr
    lines = [ln.rstrip() for ln in real.stdout.replace("python -m farm.cli.main", "farm").splitlines()]
    assert lines == [ln.rstrip() for ln in _help("worker").stdout.splitlines()]


def _unknown_options(command: FarmCommand) -> list[str]:
    proc = _help(command.subcommand)
    assert proc.returncode == 0, proc.stderr
    return [o for o in command.options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", proc.stdout)]


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=lambda c: f"{c.source}:{c.subcommand}")
def test_farm_command_and_options_exist(command: FarmCommand) -> None:
    assert command.subcommand in _subcommands(), (
        f"{command.source}: `farm {command.subcommand}` is not a farm command ({sorted(_subcommands())})"
    )
    assert not _unknown_options(command), f"{command.source}: `farm {command.subcommand}` has no such option"


def test_the_option_check_flags_an_option_that_does_not_exist() -> None:
    # --gpus is not --gpu: a prefix of a real option must not count as that option.
    probe = FarmCommand("probe", ("worker", "--device", "cuda", "--gpus", "1", "--queue=cuda"))
    assert _unknown_options(probe) == ["--gpus", "--queue"]
    assert _from_shell("probe", 'exec farm workers --check-host "$(hostname)"') == FarmCommand(
        "probe", ("workers", "--check-host", "$(hostname)")
    )
    assert _from_shell("probe", "farmer worker --x") is None


# -- FARM_* variables -------------------------------------------------------------------------------

VAR_FILES = [
    ROOT / "docker-compose.yml",
    ROOT / ".env.example",
    *sorted(K8S.glob("*.yaml")),
    *DOCKERFILES,
    *SCRIPTS,
    *sorted(SYSTEMD.iterdir()),
    *[p for p in DOCS if p.exists()],
]


# Not fields of farm.settings: the Slurm script's device, the environment variable of a CLI option
# (`--unserved-after`), and benchmarks/gpu_farm_check.sh's steps to leave out.
SCRIPT_VARS = {"FARM_WORKER_DEVICE", "FARM_UNSERVED_AFTER", "FARM_CHECK_SKIP"}


def _setting_vars() -> set[str]:
    return {f"FARM_{name.upper()}" for name in Settings.model_fields}


@pytest.mark.parametrize("path", VAR_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_farm_variable_is_a_real_setting(path: Path) -> None:
    mentioned = set(re.findall(r"\bFARM_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    unknown = mentioned - _setting_vars() - {PASSWORD_VAR} - SCRIPT_VARS
    assert not unknown, f"{path.name}: not fields of farm.settings.Settings: {sorted(unknown)}"
    if PASSWORD_VAR in mentioned:
        assert path.name in PASSWORD_FILES, f"{path.name}: use FARM_REDIS_URL; {PASSWORD_VAR} is for Compose/k8s"


def test_the_variable_check_sees_the_settings_the_files_set() -> None:
    text = "".join(p.read_text() for p in VAR_FILES)
    assert {"FARM_REDIS_URL", "FARM_TASK_TIME_LIMIT", "FARM_HOME"} <= set(re.findall(r"FARM_[A-Z_]+", text))
    assert "FARM_REDIS_URL" in _setting_vars()


def _env_assignments(text: str) -> dict[str, str]:
    return dict(re.findall(r"^(FARM_[A-Z0-9_]+)=(.*)$", text, re.M))


def _configmap() -> dict[str, Any]:
    return yaml.safe_load((K8S / "farm-config.yaml").read_text())["data"]


@pytest.mark.parametrize(
    ("name", "values"),
    [
        (".env.example", lambda: _env_assignments((ROOT / ".env.example").read_text())),
        ("deploy/systemd/farm.env", lambda: _env_assignments((SYSTEMD / "farm.env").read_text())),
        ("deploy/kubernetes/farm-config.yaml", _configmap),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_example_settings_load_as_valid_settings(name: str, values: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: str(v) for k, v in values().items() if k != PASSWORD_VAR}
    assert len(env) >= 3, f"{name}: expected example settings"
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = Settings()  # raises on a bad value or limits out of order
    assert settings.task_soft_time_limit < settings.task_time_limit < settings.visibility_timeout
