-- Renew: ARGV = until, then batch numbers. Extends those still held and
-- returns a 1 (held) or 0 per batch.
local pre = KEYS[1]
local batches = {}
for i = 2, #ARGV do batches[#batches + 1] = ARGV[i] end
local held = mget('ZMSCORE', pre .. 'leased', batches)
local z, out = {}, {}
for i, b in ipairs(batches) do
  out[i] = held[i] and 1 or 0
  if held[i] then
    z[#z + 1] = ARGV[1]
    z[#z + 1] = b
  end
end
chunked('ZADD', pre .. 'leased', z)
return out
