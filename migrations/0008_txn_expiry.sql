-- hearth schema v8: transaction ids expire.
-- `PUT /send/{type}/{txnId}` idempotency only has to outlive a client's
-- retries (Synapse keeps transaction ids for 30 minutes); hearth keeps them a
-- day (`rooms::txn::expire`), so the table no longer grows forever.
ALTER TABLE txn_ids ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX txn_ids_created ON txn_ids (created_at);
