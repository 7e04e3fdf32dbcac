"""examples/kubernetes/ runs the real node command: every flag, every ``CATGA_*``
variable and every port it names is one the node command has, with a value it takes."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from catga_zmq._cli import _node_parser, load_app, settings_from_argv
from catga_zmq.config import NodeOptions, options_from_env, settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "kubernetes"
#: What the downward API would give a pod; loopback only, and never contacted.
DOWNWARD_API = {
    "metadata.name": "shop-0",
    "metadata.namespace": "default",
    "status.podIP": "127.0.0.1",
}
NODE_COMMAND = ["python", "-m", "catga_zmq.node"]


def documents(name: str) -> list[dict[str, Any]]:
    with open(EXAMPLE / name) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def one(kind: str) -> dict[str, Any]:
    found = [d for f in sorted(EXAMPLE.glob("*.yaml")) for d in documents(f.name)]
    of_kind = [d for d in found if d["kind"] == kind]
    assert len(of_kind) == 1, f"expected one {kind} in {EXAMPLE}, found {len(of_kind)}"
    return of_kind[0]


def node_container() -> dict[str, Any]:
    spec = one("StatefulSet")["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["command"][:3] == NODE_COMMAND]
    return container


def pod_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's variables as the pod sees them (downward API filled in)."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        else:
            env[var["name"]] = DOWNWARD_API[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion; a variable the pod lacks fails the test."""

    def var(m: re.Match[str]) -> str:
        assert m[1] in env, f"{text!r} uses $({m[1]}), which the container does not define"
        return env[m[1]]

    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", var, text)


def node_argv() -> list[str]:
    container = node_container()
    env = pod_env(container)
    return [expand(a, env) for a in container["command"][3:] + container.get("args", [])]


def flag(argv: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} given {len(values)} times in {argv}"
    return values[0]


def test_every_flag_is_one_the_node_command_has() -> None:
    argv = node_argv()
    flags = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    known = {o for action in _node_parser()._actions for o in action.option_strings}
    assert flags - known == set(), f"flags the node command lacks: {sorted(flags - known)}"
    # and argparse takes them (an unknown flag or a bad choice exits 2)
    settings_from_argv(argv)


def test_every_catga_variable_is_a_setting() -> None:
    env = {k: v for k, v in pod_env(node_container()).items() if k.startswith("CATGA_")}
    assert env, "the example sets no CATGA_* variable: this test would check nothing"
    known = {s.env for s in settings()}
    assert set(env) - known == set(), f"variables that are no setting: {set(env) - known}"
    options_from_env(env)


def test_the_settings_make_a_valid_node_of_the_example_app(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(ROOT)
    argv = node_argv()
    app = load_app(_node_parser().parse_args(argv).app)
    env = {k: v for k, v in pod_env(node_container()).items() if k.startswith("CATGA_")}
    changes = {**options_from_env(env), **settings_from_argv(argv)}
    options: NodeOptions = app.options.merged(changes).validated()
    assert options.node_id == "shop-0"
    assert options.discovery == "dns"
    assert options.advertise == "127.0.0.1"  # the pod IP, from the downward API
    assert options.dns_name == "_router._tcp.shop.default.svc.cluster.local"
    assert options.dns_record == "srv"  # with CURVE, an SRV target names its certificate
    assert options.curve_secret_key == "/keys/shop-0.key_secret"


def test_ports_probes_and_volumes_agree_with_the_flags() -> None:
    argv = node_argv()
    container = node_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["router"] == int(flag(argv, "port"))
    assert ports["pub"] == int(flag(argv, "pub-port"))
    assert ports["metrics"] == int(flag(argv, "metrics-port"))
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}

    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(Path(flag(argv, "curve-secret-key")).parent) in mounts
    assert flag(argv, "curve-trust-dir") in mounts

    service = one("Service")
    assert service["spec"]["clusterIP"] == "None"  # headless: one A record per pod
    # a pod is found before it is ready: it becomes ready only once it has joined
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
    name = service["metadata"]["name"]
    # _PORT._tcp.SERVICE...: the SRV records of one of the Service's named ports, the
    # one the nodes' ROUTERs listen on
    port_name, proto, service_name = flag(argv, "dns-name").split(".")[:3]
    assert (proto, service_name) == ("_tcp", name)
    (router,) = [p for p in service["spec"]["ports"] if f"_{p['name']}" == port_name]
    assert router["port"] == int(flag(argv, "port"))
    assert one("StatefulSet")["spec"]["serviceName"] == name


def test_the_image_installs_extras_the_package_has() -> None:
    dockerfile = (EXAMPLE / "Dockerfile").read_text()
    (extras,) = re.findall(r"pip install [^\n]*'\.\[([a-z,]+)\]'", dockerfile)
    with open(ROOT / "pyproject.toml", "rb") as f:
        declared = tomllib.load(f)["project"]["optional-dependencies"]
    assert set(extras.split(",")) <= set(declared)
    assert {"dns", "prometheus"} <= set(extras.split(","))
