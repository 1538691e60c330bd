-- Live tasks of queue $1. Run after `lock.sql` in the same transaction, as
-- its own statement: its snapshot must be taken after the lock is held.
SELECT coalesce(sum(cardinality(ids) - lo), 0)::bigint FROM @schema@.tasks WHERE queue = $1
