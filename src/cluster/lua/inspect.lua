-- inspect: one device mailbox as it stands (after expiring what is due).
-- ARGV: 1 ids kept, 2 device, 3 '1' for the mailbox before any device.
-- Reply: {0} none; or {1, epoch, next seq, generation, owner ('' none), queued per band x4,
-- queued bytes, in flight, ms until removed (-1 attached), close reason ('' attached),
-- evicted, rejected, shed, expired, deduplicated, sent, delivered, acknowledged,
-- redelivered}.

local mb = mbox(ARGV[3] ~= '1' and ARGV[2])
if redis.call('EXISTS', mb.m) == 0 then
  return { 0 }
end
sweep(mb, now_ms())
touch(mb)
local m = redis.call('HMGET', mb.m, 'ep', 'ns', 'g', 'own', 'qb', 'ar', 'ev', 'rj', 'sh',
  'ex', 'dd', 'cs', 'cd', 'ca', 'cr')
local out = { 1, m[1], tonumber(m[2]), tonumber(m[3]), m[4] or '' }
for b = 1, 4 do
  out[#out + 1] = redis.call('LLEN', mb.q[b])
end
out[#out + 1] = tonumber(m[5])
out[#out + 1] = redis.call('LLEN', mb.f)
out[#out + 1] = redis.call('PTTL', mb.m)
out[#out + 1] = m[6] or ''
for i = 7, 15 do
  out[#out + 1] = tonumber(m[i] or 0)
end
return out
