-- txn_ids.created_at is only read by the hourly expiry (`DELETE … WHERE
-- created_at < now() - …`), and rows arrive in time order: a BRIN index
-- (a few pages per GB) serves that scan, where the btree cost an index
-- insertion per durable send (bench/RESULTS.md "durable send", cut 5).
DROP INDEX IF EXISTS txn_ids_created;
CREATE INDEX IF NOT EXISTS txn_ids_created_brin ON txn_ids USING brin (created_at)
    WITH (autosummarize = on);
