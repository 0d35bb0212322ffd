-- Shared by every tether script: it is prepended to each one (src/cluster/scripts.rs).
--
-- Every key of a user starts with the same hash tag, B = "{u:<len>:<user>}", so a script
-- touches one Cluster slot. KEYS[1] is always B..":devs" (it routes the script); the other
-- keys are built from B, all in the same slot. ARGV[1] is always how many ids of lost
-- messages a missed manifest keeps.
--
-- User keys:   B:devs (set of device names), B:gone (devices evicted for a new one),
--              B:dedup (zset: fingerprint -> when it is forgotten), B:lim (limit override).
-- Device keys: P:m meta hash, P:q0..P:q3 bands (lists of tags, FIFO), P:f in flight
--              (list of "seq:tag", increasing seq), P:b bodies (hash tag -> record),
--              P:t deadlines (zset "q<band>:<tag>" or "f:<tag>" -> deadline ms),
--              P:x ids of lost messages (list, bounded),
--              where P = B..":dv:<len>:<device>", or B..":pend" for the mailbox that waits
--              for a user's first device.
-- A record is "<priority>,<deadline ms or empty>,<id length>;<id><payload>".

local DEVS = KEYS[1]
local B = string.sub(DEVS, 1, -6)
local GONE = B .. ':gone'
local KEEP_IDS = tonumber(ARGV[1])

-- Integers as Redis arguments: Lua's default formatting would write 1.7e+12.
local function s(n)
  return string.format('%d', n)
end

-- The server's clock, so that nodes with skewed clocks agree on every deadline.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The keys of a device mailbox; `dev` false is the mailbox before any device.
local function mbox(dev)
  local p
  if dev == false then
    p = B .. ':pend'
  else
    p = B .. ':dv:' .. #dev .. ':' .. dev
  end
  local mb = { m = p .. ':m', q = { p .. ':q0', p .. ':q1', p .. ':q2', p .. ':q3' },
    f = p .. ':f', b = p .. ':b', t = p .. ':t', x = p .. ':x' }
  mb.all = { mb.m, mb.q[1], mb.q[2], mb.q[3], mb.q[4], mb.f, mb.b, mb.t, mb.x }
  return mb
end

local function parse(rec)
  local p, dl, il, h = string.match(rec, '^(%d),(%d*),(%d+);()')
  il = tonumber(il)
  return tonumber(p), tonumber(dl), string.sub(rec, h, h + il - 1), #rec - (h - 1) - il
end

-- Counts a lost message in the manifest (`field`: ev, rj, sh or ex) with its id.
local function loss(mb, field, id)
  redis.call('HINCRBY', mb.m, field, 1)
  if id ~= '' and KEEP_IDS > 0 then
    redis.call('RPUSH', mb.x, id)
    redis.call('LTRIM', mb.x, -KEEP_IDS, -1)
  end
end

-- Removes every message whose deadline has passed, queued or in flight, and counts it as
-- expired. An expired in-flight entry stays in P:f without its body: it still holds its
-- window slot until acknowledged past or a new session attaches, as in the embedded engine.
local function sweep(mb, now)
  local due = redis.call('ZRANGEBYSCORE', mb.t, '-inf', s(now))
  if #due == 0 then
    return 0
  end
  local dn, db = 0, { 0, 0, 0, 0 }
  for _, member in ipairs(due) do
    local kind, tag = string.match(member, '^(%a%d?):(%d+)$')
    local rec = redis.call('HGET', mb.b, tag)
    if rec then
      redis.call('HDEL', mb.b, tag)
      local _, _, id, cost = parse(rec)
      if kind ~= 'f' then
        local b = tonumber(string.sub(kind, 2))
        local q = mb.q[b + 1]
        -- Expiries mostly hit the front of a band (FIFO with one TTL): O(1) there.
        if redis.call('LINDEX', q, 0) == tag then
          redis.call('LPOP', q)
        else
          redis.call('LREM', q, 1, tag)
        end
        dn = dn + 1
        db[b + 1] = db[b + 1] + cost
      end
      loss(mb, 'ex', id)
    end
  end
  redis.call('ZREMRANGEBYSCORE', mb.t, '-inf', s(now))
  if dn > 0 then
    redis.call('HINCRBY', mb.m, 'qn', s(-dn))
    redis.call('HINCRBY', mb.m, 'qb', s(-(db[1] + db[2] + db[3] + db[4])))
    for b = 0, 3 do
      if db[b + 1] > 0 then
        redis.call('HINCRBY', mb.m, 'b' .. b, s(-db[b + 1]))
      end
    end
  end
  return #due
end

-- Settles every in-flight message with seq <= upto (a cumulative ack). Returns how many
-- were acknowledged (expired ones, already counted, are not).
local function settle(mb, upto)
  local n = 0
  while true do
    local e = redis.call('LINDEX', mb.f, 0)
    if not e then
      break
    end
    local seq, tag = string.match(e, '^(%d+):(%d+)$')
    if tonumber(seq) > upto then
      break
    end
    redis.call('LPOP', mb.f)
    if redis.call('HDEL', mb.b, tag) == 1 then
      redis.call('ZREM', mb.t, 'f:' .. tag)
      n = n + 1
    end
  end
  if n > 0 then
    redis.call('HINCRBY', mb.m, 'ca', n)
  end
  return n
end

-- Moves up to `room` of the most urgent queued messages into flight, assigning seqs, and
-- appends (seq, record) pairs to `out`. Returns how many.
local function fill(mb, room, out)
  if room <= 0 then
    return 0
  end
  local ns = tonumber(redis.call('HGET', mb.m, 'ns'))
  local n, bytes = 0, 0
  for b = 0, 3 do
    if n >= room then
      break
    end
    local tags = redis.call('LPOP', mb.q[b + 1], room - n)
    if tags then
      local bb = 0
      for _, tag in ipairs(tags) do
        -- Every queued tag has its body (the sweep ran first); a missing one is skipped
        -- rather than delivered empty.
        local rec = redis.call('HGET', mb.b, tag)
        if rec then
          local _, dl, _, cost = parse(rec)
          bb = bb + cost
          redis.call('RPUSH', mb.f, s(ns) .. ':' .. tag)
          if dl then
            redis.call('ZREM', mb.t, 'q' .. b .. ':' .. tag)
            redis.call('ZADD', mb.t, s(dl), 'f:' .. tag)
          end
          out[#out + 1] = ns
          out[#out + 1] = rec
          ns = ns + 1
          n = n + 1
        end
      end
      redis.call('HINCRBY', mb.m, 'b' .. b, s(-bb))
      bytes = bytes + bb
    end
  end
  if n > 0 then
    redis.call('HSET', mb.m, 'ns', s(ns))
    redis.call('HINCRBY', mb.m, 'qn', s(-n))
    redis.call('HINCRBY', mb.m, 'qb', s(-bytes))
    redis.call('HINCRBY', mb.m, 'cd', n)
  end
  return n
end

-- A mailbox without a session keeps every key until its away deadline; keys created while
-- it is away (a band that was empty, the lost ids) get the same deadline.
local function touch(mb)
  local meta = redis.call('HMGET', mb.m, 'own', 'aw')
  if meta[1] or not meta[2] then
    return
  end
  for _, k in ipairs(mb.all) do
    redis.call('PEXPIREAT', k, meta[2])
  end
end

-- The user's devices whose mailboxes still exist, sorted; the ones whose away lifetime ran
-- out (their keys expired) are forgotten on the way.
local function devices()
  local live = {}
  for _, d in ipairs(redis.call('SMEMBERS', DEVS)) do
    if redis.call('EXISTS', mbox(d).m) == 1 then
      live[#live + 1] = d
    else
      redis.call('SREM', DEVS, d)
    end
  end
  table.sort(live)
  return live
end

-- The user's own keys live as long as the longest-lived device mailbox: forever while one
-- is attached, else until the latest away deadline.
local function user_ttl(live)
  local latest = nil
  local attached = false
  local pend = mbox(false)
  local metas = {}
  for _, d in ipairs(live) do
    metas[#metas + 1] = mbox(d).m
  end
  if redis.call('EXISTS', pend.m) == 1 then
    metas[#metas + 1] = pend.m
  end
  for _, m in ipairs(metas) do
    local meta = redis.call('HMGET', m, 'own', 'aw')
    if meta[1] then
      attached = true
    elseif meta[2] and (not latest or tonumber(meta[2]) > latest) then
      latest = tonumber(meta[2])
    end
  end
  for _, k in ipairs({ DEVS, GONE }) do
    if attached then
      redis.call('PERSIST', k)
    elseif latest then
      redis.call('PEXPIREAT', k, s(latest))
    end
  end
end

-- Checks that `gen` is the attached session's generation. Returns nil when it is, else the
-- script's refusal: {1} fenced (another session took over, or this one detached),
-- {2} the mailbox is gone.
local function fence(mb, gen)
  local meta = redis.call('HMGET', mb.m, 'g', 'own')
  if not meta[1] then
    return { 2 }
  end
  if not meta[2] or tonumber(meta[1]) ~= gen then
    return { 1 }
  end
  return nil
end
