from meshkit.server import run
from quote_svc.bootstrap import bootstrap

run("quote_svc", bootstrap, needs=("DATABASE_URL", "NATS_URL", "REDIS_URL"))
