-- enqueue: one message to every device mailbox of a user, deduplicated once per user.
-- ARGV: 1 ids kept, 2 priority (0..3), 3 ttl ms (0: none), 4 id ('' none), 5 payload,
-- 6 fingerprint ('' none), 7 dedup window ms, 8 dedup entries kept per user,
-- 9 max messages, 10 max bytes, 11 overflow (0 drop-oldest, 1 drop-newest, 2 reject),
-- 12 away lifetime of a new mailbox ms, 13 epoch for a new mailbox.
-- Reply: {1} a duplicate; or {0, n, then per device mailbox: device (0 for the mailbox
-- before any device), code (0 queued, 1 mailbox full, 2 dropped, 3 larger than mailbox),
-- evicted, owner node ('' none), ready (1: within the owner's window room)}.

local prio = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local id = ARGV[4]
local payload = ARGV[5]
local fp = ARGV[6]
local DEDUP = B .. ':dedup'

local now = now_ms()
local live = devices()
local pend = mbox(false)
local has_pend = redis.call('EXISTS', pend.m) == 1

if fp ~= '' then
  redis.call('ZREMRANGEBYSCORE', DEDUP, '-inf', s(now))
  if redis.call('ZSCORE', DEDUP, fp) then
    for _, d in ipairs(live) do
      redis.call('HINCRBY', mbox(d).m, 'dd', 1)
    end
    if has_pend then
      redis.call('HINCRBY', pend.m, 'dd', 1)
    end
    return { 1 }
  end
end

local targets = live
if #live == 0 then
  -- Before any device: one mailbox, which the first device to attach takes over. It is
  -- away from its creation, as after a clean close.
  if not has_pend then
    local aw = now + tonumber(ARGV[12])
    redis.call('HSET', pend.m, 'ep', ARGV[13], 'ns', 1, 'nt', 0, 'g', 0, 'qn', 0, 'qb', 0,
      'b0', 0, 'b1', 0, 'b2', 0, 'b3', 0, 'aw', s(aw), 'as', s(now), 'ar', 'created')
  end
  targets = { false }
end

local lim = redis.call('HMGET', B .. ':lim', 'm', 'b', 'p')
local maxm = tonumber(lim[1] or ARGV[9])
local maxb = tonumber(lim[2] or ARGV[10])
local policy = tonumber(lim[3] or ARGV[11])

local dl = nil
if ttl > 0 then
  dl = now + ttl
end
local rec = prio .. ',' .. (dl and s(dl) or '') .. ',' .. #id .. ';' .. id .. payload
local cost = #payload

-- Admits the message into one device mailbox under its caps and overflow policy.
-- Returns the code and how many messages DropOldest evicted for it.
local function admit(mb)
  if cost > maxb then
    loss(mb, 'rj', id)
    return 3, 0
  end
  local meta = redis.call('HMGET', mb.m, 'qn', 'qb', 'own', 'win')
  local qn, qb = tonumber(meta[1]), tonumber(meta[2])
  -- Messages an attached session's window has room for go into it at the owner's next fill;
  -- the embedded engine would have delivered them at once, so they do not count against
  -- the message cap.
  local slack = 0
  if meta[3] then
    slack = math.max(0, tonumber(meta[4]) - redis.call('LLEN', mb.f))
  end
  local function fits()
    return qn < maxm + slack and qb + cost <= maxb
  end
  local evicted = 0
  if not fits() then
    if policy == 2 then
      loss(mb, 'rj', id)
      return 1, 0
    end
    if policy == 1 then
      loss(mb, 'ev', id)
      return 2, 0
    end
    -- DropOldest evicts only from bands no more urgent than the newcomer; if evicting all
    -- of those would not make room, nothing is evicted and the newcomer is dropped.
    local n, bytes = 0, 0
    for b = prio, 3 do
      n = n + redis.call('LLEN', mb.q[b + 1])
      bytes = bytes + tonumber(redis.call('HGET', mb.m, 'b' .. b))
    end
    if qn - n >= maxm + slack or qb - bytes + cost > maxb then
      loss(mb, 'ev', id)
      return 2, 0
    end
    local b = 3
    while not fits() and b >= prio do
      local tag = redis.call('LPOP', mb.q[b + 1])
      if not tag then
        b = b - 1
      else
        local old = redis.call('HGET', mb.b, tag)
        redis.call('HDEL', mb.b, tag)
        redis.call('ZREM', mb.t, 'q' .. b .. ':' .. tag)
        local _, _, oid, ocost = parse(old)
        qn = qn - 1
        qb = qb - ocost
        redis.call('HINCRBY', mb.m, 'b' .. b, s(-ocost))
        loss(mb, 'ev', oid)
        evicted = evicted + 1
      end
    end
    if not fits() then
      loss(mb, 'ev', id)
      return 2, evicted
    end
  end
  local tag = redis.call('HINCRBY', mb.m, 'nt', 1)
  redis.call('HSET', mb.b, tag, rec)
  redis.call('RPUSH', mb.q[prio + 1], tag)
  redis.call('HSET', mb.m, 'qn', s(qn + 1), 'qb', s(qb + cost))
  redis.call('HINCRBY', mb.m, 'b' .. prio, s(cost))
  if dl then
    redis.call('ZADD', mb.t, s(dl), 'q' .. prio .. ':' .. tag)
  end
  return 0, evicted
end

local out = { 0, #targets }
local kept = false
for _, d in ipairs(targets) do
  local mb = mbox(d)
  sweep(mb, now)
  local code, evicted = admit(mb)
  kept = kept or code == 0
  redis.call('HINCRBY', mb.m, 'cs', 1)
  local meta = redis.call('HMGET', mb.m, 'own', 'win', 'qn')
  local ready = 0
  if code == 0 and meta[1]
      and tonumber(meta[3]) <= tonumber(meta[2]) - redis.call('LLEN', mb.f) then
    ready = 1
  end
  touch(mb)
  out[#out + 1] = d == false and 0 or d
  out[#out + 1] = code
  out[#out + 1] = evicted
  out[#out + 1] = meta[1] or ''
  out[#out + 1] = ready
end

if kept and fp ~= '' then
  local window = tonumber(ARGV[7])
  redis.call('ZADD', DEDUP, s(now + window), fp)
  local over = redis.call('ZCARD', DEDUP) - tonumber(ARGV[8])
  if over > 0 then
    -- The soonest forgotten go first: under a flood the window shrinks, memory does not grow.
    redis.call('ZPOPMIN', DEDUP, over)
  end
  redis.call('PEXPIREAT', DEDUP, s(now + window))
end
return out
