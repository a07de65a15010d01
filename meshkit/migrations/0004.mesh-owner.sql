-- depends: 0003.audit-heads-forward-only
-- The namespace of the mesh whose data this database holds. A namespace keeps NATS streams,
-- subjects and Redis keys apart, not rows: two meshes of different namespaces on one database
-- would share its ledger, orders, audit trail and candles, and neither's engines would ever see
-- the other's orders (round 23). `stockmesh up` claims its database for its namespace at its
-- first start (the first claim stays) and refuses one claimed by another (meshkit.launcher.owner).
CREATE SCHEMA IF NOT EXISTS mesh;
CREATE TABLE mesh.owner (
    one        boolean PRIMARY KEY DEFAULT true CHECK (one),  -- a single row
    namespace  text NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now()
);
