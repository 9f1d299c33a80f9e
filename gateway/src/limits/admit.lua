-- Admission: checks every limit of a client and its tenant, then debits all
-- of them or none. The model of this script is limits/policy.rs (`Counters`).
--
-- KEYS[i]      the counter of dimension i (all under the tenant's {hash tag})
-- ARGV[1]      lease id          ARGV[2] tokens reserved     ARGV[3] lease ttl (ms)
-- ARGV[2+2i]   kind of dimension i: r (requests/min), t (tokens/min), c (concurrency), d (daily tokens)
-- ARGV[3+2i]   its limit
-- Returns {1, second, rq_limit, rq_remaining, rq_reset_ms, tk_limit, tk_remaining, tk_reset_ms}
--      or {0, i, retry_after_ms (-1: never), rq_limit, ...}; limits of -1: none apply.
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_ms = now_s * 1000 + math.floor(tonumber(t[2]) / 1000)
local today = math.floor(now_s / 86400)
local lease = ARGV[1]
local tokens = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local n = #KEYS
local windows = {}

local function kind(i) return ARGV[2 + 2 * i] end
local function limit(i) return tonumber(ARGV[3 + 2 * i]) end

local function window(i)
  if windows[i] then return windows[i] end
  local h = redis.call('HGETALL', KEYS[i])
  local stale, b, total = {}, {}, 0
  for j = 1, #h, 2 do
    local s, v = tonumber(h[j]), tonumber(h[j + 1])
    if s <= now_s - 60 then
      stale[#stale + 1] = h[j]
    else
      total = total + v
      b[#b + 1] = {s, v}
    end
  end
  if #stale > 0 then redis.call('HDEL', KEYS[i], unpack(stale)) end
  table.sort(b, function(x, y) return x[1] < y[1] end)
  windows[i] = {total = total, buckets = b}
  return windows[i]
end

local function headroom()
  local out = {-1, 0, 0, -1, 0, 0}
  for i = 1, n do
    local k = kind(i)
    if k == 'r' or k == 't' then
      local w = window(i)
      local last = w.buckets[#w.buckets]
      local reset = 0
      if last then reset = math.max((last[1] + 60) * 1000 - now_ms, 0) end
      local rem = math.max(limit(i) - w.total, 0)
      local o = 0
      if k == 't' then o = 3 end
      if out[o + 1] == -1 or rem < out[o + 2] then
        out[o + 1] = limit(i); out[o + 2] = rem; out[o + 3] = reset
      end
    end
  end
  return out
end

local function refuse(i, retry)
  local h = headroom()
  return {0, i, retry, h[1], h[2], h[3], h[4], h[5], h[6]}
end

for i = 1, n do
  local k, l = kind(i), limit(i)
  if k == 'r' or k == 't' then
    local w = window(i)
    local amount = tokens
    if k == 'r' then amount = 1 end
    if w.total + amount > l then
      if amount > l then return refuse(i, -1) end
      local freed, retry = 0, 1
      for _, b in ipairs(w.buckets) do
        freed = freed + b[2]
        if w.total - freed + amount <= l then
          retry = math.max((b[1] + 60) * 1000 - now_ms, 1)
          break
        end
      end
      return refuse(i, retry)
    end
  elseif k == 'c' then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now_ms)
    if redis.call('ZCARD', KEYS[i]) + 1 > l then return refuse(i, 1000) end
  elseif k == 'd' then
    local d = redis.call('HMGET', KEYS[i], 'day', 'used')
    local used = 0
    if tonumber(d[1]) == today then used = tonumber(d[2]) or 0 end
    if used + tokens > l then
      if tokens > l then return refuse(i, -1) end
      return refuse(i, (today + 1) * 86400000 - now_ms)
    end
  end
end

for i = 1, n do
  local k = kind(i)
  if k == 'r' or k == 't' then
    local amount = tokens
    if k == 'r' then amount = 1 end
    redis.call('HINCRBY', KEYS[i], now_s, amount)
    redis.call('PEXPIRE', KEYS[i], 61000)
    local w = window(i)
    w.total = w.total + amount
    local last = w.buckets[#w.buckets]
    if not last or last[1] ~= now_s then w.buckets[#w.buckets + 1] = {now_s, amount} end
  elseif k == 'c' then
    redis.call('ZADD', KEYS[i], now_ms + ttl, lease)
    redis.call('PEXPIRE', KEYS[i], ttl)
  elseif k == 'd' then
    local d = redis.call('HGET', KEYS[i], 'day')
    if tonumber(d) == today then
      redis.call('HINCRBY', KEYS[i], 'used', tokens)
    else
      redis.call('HSET', KEYS[i], 'day', today, 'used', tokens)
    end
    redis.call('EXPIRE', KEYS[i], 172800)
  end
end

local h = headroom()
return {1, now_s, h[1], h[2], h[3], h[4], h[5], h[6]}
