-- Live tasks of queue $1. Run after `lock.sql` in the same transaction, as
-- its own statement: its snapshot must be taken after the lock is held.
SELECT count(*) FROM @schema@.tasks WHERE queue = $1
