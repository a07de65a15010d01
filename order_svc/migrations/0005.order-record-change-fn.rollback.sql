DROP FUNCTION orders.record_change(text, uuid, text, bigint, numeric, text, text, uuid, timestamptz, text, numeric,
                                   bigint, timestamptz, text, text, text);
