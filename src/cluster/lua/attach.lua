-- attach: a session of a device connects on a node, with or without a resume point.
-- ARGV: 1 ids kept, 2 device, 3 node, 4 resume epoch ('' none), 5 resume last seq,
-- 6 epoch for a new mailbox, 7 window, 8 most messages to fill now, 9 max devices per user.
-- Reply: {3} too many devices, all attached; or {0, epoch, generation, recovered (0/1),
-- previous owner ('' none), device evicted since its last attach (0/1), next seq, queued,
-- evicted, rejected, shed, expired, deduplicated, n ids, ids..., n redelivered,
-- (seq, record)..., n filled, (seq, record)...}.

local dev = ARGV[2]
local node = ARGV[3]
local window = tonumber(ARGV[7])
local now = now_ms()
local live = devices()
local mb = mbox(dev)
local existed = redis.call('EXISTS', mb.m) == 1
local reset = 0

if not existed then
  if redis.call('SREM', GONE, dev) == 1 then
    reset = 1
  end
  if #live >= tonumber(ARGV[9]) then
    -- A new device evicts the one away longest; with every device attached it is refused.
    local victim, since = nil, nil
    for _, d in ipairs(live) do
      local meta = redis.call('HMGET', mbox(d).m, 'own', 'as')
      if not meta[1] and (not since or tonumber(meta[2]) < since) then
        victim, since = d, tonumber(meta[2])
      end
    end
    if not victim then
      return { 3 }
    end
    redis.call('DEL', unpack(mbox(victim).all))
    redis.call('SREM', DEVS, victim)
    redis.call('SADD', GONE, victim)
  end
  local pend = mbox(false)
  if #live == 0 and redis.call('EXISTS', pend.m) == 1 then
    -- The first device takes over what waited for it.
    for i, k in ipairs(pend.all) do
      if redis.call('EXISTS', k) == 1 then
        redis.call('RENAME', k, mb.all[i])
      end
    end
    existed = true
  else
    redis.call('HSET', mb.m, 'ep', ARGV[6], 'ns', 1, 'nt', 0, 'g', 0, 'qn', 0, 'qb', 0,
      'b0', 0, 'b1', 0, 'b2', 0, 'b3', 0)
  end
  redis.call('SADD', DEVS, dev)
end

local prev = redis.call('HGET', mb.m, 'own') or ''
local gen = redis.call('HINCRBY', mb.m, 'g', 1)
redis.call('HSET', mb.m, 'own', node, 'win', window)
redis.call('HDEL', mb.m, 'aw', 'as', 'ar')
for _, k in ipairs(mb.all) do
  redis.call('PERSIST', k)
end
sweep(mb, now)

local meta = redis.call('HMGET', mb.m, 'ep', 'ns')
local epoch, ns = meta[1], tonumber(meta[2])
local recovered = 0
local last = tonumber(ARGV[5])
if existed and ARGV[4] == epoch and last < ns then
  settle(mb, last)
  recovered = 1
end

-- Everything still in flight goes again with its seq; expired entries held window slots
-- for the previous session only.
local entries = redis.call('LRANGE', mb.f, 0, -1)
local kept, again = {}, {}
for _, e in ipairs(entries) do
  local seq, tag = string.match(e, '^(%d+):(%d+)$')
  local rec = redis.call('HGET', mb.b, tag)
  if rec then
    kept[#kept + 1] = e
    again[#again + 1] = tonumber(seq)
    again[#again + 1] = rec
  end
end
if #kept ~= #entries then
  redis.call('DEL', mb.f)
  for i = 1, #kept, 1000 do
    redis.call('RPUSH', mb.f, unpack(kept, i, math.min(i + 999, #kept)))
  end
end
if #kept > 0 then
  redis.call('HINCRBY', mb.m, 'cr', #kept)
end

local filled = {}
fill(mb, math.min(tonumber(ARGV[8]), window - #kept), filled)

local counts = redis.call('HMGET', mb.m, 'ns', 'qn', 'ev', 'rj', 'sh', 'ex', 'dd')
redis.call('HDEL', mb.m, 'ev', 'rj', 'sh', 'ex', 'dd')
local ids = redis.call('LRANGE', mb.x, 0, -1)
redis.call('DEL', mb.x)
user_ttl(devices())

local out = { 0, epoch, gen, recovered, prev, reset }
for i = 1, 7 do
  out[#out + 1] = tonumber(counts[i] or 0)
end
out[#out + 1] = #ids
for _, id in ipairs(ids) do
  out[#out + 1] = id
end
out[#out + 1] = #kept
for _, v in ipairs(again) do
  out[#out + 1] = v
end
out[#out + 1] = #filled / 2
for _, v in ipairs(filled) do
  out[#out + 1] = v
end
return out
