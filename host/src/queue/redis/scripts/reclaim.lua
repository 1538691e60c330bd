-- Reclaim: ARGV = host, budget elements, budget bytes. The host is known
-- to be gone (its heartbeat expired): every batch it leased on this queue
-- goes back to `ready` now, as an expiry would (the delivery counts), and
-- leaves `leased`, so the old holder can neither renew nor settle it.
-- A batch too big for this call's budget moves in parts; what is left of
-- it is marked expired (score 0), so its holder cannot renew it meanwhile.
-- Returns {moved, batches left}; call again while batches are left.
local host = ARGV[1]
budget(tonumber(ARGV[2]), tonumber(ARGV[3]))
local moved, left = 0, 0
-- The host's entries `<host>\0<batch>` sort together in `holders`.
local from, to = '[' .. host .. '\0', '(' .. host .. '\1'
for _, m in ipairs(redis.call('ZRANGEBYLEX', K.holders, from, to)) do
  local batch = string.sub(m, #host + 2)
  if not redis.call('ZSCORE', K.leased, batch) then
    -- Settled or reclaimed by expiry already.
    redis.call('ZREM', K.holders, m)
  elseif span() == 0 then
    left = left + 1
  else
    local els, all = take_batch(batch)
    if #els > 0 then
      local back = {}
      for i, e in ipairs(els) do back[i] = bump(e) end
      chunked('RPUSH', K.ready, back)
      moved = moved + #els
    end
    if all then
      redis.call('ZREM', K.leased, batch)
      redis.call('ZREM', K.holders, m)
    else
      redis.call('ZADD', K.leased, 0, batch)
      left = left + 1
    end
  end
end
if moved > 0 then
  redis.call('DECRBY', K.held, moved)
  redis.call('PUBLISH', WAKE, '')
end
return {moved, left}
