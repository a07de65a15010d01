DROP FUNCTION ledger.place_hold_account_first(text, text, text, text, numeric);
DROP FUNCTION ledger.lock_accounts(text[]);
