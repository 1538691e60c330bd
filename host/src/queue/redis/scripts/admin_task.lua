-- One task by id: ARGV = op (cancel|run), now, id. Cancel deletes a
-- pending or delayed task and frees its unique key; run makes a delayed
-- task visible now. Returns 'ok', 'leased' (held under a valid lease:
-- refused) or 'none' (no such task here; for run, also a visible one is 'ok').
local op, now, id = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local function free(e)
  local key = keyof(e)
  if key and redis.call('HGET', K.unique, key) == idof(e) then
    redis.call('HDEL', K.unique, key)
  end
end
local e = in_list(K.ready, id)
if e then
  if op == 'cancel' then
    redis.call('LREM', K.ready, 1, e)
    free(e)
  end
  return 'ok'
end
local at
e, at = in_zset(K.delayed, id)
if e then
  if op == 'cancel' then
    redis.call('ZREM', K.delayed, e)
    free(e)
  elseif at > now then
    redis.call('ZADD', K.delayed, ARGV[2], e)
    redis.call('PUBLISH', WAKE, '')
  end
  return 'ok'
end
local batch, els
e, batch, els, at = in_leases(id)
if not e then return 'none' end
if at > now then return 'leased' end
-- An expired lease is pending: its holder's settlement will find it gone.
if op == 'cancel' then
  local rest = {}
  for _, x in ipairs(els) do
    if x ~= e then rest[#rest + 1] = x end
  end
  if #rest > 0 then
    put(batch, rest)
  else
    drop(batch)
    redis.call('ZREM', K.leased, batch)
    unhold(batch)
  end
  redis.call('DECRBY', K.held, 1)
  free(e)
end
return 'ok'
