-- Settle: ARGV = now, dead_capacity, then per leased batch: batch, n, and
-- n settlements of three fields: id, op, unique key. Op is `a` ack, `k`
-- ack freeing the key, `d<reason>` dead-letter, `D<reason>` dead-letter
-- freeing the key, `r<at ms>` retry, `l` release. Returns {applied, lost}.
--
-- When a batch is acked whole (the common case) its record is deleted
-- without being unpacked; otherwise its elements are matched by id, and those
-- not settled stay in the record.
local now, deadcap = ARGV[1], tonumber(ARGV[2])
local applied, lost = 0, 0
local gone, uniq, delayed, back, dead = {}, {}, {}, {}, {}
local b = 3
while b <= #ARGV do
  local batch, n = ARGV[b], tonumber(ARGV[b + 1])
  local first = b + 2
  b = first + 3 * n
  if not redis.call('ZSCORE', K.leased, batch) then
    lost = lost + n
  else
    local whole = count(batch) == n
    if whole then
      for j = first, b - 1, 3 do
        local c = string.byte(ARGV[j + 1], 1)
        if c ~= 97 and c ~= 107 then whole = false break end -- a, k
      end
    end
    if whole then
      for j = first, b - 1, 3 do
        if string.byte(ARGV[j + 1], 1) == 107 then uniq[#uniq + 1] = ARGV[j + 2] end
      end
      applied = applied + n
      drop(batch)
      unhold(batch)
      gone[#gone + 1] = batch
    else
      local els = elements(batch)
      local at, taken = {}, {}
      for i, e in ipairs(els) do at[idof(e)] = i end
      for j = first, b - 1, 3 do
        local i = at[ARGV[j]]
        if i and not taken[i] then
          taken[i] = true
          applied = applied + 1
          local e, op = els[i], ARGV[j + 1]
          local c = string.byte(op, 1)
          if c == 107 or c == 68 then uniq[#uniq + 1] = ARGV[j + 2] end -- k, D
          if c == 114 then -- r: this delivery counts
            delayed[#delayed + 1] = string.sub(op, 2)
            delayed[#delayed + 1] = bump(e)
          elseif c == 108 then -- l: it does not
            back[#back + 1] = e
          elseif c == 100 or c == 68 then -- d, D
            local reason = string.sub(op, 2)
            dead[#dead + 1] = idof(e) -- scored by id, for paging (admin.rs)
            dead[#dead + 1] = now .. ':' .. #reason .. ':' .. reason .. e
          end
        else
          lost = lost + 1
        end
      end
      local rest = {}
      for i, e in ipairs(els) do
        if not taken[i] then rest[#rest + 1] = e end
      end
      if #rest > 0 then
        put(batch, rest)
      else
        drop(batch)
        unhold(batch)
        gone[#gone + 1] = batch
      end
    end
  end
end
if applied > 0 then redis.call('DECRBY', K.held, applied) end
chunked('ZREM', K.leased, gone)
chunked('HDEL', K.unique, uniq)
chunked('ZADD', K.delayed, delayed)
-- Released tasks go back to the head of the line in their order: LPUSH
-- prepends one at a time, so push them last first.
local rev = {}
for i = #back, 1, -1 do rev[#rev + 1] = back[i] end
chunked('LPUSH', K.ready, rev)
if #back > 0 then redis.call('PUBLISH', WAKE, '') end
if #dead > 0 then
  chunked('ZADD', K.deadz, dead)
  local over = redis.call('ZCARD', K.deadz) - deadcap
  if over > 0 then redis.call('ZREMRANGEBYRANK', K.deadz, 0, over - 1) end
end
return {applied, lost}
