DROP TABLE IF EXISTS quotes.imported_candles;
DROP TABLE IF EXISTS quotes.candles;
DROP TABLE IF EXISTS quotes.trades;
