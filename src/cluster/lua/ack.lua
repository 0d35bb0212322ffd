-- ack: the attached session acknowledges every delivery up to a seq (cumulative). Fenced.
-- ARGV: 1 ids kept, 2 device, 3 generation, 4 up to.
-- Reply: {1} fenced, {2} gone; or {0, acknowledged, in flight, queued}.

local mb = mbox(ARGV[2])
local refused = fence(mb, tonumber(ARGV[3]))
if refused then
  return refused
end
sweep(mb, now_ms())
local ns = tonumber(redis.call('HGET', mb.m, 'ns'))
local acked = settle(mb, math.min(tonumber(ARGV[4]), ns - 1))
return { 0, acked, redis.call('LLEN', mb.f), tonumber(redis.call('HGET', mb.m, 'qn')) }
