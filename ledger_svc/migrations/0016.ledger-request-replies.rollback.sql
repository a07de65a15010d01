DROP TABLE IF EXISTS ledger.request_replies;
