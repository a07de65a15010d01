-- depends: 0001.quote-init
-- Candles (OHLCV) built from the engine's trades, and candles imported from history.
--
-- quotes.trades      one row per trade market-data event, keyed by (symbol, md sequence): the
--                    record that makes applying an MD message idempotent (a repeat inserts
--                    nothing, so it adds nothing to any candle).
-- quotes.candles     traded candles maintained at three resolutions: 1 s (the base), 60 s and
--                    3600 s. Each batch of new trades is folded into all three with a merge that
--                    is commutative (open/close chosen by (time, md sequence) keys, sums added),
--                    so replicas may apply batches in any order. 5m/15m come from 60 s rows,
--                    1d from 3600 s rows grouped by trading day, at query time.
-- quotes.imported_candles  historical candles from `stockmesh candles import`, at the width
--                    they were imported with; unique per (symbol, width, start).

CREATE TABLE quotes.trades (
    symbol     text        NOT NULL,
    md_seq     bigint      NOT NULL,
    traded_at  timestamptz NOT NULL,
    price      numeric(18, 4) NOT NULL CHECK (price > 0),
    quantity   bigint      NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (symbol, md_seq)
);

CREATE TABLE quotes.candles (
    symbol      text        NOT NULL,
    width_s     integer     NOT NULL CHECK (width_s IN (1, 60, 3600)),
    start_time  timestamptz NOT NULL,
    open        numeric(18, 4) NOT NULL,
    high        numeric(18, 4) NOT NULL,
    low         numeric(18, 4) NOT NULL,
    close       numeric(18, 4) NOT NULL,
    volume      bigint      NOT NULL,
    trade_count bigint      NOT NULL,
    -- Σ price × quantity: vwap = pv / volume, exact.
    pv          numeric(30, 4) NOT NULL,
    -- The first and last trade of the candle, as (time, md sequence), for the merge.
    first_at    timestamptz NOT NULL,
    first_seq   bigint      NOT NULL,
    last_at     timestamptz NOT NULL,
    last_seq    bigint      NOT NULL,
    PRIMARY KEY (symbol, width_s, start_time)
);

CREATE TABLE quotes.imported_candles (
    symbol      text        NOT NULL,
    width_s     integer     NOT NULL CHECK (width_s IN (1, 60, 300, 900, 3600, 86400)),
    start_time  timestamptz NOT NULL,
    open        numeric(18, 4) NOT NULL,
    high        numeric(18, 4) NOT NULL,
    low         numeric(18, 4) NOT NULL,
    close       numeric(18, 4) NOT NULL,
    volume      bigint      NOT NULL CHECK (volume >= 0),
    -- Optional columns of the file: NULL when the file did not say.
    trade_count bigint      CHECK (trade_count >= 0),
    vwap        numeric(18, 6),
    imported_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, width_s, start_time),
    CHECK (low <= open AND low <= close AND open <= high AND close <= high)
);
