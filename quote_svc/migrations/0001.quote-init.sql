-- quote_svc owns the `quotes` schema; candles arrive with the market-data work.
CREATE SCHEMA IF NOT EXISTS quotes;
