DROP TABLE IF EXISTS orders.claims;
