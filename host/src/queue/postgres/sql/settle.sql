-- Settles tasks in any mix of actions through the `settle` function
-- (migration 5). $1 queue, $2 rows, $3 nonces, $4 task ids, $5 actions,
-- $6 retry times, $7 reasons (same positions), $8 now (ms). Returns the
-- tasks settled, released and dead-lettered.
SELECT applied, released, dead FROM @schema@.settle($1, $2, $3, $4, $5, $6, $7, $8)
