-- Reclaim: ARGV = host, budget elements, budget bytes. The host is known
-- to be gone (its heartbeat expired): every batch it leased on this queue
-- goes back to `ready` now, as an expiry would (the delivery counts), and
-- leaves `leased`, so the old holder can neither renew nor settle it.
-- A batch too big for this call's budget moves in parts; what is left of
-- it is marked expired (score 0), so its holder cannot renew it meanwhile.
-- Returns {moved, batches left}; call again while batches are left.
local pre = KEYS[1]
local hk = pre .. 'h:' .. ARGV[1]
budget(tonumber(ARGV[2]), tonumber(ARGV[3]))
local moved, left = 0, 0
for _, batch in ipairs(redis.call('SMEMBERS', hk)) do
  if not redis.call('ZSCORE', pre .. 'leased', batch) then
    -- Settled or reclaimed by expiry already.
    redis.call('SREM', hk, batch)
  elseif span() == 0 then
    left = left + 1
  else
    local l = pre .. 'l:' .. batch
    local els, all = take(l)
    if #els > 0 then
      local back = {}
      for i, e in ipairs(els) do back[i] = bump(e) end
      chunked('RPUSH', pre .. 'ready', back)
      moved = moved + #els
    end
    if all then
      redis.call('DEL', l)
      redis.call('ZREM', pre .. 'leased', batch)
      redis.call('SREM', hk, batch)
    else
      if #els > 0 then redis.call('LTRIM', l, #els, -1) end
      redis.call('ZADD', pre .. 'leased', 0, batch)
      left = left + 1
    end
  end
end
if moved > 0 then
  redis.call('DECRBY', pre .. 'held', moved)
  redis.call('PUBLISH', pre .. 'wake', '')
end
return {moved, left}
