from ledger_svc.bootstrap import bootstrap
from meshkit.server import run

run("ledger_svc", bootstrap, needs=("DATABASE_URL", "NATS_URL"))
