-- Migration 2: operator actions (`admin.rs`). Dead letters are paged by
-- task id; `paused` names the queues an operator paused (hosts stop
-- leasing from them).
CREATE INDEX dead_by_queue_id ON @schema@.dead (queue, id);
CREATE TABLE @schema@.paused (queue text PRIMARY KEY);
