-- Renew: ARGV = now, until, then batches. Extends those still held and not
-- expired (an expired batch may be partly reclaimed already) and returns
-- a 1 (held) or 0 per batch.
local now = tonumber(ARGV[1])
local batches = {}
for i = 3, #ARGV do batches[#batches + 1] = ARGV[i] end
local held = mget('ZMSCORE', K.leased, batches)
local z, out = {}, {}
for i, b in ipairs(batches) do
  local ok = held[i] and tonumber(held[i]) > now
  out[i] = ok and 1 or 0
  if ok then
    z[#z + 1] = ARGV[2]
    z[#z + 1] = b
  end
end
chunked('ZADD', K.leased, z)
return out
