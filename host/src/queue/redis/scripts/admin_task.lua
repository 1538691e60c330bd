-- One task by id: ARGV = op (cancel|run), now, id. Cancel deletes a
-- pending or delayed task and frees its unique key; run makes a delayed
-- task visible now. Returns 'ok', 'leased' (held under a valid lease:
-- refused) or 'none' (no such task here; for run, also a visible one is 'ok').
local pre = KEYS[1]
local op, now, id = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local function free(e)
  local key = keyof(e)
  if key and redis.call('HGET', pre .. 'unique', key) == idof(e) then
    redis.call('HDEL', pre .. 'unique', key)
  end
end
local e = in_list(pre .. 'ready', id)
if e then
  if op == 'cancel' then
    redis.call('LREM', pre .. 'ready', 1, e)
    free(e)
  end
  return 'ok'
end
local at
e, at = in_zset(pre .. 'delayed', id)
if e then
  if op == 'cancel' then
    redis.call('ZREM', pre .. 'delayed', e)
    free(e)
  elseif at > now then
    redis.call('ZADD', pre .. 'delayed', ARGV[2], e)
    redis.call('PUBLISH', pre .. 'wake', '')
  end
  return 'ok'
end
local l
e, l, at = in_leases(pre, id)
if not e then return 'none' end
if at > now then return 'leased' end
-- An expired lease is pending: its holder's settlement will find it gone.
if op == 'cancel' then
  redis.call('LREM', l, 1, e)
  redis.call('DECRBY', pre .. 'held', 1)
  free(e)
end
return 'ok'
