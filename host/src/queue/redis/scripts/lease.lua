-- Lease: ARGV = now, until, max, nonce, budget elements, budget bytes.
-- First moves due retries and expired batches back to `ready` (at most the
-- budget per call; a big expired batch moves in parts over several calls),
-- then hands out up to `max` elements (again at most the budget) as batch
-- `<n>.<nonce>`, where n counts batches and the nonce is the caller's
-- random number: a batch number that comes back after Redis lost writes
-- never names another holder's batch. A nonce `<random>@<host>` names
-- the registered host taking the lease: the batch is listed in `holders`
-- under that host, which `reclaim.lua` empties when the host is gone.
-- Returns {} or {batch, {element, ...}}.
local now, untl, max, nonce = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local cap_n, cap_b = tonumber(ARGV[5]), tonumber(ARGV[6])
budget(cap_n, cap_b)
local ready = K.ready
-- Due retries, oldest first; each part read is removed before the next.
while true do
  local n = span()
  if n == 0 then break end
  local part = redis.call('ZRANGEBYSCORE', K.delayed, '-inf', now, 'LIMIT', 0, n)
  local due = {}
  for _, e in ipairs(part) do
    if not fits(e) then break end
    due[#due + 1] = e
  end
  if #due > 0 then
    chunked('ZREM', K.delayed, due)
    chunked('RPUSH', ready, due)
  end
  if #due < n then break end
end
-- Expired batches, earliest expiry first.
local moved = 0
while span() > 0 do
  local expired = redis.call('ZRANGEBYSCORE', K.leased, '-inf', now, 'LIMIT', 0, 100)
  if #expired == 0 then break end
  local gone = {}
  for _, batch in ipairs(expired) do
    local els, all = take_batch(batch)
    if #els > 0 then
      -- The expired delivery counts as an attempt.
      local back = {}
      for i, e in ipairs(els) do back[i] = bump(e) end
      chunked('RPUSH', ready, back)
      moved = moved + #els
    end
    if not all then break end -- out of budget: the rest waits for the next call
    unhold(batch)
    gone[#gone + 1] = batch
  end
  chunked('ZREM', K.leased, gone)
  if #gone < #expired then break end
end
if moved > 0 then redis.call('DECRBY', K.held, moved) end
-- The hand-out has a budget of its own, so recovery never starves it.
budget(math.min(max, cap_n), cap_b)
local got = take(ready)
if #got == 0 then return {} end
redis.call('LTRIM', ready, #got, -1)
local batch = redis.call('INCR', K.bseq) .. '.' .. nonce
put(batch, got)
redis.call('ZADD', K.leased, untl, batch)
hold(batch)
redis.call('INCRBY', K.held, #got)
return {batch, got}
