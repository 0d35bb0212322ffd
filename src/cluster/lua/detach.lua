-- detach: the attached session closed. Fenced. Settles its last ack, then the mailbox and
-- every key of it live for the away lifetime of the close reason.
-- ARGV: 1 ids kept, 2 device, 3 generation, 4 ack up to (0: none), 5 reason (0 normal,
-- 1 abnormal), 6 lifetime after a normal close ms, 7 after an abnormal one ms.
-- Reply: {1} fenced, {2} gone; or {0, acknowledged, in flight, queued}.

local mb = mbox(ARGV[2])
local refused = fence(mb, tonumber(ARGV[3]))
if refused then
  return refused
end
local now = now_ms()
sweep(mb, now)
local acked = 0
local upto = tonumber(ARGV[4])
if upto > 0 then
  local ns = tonumber(redis.call('HGET', mb.m, 'ns'))
  acked = settle(mb, math.min(upto, ns - 1))
end
local abnormal = ARGV[5] == '1'
local keep = tonumber(abnormal and ARGV[7] or ARGV[6])
redis.call('HDEL', mb.m, 'own', 'win')
redis.call('HSET', mb.m, 'aw', s(now + keep), 'as', s(now), 'ar', abnormal and 'abnormal' or 'normal')
touch(mb)
user_ttl(devices())
return { 0, acked, redis.call('LLEN', mb.f), tonumber(redis.call('HGET', mb.m, 'qn')) }
