-- Admission: checks every limit of a client and its tenant, then debits all
-- of them or none. The model of this script is limits/policy.rs
-- (`Counters::admit`); it runs after state.lua, which reads and writes a subject.
--
-- KEYS[1]      the tenant's limiter state: a hash with one field per subject
--              (`t` the tenant, `c:<client>` a client) and `x`, the unix
--              second the key was last set to expire at
-- ARGV[1]      tokens reserved   ARGV[2] lease ttl (ms)
-- ARGV[3i]     subject of dimension i     ARGV[2+3i]   its limit
-- ARGV[1+3i]   its kind: r (requests/min), t (tokens/min), c (concurrency), d (daily tokens)
-- Returns {1, second, rq_limit, rq_remaining, rq_reset_ms, tk_limit, tk_remaining, tk_reset_ms, lease deadline ms}
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
local tokens = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local deadline = now_ms + ttl
local n = (#ARGV - 2) / 3

local function subject(i) return ARGV[3 * i] end
local function kind(i) return ARGV[1 + 3 * i] end
local function limit(i) return tonumber(ARGV[2 + 3 * i]) end

local fields, states = {}, {}
for i = 1, n do
  local s = subject(i)
  if not states[s] then
    fields[#fields + 1] = s
    states[s] = true
  end
end
if #fields == 0 then return {1, now_s, -1, 0, 0, -1, 0, 0, deadline} end
fields[#fields + 1] = 'x'
local v = redis.call('HMGET', key, unpack(fields))
local expires = tonumber(v[#fields])
fields[#fields] = nil
for j, s in ipairs(fields) do
  states[s] = decode(v[j])
  prune(states[s], now_s - 59, now_ms)
end

-- What a dimension of kind r (requests) or t (tokens) has in the window.
local function total(st, k)
  if k == 'r' then return st.r end
  return st.t
end

-- When `amount` more of kind k fits under `l` (units leave 60 s after their second).
local function retry_after(st, k, amount, l)
  local used, freed = total(st, k), 0
  local function frees(sec, r, t)
    if k == 'r' then freed = freed + r else freed = freed + t end
    if used - freed + amount <= l then return math.max((sec + 60) * 1000 - now_ms, 1) end
  end
  for sec, r, t in string.gmatch(st.buckets, '(%d+) (%d+) (%d+)') do
    local ms = frees(tonumber(sec), tonumber(r), tonumber(t))
    if ms then return ms end
  end
  if st.s > 0 then return frees(st.s, st.sr, st.st) or 1 end
  return 1
end

local function headroom()
  local out = {-1, 0, 0, -1, 0, 0}
  for i = 1, n do
    local k = kind(i)
    if k == 'r' or k == 't' then
      local st = states[subject(i)]
      local reset = 0
      if st.s > 0 then reset = math.max((st.s + 60) * 1000 - now_ms, 0) end
      local rem = math.max(limit(i) - total(st, k), 0)
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
    local amount = tokens
    if k == 'r' then amount = 1 end
    if total(st, k) + amount > l then
      if amount > l then return refuse(i, -1) end
      return refuse(i, retry_after(st, k, amount, l))
    end
  elseif k == 'c' then
    if st.l + 1 > l then return refuse(i, 1000) end
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
  add_to_bucket(st, now_s, 1, tokens, true)
  if st.day ~= today then st.day, st.used = today, 0 end
  st.used = st.used + tokens
end
for i = 1, n do
  if kind(i) == 'c' then add_lease(states[subject(i)], deadline) end
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
return {1, now_s, h[1], h[2], h[3], h[4], h[5], h[6], deadline}
