"""The launcher behind `stockmesh up`: development keys, infrastructure (PostgreSQL, Redis,
NATS JetStream), the four services and Envoy as supervised child processes.

    keys.py        ES256 key pair, JWKS for Envoy, development tokens
    infra.py       use or start PostgreSQL, Redis and the pinned nats-server
    supervisor.py  child processes: logs, restart with backoff, die-with-parent, clean stop
    envoy.py       render envoy/envoy.yaml.tmpl, validate it, read cluster health
    mesh.py        the `up` sequence and mesh.json
"""
