from matching_svc.bootstrap import bootstrap
from meshkit.server import run

run("matching_svc", bootstrap, needs=("NATS_URL",))
