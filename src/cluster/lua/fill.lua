-- fill: the attached session's node takes the most urgent queued messages into the window,
-- after settling an ack. Fenced by the session generation. Safe to repeat: deliveries from
-- seq `next` on that are already in flight (a reply that was lost) come back first.
-- ARGV: 1 ids kept, 2 device, 3 generation, 4 ack up to (0: none), 5 next seq the session
-- expects, 6 most messages to take.
-- Reply: {1} fenced, {2} gone; or {0, acknowledged, queued, next seq, n, (seq, record)...}.

local mb = mbox(ARGV[2])
local refused = fence(mb, tonumber(ARGV[3]))
if refused then
  return refused
end
sweep(mb, now_ms())
local meta = redis.call('HMGET', mb.m, 'ns', 'win')
local ns, window = tonumber(meta[1]), tonumber(meta[2])
local acked = 0
local upto = tonumber(ARGV[4])
if upto > 0 then
  acked = settle(mb, math.min(upto, ns - 1))
end
local out = {}
local next = tonumber(ARGV[5])
local most = tonumber(ARGV[6])
if next < ns then
  for _, e in ipairs(redis.call('LRANGE', mb.f, 0, -1)) do
    local seq, tag = string.match(e, '^(%d+):(%d+)$')
    seq = tonumber(seq)
    if seq >= next and #out < 2 * most then
      local rec = redis.call('HGET', mb.b, tag)
      if rec then
        out[#out + 1] = seq
        out[#out + 1] = rec
      end
    end
  end
end
fill(mb, math.min(most - #out / 2, window - redis.call('LLEN', mb.f)), out)
local after = redis.call('HMGET', mb.m, 'qn', 'ns')
local reply = { 0, acked, tonumber(after[1]), tonumber(after[2]), #out / 2 }
for _, v in ipairs(out) do
  reply[#reply + 1] = v
end
return reply
