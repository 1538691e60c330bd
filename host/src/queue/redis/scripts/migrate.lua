-- Migrate a queue's leased batches from layout 1 to 2: KEYS = batches,
-- sizes, holders, then per batch of ARGV its layout-1 list `l:<batch>`
-- and its holder's layout-1 set `h:<host>` (the list again for a batch
-- without a holder). Each list becomes one MessagePack array in `batches`
-- (its count in `sizes`), and the holder's entry moves to `holders`. A
-- batch moved already keeps its record. Returns how many batches moved.
local moved = 0
for i, batch in ipairs(ARGV) do
  local l, h = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  local els = redis.call('LRANGE', l, 0, -1)
  if #els > 0 and redis.call('HEXISTS', KEYS[1], batch) == 0 then
    redis.call('HSET', KEYS[1], batch, cmsgpack.pack(els))
    redis.call('HSET', KEYS[2], batch, #els)
    moved = moved + 1
  end
  redis.call('DEL', l)
  local at = string.find(batch, '@', 1, true)
  if at then
    redis.call('SREM', h, batch)
    redis.call('ZADD', KEYS[3], 0, string.sub(batch, at + 1) .. '\0' .. batch)
  end
end
return moved
