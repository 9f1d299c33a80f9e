-- Admission: checks every limit of a client and its tenant, then debits all
-- of them or none. The model of this script is limits/policy.rs
-- (`Counters::admit`); it runs after state.lua, which reads and writes a subject.
--
-- KEYS[1]      the tenant's limiter state: a hash with one field per subject
--              (`t` the tenant, `c:<client>` a client) and `x`, the unix
--              second the key was last set to expire at
-- ARGV[1]      lease id          ARGV[2] tokens reserved     ARGV[3] lease ttl (ms)
-- ARGV[1+3i]   subject of dimension i     ARGV[3+3i]   its limit
-- ARGV[2+3i]   its kind: r (requests/min), t (tokens/min), c (concurrency), d (daily tokens)
-- Returns {1, second, rq_limit, rq_remaining, rq_reset_ms, tk_limit, tk_remaining, tk_reset_ms}
--      or {0, i, retry_after_ms (-1: never), rq_limit, ...}; limits of -1: none apply.
--
-- Redis runs TIME, one HMGET, and on admission one HSET: the decision needs
-- nothing else. EXPIRE is added only when the key's expiry comes within a day
-- (and a lease) of now, so about once a day per tenant.
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_ms = now_s * 1000 + math.floor(tonumber(t[2]) / 1000)
local today = math.floor(now_s / 86400)
local key = KEYS[1]
local lease = ARGV[1]
local tokens = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local n = (#ARGV - 3) / 3

local function subject(i) return ARGV[1 + 3 * i] end
local function kind(i) return ARGV[2 + 3 * i] end
local function limit(i) return tonumber(ARGV[3 + 3 * i]) end

local fields, states = {}, {}
for i = 1, n do
  local s = subject(i)
  if not states[s] then
    fields[#fields + 1] = s
    states[s] = true
  end
end
if #fields == 0 then return {1, now_s, -1, 0, 0, -1, 0, 0} end
fields[#fields + 1] = 'x'
local v = redis.call('HMGET', key, unpack(fields))
local expires = tonumber(v[#fields])
fields[#fields] = nil
for j, s in ipairs(fields) do states[s] = decode(v[j], now_s - 59, now_ms) end

-- Units of a bucket: requests (2) or tokens (3).
local function unit(k) if k == 'r' then return 2 end return 3 end

local function total(st, u)
  local sum = 0
  for _, b in ipairs(st.buckets) do sum = sum + b[u] end
  return sum
end

local function headroom()
  local out = {-1, 0, 0, -1, 0, 0}
  for i = 1, n do
    local k = kind(i)
    if k == 'r' or k == 't' then
      local st = states[subject(i)]
      local last = st.buckets[#st.buckets]
      local reset = 0
      if last then reset = math.max((last[1] + 60) * 1000 - now_ms, 0) end
      local rem = math.max(limit(i) - total(st, unit(k)), 0)
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
  local k, l, st = kind(i), limit(i), states[subject(i)]
  if k == 'r' or k == 't' then
    local u, amount = unit(k), tokens
    if k == 'r' then amount = 1 end
    local used = total(st, u)
    if used + amount > l then
      if amount > l then return refuse(i, -1) end
      local freed, retry = 0, 1
      for _, b in ipairs(st.buckets) do
        freed = freed + b[u]
        if used - freed + amount <= l then
          retry = math.max((b[1] + 60) * 1000 - now_ms, 1)
          break
        end
      end
      return refuse(i, retry)
    end
  elseif k == 'c' then
    if st.nleases + 1 > l then return refuse(i, 1000) end
  elseif k == 'd' then
    local used = 0
    if st.day == today then used = st.used end
    if used + tokens > l then
      if tokens > l then return refuse(i, -1) end
      return refuse(i, (today + 1) * 86400000 - now_ms)
    end
  end
end

for _, s in ipairs(fields) do
  local st = states[s]
  local b = st.buckets
  -- Buckets stay oldest first even if Redis's clock stepped back.
  local j = #b
  while j > 0 and b[j][1] > now_s do j = j - 1 end
  if j > 0 and b[j][1] == now_s then
    b[j][2] = b[j][2] + 1
    b[j][3] = b[j][3] + tokens
  else
    table.insert(b, j + 1, {now_s, 1, tokens})
  end
  if st.day ~= today then st.day, st.used = today, 0 end
  st.used = st.used + tokens
end
for i = 1, n do
  if kind(i) == 'c' then states[subject(i)].leases[lease] = now_ms + ttl end
end

local args = {}
for _, s in ipairs(fields) do
  args[#args + 1] = s
  args[#args + 1] = encode(states[s])
end
-- The key must outlive today's daily counter and every lease in it.
local keep = 86400 + math.ceil(ttl / 1000)
local renew = not expires or expires - now_s < keep
if renew then
  args[#args + 1] = 'x'
  args[#args + 1] = string.format('%d', now_s + 2 * keep)
end
redis.call('HSET', key, unpack(args))
if renew then redis.call('EXPIRE', key, 2 * keep) end

local h = headroom()
return {1, now_s, h[1], h[2], h[3], h[4], h[5], h[6]}
