"""The deployment files (deploy/): every one is checked by the tool that will read it, where
one runs here, and against the code it configures.

* deploy/envoy.yaml is the template rendered for the deployments (current, and accepted by
  `envoy --mode validate`);
* both NATS configurations are accepted by the pinned `nats-server -t`, as a JetStream cluster
  with fsync on every write;
* deploy/Dockerfile passes hadolint and copies every package the processes import;
* the Kubernetes manifests, assembled as kustomization.yaml says, pass the Kubernetes 1.37
  schemas strictly (kubernetes-validate; no cluster needed);
* compose.yaml and the manifests run every process `stockmesh up` runs, give them only
  settings the code reads, and agree with Envoy's upstream names and with the JetStream
  cluster's size.
(No Docker engine runs here; `docker-compose config` accepted compose.yaml by hand:
docs/deployment.md.)"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from meshkit.launcher import envoy, infra, keys
from meshkit.launcher.mesh import RELAY_MODULE, SERVICES
from meshkit.server import LIVENESS

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S_VERSION = "1.37"
# The processes `stockmesh up` runs, by the module each container must run.
MODULES = {*SERVICES, RELAY_MODULE}


def known_settings() -> set[str]:
    """Every environment variable the code reads (a setting in deploy/ that no code reads is a
    typo or a leftover)."""
    pattern = re.compile(r'(?:_get|_int|env_int|env_host|env_flag|env_choice|env_decimal|environ\.get|_env|getenv|environ\[|'
                         r'envvar=)\(?\s*"([A-Z][A-Z0-9_]+)"')
    found: set[str] = set()
    for folder in ("meshkit", "ledger_svc", "order_svc", "quote_svc", "matching_svc", "simulator"):
        for path in (REPO / folder).rglob("*.py"):
            found.update(pattern.findall(path.read_text()))
    return found


def test_known_settings_are_found() -> None:
    found = known_settings()
    assert {"DATABASE_URL", "NATS_URL", "JETSTREAM_REPLICAS", "GRPC_LISTEN", "BRIDGE_LISTEN"} <= found
    assert "QUOTE_ADDR" not in found  # the launcher sets it; nothing reads it


# ------------------------------------------------------------------------------- Envoy

def test_deploy_envoy_config_is_the_template_rendered() -> None:
    assert envoy.DEPLOY_CONFIG.read_text() == envoy.render_deployment(), \
        "deploy/envoy.yaml is stale: run python -m meshkit.launcher.envoy"
    assert envoy.DEPLOY_TLS_CONFIG.read_text() == envoy.render_deployment(tls=envoy.DEPLOY_TLS), \
        "deploy/envoy-tls.yaml is stale: run python -m meshkit.launcher.envoy"
    assert "DownstreamTlsContext" in envoy.DEPLOY_TLS_CONFIG.read_text()
    assert "DownstreamTlsContext" not in envoy.DEPLOY_CONFIG.read_text()  # compose's: one machine


def _mappers(node) -> list[dict]:
    """Every local-reply mapper of an Envoy configuration."""
    if isinstance(node, dict):
        found = list(node.get("local_reply_config", {}).get("mappers", []))
        return found + [m for v in node.values() for m in _mappers(v)]
    return [m for v in node for m in _mappers(v)] if isinstance(node, list) else []


def test_every_unavailable_envoy_answers_over_json_says_when_to_retry() -> None:
    """Envoy's own UNAVAILABLE replies to JSON calls (an upstream that does not answer, a
    limit's overflow) carry RetryInfo and Retry-After: 1, as the services' own do (review of
    round 24: the overflow's had neither)."""
    config = yaml.safe_load((DEPLOY / "envoy.yaml").read_text())
    unavailable = [m for m in _mappers(config)
                   if m.get("body_format_override", {}).get("json_format", {}).get("code") == 14]
    assert len(unavailable) >= 2, unavailable
    for m in unavailable:
        assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retry_delay": "1s"} in \
            m["body_format_override"]["json_format"]["details"], m
        assert {"key": "retry-after", "value": "1"} in [h["header"] for h in m.get("headers_to_add", [])], m


def test_every_unavailable_envoy_answers_over_grpc_says_when_to_retry() -> None:
    """Envoy's own UNAVAILABLE replies to gRPC and gRPC-Web calls (a service not answering, a
    limit's overflow) carry grpc-status-details-bin: a google.rpc.Status of the same code and
    message, with ErrorInfo UNAVAILABLE and RetryInfo 1 s, as the services' own UNAVAILABLE
    replies (round 27: only JSON callers were told when to retry)."""
    import base64

    from google.rpc import error_details_pb2, status_pb2

    config = yaml.safe_load((DEPLOY / "envoy.yaml").read_text())
    unavailable = [m for m in _mappers(config)
                   if {"key": "grpc-status", "value": "14"} in [h["header"] for h in m.get("headers_to_add", [])]]
    assert sorted(tuple(f["response_flag_filter"]["flags"]) for m in unavailable
                  for f in m["filter"]["and_filter"]["filters"] if "response_flag_filter" in f) == [
        ("UF", "UH", "UC", "UR", "URX"), ("UO",)], unavailable
    for m in unavailable:
        headers = {h["header"]["key"]: h["header"]["value"] for h in m["headers_to_add"]}
        status = status_pb2.Status.FromString(base64.b64decode(headers["grpc-status-details-bin"]))
        # grpc_status.rpc_status.from_call refuses details whose code or message differ.
        assert (status.code, status.message) == (14, headers["grpc-message"]), m
        info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
        assert [d.Unpack(info) or d.Unpack(retry) for d in status.details] == [True, True], status
        assert (info.reason, info.domain, retry.retry_delay.ToMilliseconds()) == (
            "UNAVAILABLE", "stockmesh.dev", 1000), status


def test_deploy_envoy_tls_config_is_accepted_by_envoy(tmp_path: Path) -> None:
    from tests.support.tls import self_signed

    dev = keys.ensure_keys(tmp_path)
    config = tmp_path / "envoy.yaml"
    config.write_text(envoy.render_deployment(jwks=dev.jwks_path, descriptor=envoy.DESCRIPTOR,
                                              tls=self_signed(tmp_path / "tls")))
    envoy.validate(config)


def test_deploy_envoy_config_is_accepted_by_envoy(tmp_path: Path) -> None:
    # The same rendering with this machine's paths for the JWKS and the descriptor (inside the
    # image they are /var/lib/stockmesh/keys/jwks.json and /app/gen/...).
    dev = keys.ensure_keys(tmp_path)
    config = tmp_path / "envoy.yaml"
    config.write_text(envoy.render_deployment(jwks=dev.jwks_path, descriptor=envoy.DESCRIPTOR))
    envoy.validate(config)
    text = config.read_text()
    assert "type: STRICT_DNS" in text and "type: STATIC" not in text
    # Upstreams by service name; only the admin interface stays on the loopback.
    assert re.findall(r"address: 127\.0\.0\.1, port_value: (\d+)", text) == ["9901"]
    for host in envoy.DEPLOY_PORTS.hosts.values():
        assert f"address: {host}, port_value: 50051" in text


def test_cors_origins_setting(tmp_path: Path) -> None:
    """STOCKMESH_CORS_ORIGINS / --cors-origins: exact origins, a host on any port, or none; never
    '*' nor something that is not an origin. deploy/ allows none unless rendered with origins."""
    assert envoy.cors_origins(" https://App.example.com , http://localhost:* ") == (
        "https://app.example.com", "http://localhost:*")
    assert envoy.cors_origins("none") == ()
    for bad in ("*", "", "app.example.com", "https://app.example.com/", "ftp://x.example", "https://*.example.com",
                "http://localhost:99999", "https://app.example.com/path"):
        with pytest.raises(envoy.EnvoyError):
            envoy.cors_origins(bad)
    assert "allow_origin_string_match: []" in envoy.DEPLOY_CONFIG.read_text()
    text = envoy.render_deployment(cors=("https://app.example.com", "http://localhost:*"))
    config = tmp_path / "envoy.yaml"
    config.write_text(envoy.render_deployment(jwks=keys.ensure_keys(tmp_path).jwks_path, descriptor=envoy.DESCRIPTOR,
                                              cors=("https://app.example.com", "http://localhost:*")))
    envoy.validate(config)
    assert '- exact: "https://app.example.com"' in text
    assert '- safe_regex: { regex: "^http://localhost(:[0-9]+)?$" }' in text
    assert "allow_credentials:" not in text
    # Every x-stockmesh-* header a service sends is one a page may read.
    sent = {m for folder in ("order_svc", "ledger_svc", "quote_svc", "matching_svc", "meshkit")
            for path in (REPO / folder).rglob("*.py")
            for m in re.findall(r'"(x-stockmesh-[a-z0-9-]+)"', path.read_text())}
    exposed = {h.strip() for h in re.search(r'expose_headers: "([^"]*)"', text)[1].split(",")}
    assert sent and sent <= exposed, sent - exposed


def test_stockmesh_up_refuses_a_wrong_cors_setting_before_starting_anything(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from meshkit.cli import main

    result = CliRunner().invoke(main, ["up", "--data-dir", str(tmp_path / "mesh")],
                                env={"STOCKMESH_CORS_ORIGINS": "*"})
    assert result.exit_code == 2 and "'*' is refused" in result.output, result.output
    assert not (tmp_path / "mesh").exists()


# ---------------------------------------------------------------------------- the image

def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    hadolint = infra.scripts_dir() / "hadolint"
    checked = subprocess.run([str(hadolint), str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    text = (DEPLOY / "Dockerfile").read_text()
    for folder in ("gen", "envoy", "deploy", "meshkit", *MODULES - {RELAY_MODULE}, "simulator"):
        assert f"COPY {folder} {folder}" in text, f"the image lacks {folder}/"
    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace("FROM python", "FROMM python"))
    assert subprocess.run([str(hadolint), str(broken)], capture_output=True, timeout=60).returncode != 0


def test_deploy_envoy_config_for_another_identity_provider(tmp_path: Path) -> None:
    dev = keys.ensure_keys(tmp_path)
    config = tmp_path / "envoy.yaml"
    assert envoy.main(["--issuer", "https://id.example.com/", "--audience", "brokerage",
                       "--output", str(config), "--tls-output", str(tmp_path / "tls.yaml")]) == 0
    text = config.read_text()
    assert 'issuer: "https://id.example.com/"' in text and 'audiences: ["brokerage"]' in text
    config.write_text(text.replace(f'"{envoy.DEPLOY_JWKS}"', f'"{dev.jwks_path}"')
                      .replace(f'"{envoy.DEPLOY_DESCRIPTOR}"', f'"{envoy.DESCRIPTOR}"'))
    envoy.validate(config)
    assert envoy.DEPLOY_CONFIG.read_text() == envoy.render_deployment()  # the committed ones untouched
    assert envoy.DEPLOY_TLS_CONFIG.read_text() == envoy.render_deployment(tls=envoy.DEPLOY_TLS)
    assert 'issuer: "https://id.example.com/"' in (tmp_path / "tls.yaml").read_text()


def test_a_check_against_other_options_says_the_command_that_writes_them(capsys) -> None:
    """Round 22: `--check --cors-origins X` of the committed files said "NOT current: run python
    -m meshkit.launcher.envoy", which, run as printed, writes the defaults, not what was checked."""
    assert envoy.main(["--check"]) == 0
    assert "NOT current" not in capsys.readouterr().out
    assert envoy.main(["--cors-origins", "https://app.example.com", "--check", "--audience", "a b"]) == 1
    out = capsys.readouterr().out
    assert out.count("NOT current: run python -m meshkit.launcher.envoy --cors-origins https://app.example.com "
                     "--audience 'a b'\n") == 2, out


# -------------------------------------------------------------------------------- NATS

NATS_CONFIGS = {DEPLOY / "nats" / "nats.conf": {"SERVER_NAME": "nats-1"},
                DEPLOY / "k8s" / "nats.conf": {"POD_NAME": "nats-0"}}


def _nats_test(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(infra.nats_server_binary()), "-t", "-c", str(path)], capture_output=True,
                          text=True, env=env, timeout=30)


@pytest.mark.parametrize("path", list(NATS_CONFIGS), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_nats_config_is_a_jetstream_cluster_that_fsyncs(path: Path, tmp_path: Path) -> None:
    checked = _nats_test(path, NATS_CONFIGS[path])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    text = path.read_text()
    assert re.search(r"^\s*sync_interval: always$", text, re.M)
    routes = re.findall(r"nats-route://([\w.-]+):6222", text)
    assert len(routes) == 3, routes
    # nats-server -t does check: a broken setting is refused.
    broken = tmp_path / "broken.conf"
    broken.write_text(text.replace("sync_interval: always", "sync_interval: sometimes"))
    assert _nats_test(broken, NATS_CONFIGS[path]).returncode != 0


# ----------------------------------------------------------------------------- compose

def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())  # merge keys (<<) resolved


def _module(command: list[str]) -> str | None:
    return command[2] if command[:2] == ["python", "-m"] else None


def test_compose_runs_every_process_with_settings_the_code_reads() -> None:
    services = _compose()["services"]
    modules = {_module(s.get("command", [])) for s in services.values()}
    assert MODULES <= modules, MODULES - modules
    known = known_settings()
    for name, spec in services.items():
        if spec.get("image", "").startswith("stockmesh:") and not name.startswith("nats-"):  # nats-server's own
            unknown = set(spec.get("environment") or {}) - known
            assert not unknown, f"{name}: settings no code reads: {sorted(unknown)}"
        for needed in spec.get("depends_on") or {}:
            assert needed in services, f"{name} depends on a service that does not exist: {needed}"
    # Only Envoy is published.
    assert [n for n, s in services.items() if s.get("ports")] == ["envoy"]
    assert services["envoy"]["command"][:3] == ["envoy", "-c", "/app/deploy/envoy.yaml"]


def test_compose_services_answer_to_envoy_s_names_on_a_three_server_jetstream() -> None:
    services = _compose()["services"]
    for host in envoy.DEPLOY_PORTS.hosts.values():
        assert host in services, f"Envoy sends to {host}, which compose.yaml does not run"
    nats = sorted(n for n, s in services.items() if s.get("command", [None])[0] == "nats-server")
    env = services["ledger-svc"]["environment"]
    assert env["NATS_URL"].split(",") == [f"nats://{n}:4222" for n in nats] and len(nats) == 3
    assert env["JETSTREAM_REPLICAS"] == "3"
    routes = re.findall(r"nats-route://([\w.-]+):6222", (DEPLOY / "nats" / "nats.conf").read_text())
    assert routes == nats
    for name in nats:
        assert services[name]["environment"]["SERVER_NAME"] == name
    order = services["order-svc"]["environment"]
    assert order["BRIDGE_LISTEN"].endswith(":50052") and order["ORDER_OUTBOX_RELAY"] == "external"


# -------------------------------------------------------------------------- Kubernetes

def _kustomized() -> list[dict]:
    """The resources kustomization.yaml lists, in its namespace (what `kubectl kustomize` makes,
    but for the generated ConfigMaps' name suffixes)."""
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    docs = []
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / resource).read_text()):
            if doc:
                if doc["kind"] != "Namespace":
                    doc["metadata"]["namespace"] = kustomization["namespace"]
                docs.append(doc)
    for generated in kustomization["configMapGenerator"]:
        data = {}
        for entry in generated["files"]:
            key, _, source = entry.partition("=")
            data[key] = (DEPLOY / (source or key)).read_text()
        docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": generated["name"], "namespace": kustomization["namespace"]}, "data": data})
    return docs


def _of(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_kubernetes_manifests_pass_the_schemas_strictly() -> None:
    docs = _kustomized()
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "Secret", "Job", "PodDisruptionBudget"} <= \
        {d["kind"] for d in docs}
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    # ... and the validation does refuse a mistake.
    broken = dict(_of(docs, "Deployment")["ledger-svc"])
    broken["spec"] = {**broken["spec"], "replica": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_kubernetes_runs_every_process_with_settings_the_code_reads() -> None:
    docs = _kustomized()
    config = _of(docs, "ConfigMap")["stockmesh-env"]["data"]
    known = known_settings()
    assert not set(config) - known, sorted(set(config) - known)
    pods = {name: d["spec"]["template"]["spec"] for name, d in {**_of(docs, "Deployment"),
                                                                **_of(docs, "StatefulSet")}.items()}
    modules = set()
    for name, pod in pods.items():
        for container in pod["containers"]:
            if container["image"] != "stockmesh" or container["command"][0] != "python":
                continue
            modules.add(_module(container["command"]))
            env = {e["name"] for e in container.get("env", [])}
            assert not env - known, f"{name}: settings no code reads: {sorted(env - known)}"
            assert {"configMapRef": {"name": "stockmesh-env"}} in container["envFrom"]
            # Each process has the database's secret iff it uses PostgreSQL (the engine does not).
            assert ("DATABASE_URL" in env) == (name != "matching-svc"), name
            assert container["readinessProbe"] == {"grpc": {"port": 50051}, "periodSeconds": 5}
            # Liveness asks the health service that says only that the process answers: one that
            # followed the dependencies would restart every pod while NATS is out (round 12).
            assert container["livenessProbe"]["grpc"] == {"port": 50051, "service": LIVENESS}
    assert MODULES <= modules, MODULES - modules


def test_scraped_pods_serve_their_metrics_beyond_loopback(monkeypatch) -> None:
    """Every pod Prometheus is told to scrape (prometheus.io/scrape) and every compose service
    listen for /metrics on all addresses: it was always 127.0.0.1, so a scrape from another pod
    was refused and the consumer-stuck alert could never fire (round 15)."""
    from meshkit import config as settings

    docs = _kustomized()
    env = _of(docs, "ConfigMap")["stockmesh-env"]["data"]
    scraped = [name for name, d in _of(docs, "Deployment").items()
               if d["spec"]["template"]["metadata"].get("annotations", {}).get("prometheus.io/scrape") == "true"]
    assert scraped and env["METRICS_LISTEN"] == "0.0.0.0" and env["METRICS_PORT"] == "9100"
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert compose["x-env"]["METRICS_LISTEN"] == "0.0.0.0"
    monkeypatch.setenv("GRPC_LISTEN", "127.0.0.1:0")
    monkeypatch.setenv("METRICS_LISTEN", "0.0.0.0")
    assert settings.load("test").metrics_host == "0.0.0.0"
    monkeypatch.delenv("METRICS_LISTEN")
    assert settings.load("test").metrics_host == "127.0.0.1"  # stockmesh up: loopback
    # ... and the address is the one /metrics listens on (it was 127.0.0.1 whatever was set).
    from meshkit import server

    listened: list[tuple[int, str]] = []
    monkeypatch.setattr(server, "start_http_server", lambda port, addr: listened.append((port, addr)))
    monkeypatch.setenv("METRICS_LISTEN", "0.0.0.0")
    monkeypatch.setenv("METRICS_PORT", "9100")
    server.start_metrics(settings.load("test"))
    assert listened == [(9100, "0.0.0.0")]


def test_kubernetes_services_answer_to_envoy_s_names_on_a_three_server_jetstream() -> None:
    docs = _kustomized()
    services = _of(docs, "Service")
    for host in envoy.DEPLOY_PORTS.hosts.values():
        assert host in services, f"Envoy sends to {host}, which has no Service"
        assert services[host]["spec"]["clusterIP"] == "None"  # every replica's address for STRICT_DNS
    assert [n for n, s in services.items() if s["spec"].get("type") == "LoadBalancer"] == ["envoy"]
    nats = _of(docs, "StatefulSet")["nats"]
    size = nats["spec"]["replicas"]
    config = _of(docs, "ConfigMap")["stockmesh-env"]["data"]
    assert config["NATS_URL"].split(",") == [f"nats://nats-{i}.nats:4222" for i in range(size)]
    assert config["JETSTREAM_REPLICAS"] == str(size) == "3"
    routes = re.findall(r"nats-route://([\w.-]+):6222", _of(docs, "ConfigMap")["nats-config"]["data"]["nats.conf"])
    assert routes == [f"nats-{i}.nats" for i in range(size)]
    mounted = {v["configMap"]["name"] for v in nats["spec"]["template"]["spec"]["volumes"] if "configMap" in v}
    assert mounted == {"nats-config"}
    envoy_pod = _of(docs, "Deployment")["envoy"]["spec"]["template"]["spec"]
    assert {v["configMap"]["name"] for v in envoy_pod["volumes"] if "configMap" in v} == {"envoy-config"}
    assert envoy_pod["containers"][0]["command"][:3] == ["envoy", "-c", "/etc/envoy/envoy.yaml"]
    # Ready as the load balancer's probe says (docs/operations.md), not merely listening.
    assert envoy_pod["containers"][0]["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "public",
                                                                       "scheme": "HTTPS"}
    # TLS on the public LoadBalancer (round 12: plaintext on port 443), from the secret envoy-tls.
    assert "DownstreamTlsContext" in _of(docs, "ConfigMap")["envoy-config"]["data"]["envoy.yaml"]
    assert {"name": "tls", "secret": {"secretName": "envoy-tls"}} in envoy_pod["volumes"]
    assert {"name": "tls", "mountPath": str(envoy.DEPLOY_TLS.certificate_chain.parent), "readOnly": True} in \
        envoy_pod["containers"][0]["volumeMounts"]


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    """Whether a NetworkPolicy's podSelector (matchLabels, matchExpressions In) selects a pod."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        assert e["operator"] == "In", e  # the only operator the manifests use
        if labels.get(e["key"]) not in e["values"]:
            return False
    return True


def _allowed(policies: list[dict], source: dict[str, str], target: dict[str, str], port: int) -> bool:
    """Whether the namespace's ingress policies let a pod labelled `source` connect to one
    labelled `target` on `port` (no policy selecting the target: allowed, as Kubernetes has it)."""
    selecting = [p for p in policies if _selects(p["spec"]["podSelector"], target)]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            ports = [p["port"] for p in rule.get("ports", [])]
            sources = rule.get("from")
            if (not ports or port in ports) and (sources is None or any(
                    _selects(s["podSelector"], source) for s in sources)):
                return True
    return False


def test_kubernetes_network_policies_let_only_the_mesh_s_own_calls_through() -> None:
    """Round 14 review: the services listen on 0.0.0.0 and trust the identity Envoy forwards;
    HoldService checks no caller. With no NetworkPolicy any pod in the cluster could withdraw as
    any account, capture a hold into its own account, or publish a fill on NATS. Every call the
    mesh makes is allowed (Envoy's upstreams as deploy/envoy.yaml names them, the internal
    addresses, the stores), and a stranger pod reaches nothing but Envoy and the metrics."""
    docs = _kustomized()
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pods = {name: d["spec"]["template"]["metadata"]["labels"]
            for name, d in {**_of(docs, "Deployment"), **_of(docs, "StatefulSet"), **_of(docs, "Job")}.items()}
    stranger = {"app.kubernetes.io/name": "someone-elses-app"}
    config = _of(docs, "ConfigMap")["stockmesh-env"]["data"]
    # Envoy -> each upstream it names (host and port from the rendered deploy config).
    upstreams = re.findall(r"address: ([a-z-]+), port_value: (\d+)", envoy.DEPLOY_CONFIG.read_text())
    assert {host for host, _ in upstreams} >= set(envoy.DEPLOY_PORTS.hosts.values())
    calls = {("envoy", host, int(port)) for host, port in upstreams}
    # The internal addresses: order-svc asks ledger-svc (holds), ledger-svc asks order-svc.
    calls |= {("order-svc", *config["LEDGER_ADDR"].split(":")), ("ledger-svc", *config["ORDER_ADDR"].split(":"))}
    mesh = [n for n in pods if pods[n]["app.kubernetes.io/name"] not in ("envoy", "nats", "postgres", "redis",
                                                                           "migrate")]
    assert set(mesh) == {"ledger-svc", "order-svc", "order-relay", "matching-svc", "quote-svc"}
    # The stores each process uses (round 17: matching-svc had the database's secret and every
    # process a path to PostgreSQL and Redis); a process is given DATABASE_URL iff it uses it.
    stores = {"ledger-svc": {"nats", "postgres"}, "order-svc": {"nats", "postgres", "redis"},
              "order-relay": {"nats", "postgres"}, "matching-svc": {"nats"}, "quote-svc": {"nats", "postgres", "redis"}}
    ports = {"nats": 4222, "postgres": 5432, "redis": 6379}
    deployments = _of(docs, "Deployment")
    for n in mesh:
        [container] = deployments[n]["spec"]["template"]["spec"]["containers"]
        given = {e["name"] for e in container.get("env", [])}
        assert ("DATABASE_URL" in given) == ("postgres" in stores[n]), f"{n}: DATABASE_URL given {given}"
        for store, port in ports.items():
            if store not in stores[n]:
                assert not _allowed(policies, pods[n], pods[store], port), f"{n} reaches {store}, which it never uses"
    calls |= {(n, store, ports[store]) for n in mesh for store in stores[n]}
    calls |= {("migrate", "postgres", 5432), ("nats", "nats", 6222)}
    for source, target, port in sorted(calls):
        assert _allowed(policies, pods[source], pods[target], int(port)), f"{source} -> {target}:{port} is refused"
    # A stranger: Envoy's public port and the metrics only.
    assert _allowed(policies, stranger, pods["envoy"], 8080)
    for target in pods:
        assert _allowed(policies, stranger, pods[target], 9100) or target in ("nats", "postgres", "redis",
                                                                               "migrate", "envoy")
        for port in (50051, 50052, 4222, 6222, 5432, 6379):
            assert not _allowed(policies, stranger, pods[target], port), f"a stranger reaches {target}:{port}"
    # Nor may one service reach another's port that it does not call.
    assert not _allowed(policies, pods["quote-svc"], pods["ledger-svc"], 50051)
    assert not _allowed(policies, pods["order-relay"], pods["ledger-svc"], 50051)
    assert not _allowed(policies, pods["matching-svc"], pods["order-svc"], 50052)


def test_deploy_envoy_config_with_an_identity_provider_s_jwks_url(tmp_path: Path) -> None:
    """--jwks-uri: the keys fetched from the provider over TLS (verified for its name), no JWKS
    file; the rendering passes `envoy --mode validate`. A URL Envoy could not use is refused."""
    config = tmp_path / "envoy.yaml"
    assert envoy.main(["--issuer", "https://id.example.com/", "--jwks-uri",
                       "https://id.example.com/.well-known/jwks.json", "--jwks-cache", "600",
                       "--output", str(config), "--tls-output", str(tmp_path / "tls.yaml")]) == 0
    text = config.read_text()
    assert "local_jwks:" not in text and str(envoy.DEPLOY_JWKS) not in text
    assert 'uri: "https://id.example.com/.well-known/jwks.json"' in text and "cache_duration: 600s" in text
    assert 'socket_address: { address: "id.example.com", port_value: 443 }' in text
    assert 'sni: "id.example.com"' in text and '{ san_type: DNS, matcher: { exact: "id.example.com" } }' in text
    config.write_text(text.replace(f'"{envoy.DEPLOY_DESCRIPTOR}"', f'"{envoy.DESCRIPTOR}"'))
    envoy.validate(config)
    for bad in ("ftp://id.example.com/jwks", "https:///jwks.json"):
        with pytest.raises(SystemExit):
            envoy.main(["--jwks-uri", bad, "--output", str(tmp_path / "bad.yaml"),
                        "--tls-output", str(tmp_path / "bad-tls.yaml")])
    assert not (tmp_path / "bad.yaml").exists()


def test_every_envoy_flushes_its_access_log_as_the_launcher_s_does() -> None:
    """The launcher's Envoy writes its access log out every ACCESS_LOG_FLUSH_MS (Envoy's default:
    ten seconds); the deployments' Envoys are started with the same interval."""
    from meshkit.launcher import envoy

    launched = envoy.argv(Path("envoy.yaml"))
    flag = launched.index("--file-flush-interval-msec")
    assert launched[flag + 1] == str(envoy.ACCESS_LOG_FLUSH_MS)
    for deployed in ("deploy/k8s/envoy.yaml", "deploy/compose.yaml"):
        text = (REPO / deployed).read_text()
        assert f'"--file-flush-interval-msec", "{envoy.ACCESS_LOG_FLUSH_MS}"' in text, deployed
