-- Holds placed before their order is recorded: order_svc's reaper checks each new pending hold
-- against its order once (ListUncheckedHolds / MarkHoldsChecked) and releases those whose order
-- was never recorded. Holds that exist already were placed after their order: checked.
ALTER TABLE ledger.holds ADD COLUMN order_checked boolean NOT NULL DEFAULT true;
ALTER TABLE ledger.holds ALTER COLUMN order_checked SET DEFAULT false;
CREATE INDEX holds_order_unchecked ON ledger.holds (created_at) WHERE NOT order_checked AND status = 'PENDING';
