from meshkit.server import run
from order_svc.bootstrap import bootstrap

run("order_svc", bootstrap, needs=("DATABASE_URL", "NATS_URL", "LEDGER_ADDR"))
