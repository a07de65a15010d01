"""The market simulator: liquidity providers on every listed symbol quoting around a
reference price that moves as a random walk, and takers trading against them, all through
the public order flow (Envoy, order_svc, the engine) with their own funded accounts."""
