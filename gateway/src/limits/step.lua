-- One step on a tenant's limiter state: the settlements, then the
-- admissions, that reached a gateway for this tenant while its previous step
-- was in flight, in the order they arrived. Each is decided exactly as if it
-- ran alone at this instant: an admission checks every limit of a client and
-- its tenant and debits all of them or none; a settlement corrects its
-- request's token charge by what it used, gives its leases back and meters
-- its usage for billing. The model is limits/policy.rs (`Counters::admit`,
-- `Counters::settle`); this runs after state.lua, which reads and writes a
-- subject.
--
-- KEYS[1]      the tenant's limiter state: a hash with one field per subject
--              (`t` the tenant, `c:<client>` a client) and `x`, the unix
--              second the key was last set to expire at
-- KEYS[1+j]    the usage hash of the tenant for the j-th day settlements name
-- ARGV[1] lease ttl (ms)  ARGV[2] usage retention (s)
-- ARGV[3] number of settlements  ARGV[4] number of admissions, then
-- each settlement: its lease deadline (ms), the second it was charged to,
--   token delta (actual - reserved), client id, prompt tokens, completion
--   tokens, the j of its usage hash, n, then its n subjects, with a + in
--   front of those it holds a lease of
-- each admission: tokens reserved, n, then its n limits as three values:
--   subject, kind (r requests/min, t tokens/min, c concurrency, d daily
--   tokens), limit
-- Returns nine integers per admission, in order:
--   {1, second, rq_limit, rq_remaining, rq_reset_ms, tk_limit, tk_remaining, tk_reset_ms, lease deadline ms}
--   or {0, i, retry_after_ms (-1: never), rq_limit, ...}; limits of -1: none apply.
--
-- Redis runs, per step whatever it carries: one HMGET and at most one HSET
-- on the state, TIME when it admits, one HMGET and one HSET per usage hash
-- settled into, EXPIRE on a usage hash it creates, and EXPIRE on the state
-- about once a day per tenant (when its expiry comes within a day and a
-- lease of now).
local ttl, retention = tonumber(ARGV[1]), tonumber(ARGV[2])
local n_settle, n_admit = tonumber(ARGV[3]), tonumber(ARGV[4])
local key = KEYS[1]
-- The clock first, before any write: only admissions need it.
local now_s, now_ms, today, deadline = 0, 0, 0, 0
if n_admit > 0 then
  local t = redis.call('TIME')
  now_s = tonumber(t[1])
  now_ms = now_s * 1000 + math.floor(tonumber(t[2]) / 1000)
  today = math.floor(now_s / 86400)
  deadline = now_ms + ttl
end

-- Reads the requests off ARGV.
local pos = 5
local function arg()
  local v = ARGV[pos]
  pos = pos + 1
  return v
end
local fields, wanted = {}, {}
local function want(s)
  if not wanted[s] then
    wanted[s] = true
    fields[#fields + 1] = s
  end
end
local settles, admits = {}, {}
for i = 1, n_settle do
  local q = {deadline = arg(), second = tonumber(arg()), delta = tonumber(arg()),
    client = arg(), prompt = tonumber(arg()), completion = tonumber(arg()),
    usage = tonumber(arg()), subjects = {}, leased = {}}
  for j = 1, tonumber(arg()) do
    local s = arg()
    if string.sub(s, 1, 1) == '+' then
      s = string.sub(s, 2)
      q.leased[s] = true
    end
    q.subjects[j] = s
    want(s)
  end
  settles[i] = q
end
for i = 1, n_admit do
  local q = {tokens = tonumber(arg()), dims = {}}
  for j = 1, tonumber(arg()) do
    q.dims[j] = {s = arg(), k = arg(), l = tonumber(arg())}
    want(q.dims[j].s)
  end
  admits[i] = q
end

local states, present, dirty = {}, {}, {}
local expires
if #fields > 0 then
  fields[#fields + 1] = 'x'
  local v = redis.call('HMGET', key, unpack(fields))
  expires = tonumber(v[#fields])
  fields[#fields] = nil
  for j, s in ipairs(fields) do
    present[s] = v[j] ~= false and v[j] ~= nil
    states[s] = decode(v[j] or nil)
  end
end

-- Settlements. No clock: a bucket that left the window is either gone or no
-- longer counted, so correcting it changes nothing. A subject that is gone
-- (its key expired) stays gone: nothing is created here.
local usage = {}
for _, q in ipairs(settles) do
  if q.delta ~= 0 or next(q.leased) ~= nil then
    local day = math.floor(q.second / 86400)
    for _, s in ipairs(q.subjects) do
      if present[s] then
        local st = states[s]
        if q.delta ~= 0 then
          add_to_bucket(st, q.second, 0, q.delta, false)
          if st.day == day then st.used = math.max(st.used + q.delta, 0) end
        end
        if q.leased[s] then drop_lease(st, q.deadline) end
        dirty[s] = true
      end
    end
  end
  local u = usage[q.usage]
  if not u then
    u = {clients = {}, order = {}, requests = 0, prompt = 0, completion = 0}
    usage[q.usage] = u
  end
  local c = u.clients[q.client]
  if not c then
    c = {requests = 0, prompt = 0, completion = 0}
    u.clients[q.client] = c
    u.order[#u.order + 1] = q.client
  end
  u.requests, u.prompt, u.completion = u.requests + 1, u.prompt + q.prompt, u.completion + q.completion
  c.requests, c.prompt, c.completion = c.requests + 1, c.prompt + q.prompt, c.completion + q.completion
end

-- Usage keeps its layout (totals, then c:<client>:<field>), read by usage.rs.
-- Every write to a hash sets `requests`: without it the hash is new. It is
-- kept the retention from the end of its day, whatever settles into it later.
for j = 1, #KEYS - 1 do
  local u = usage[j]
  if u then
    local names = {'requests', 'prompt_tokens', 'completion_tokens'}
    local add = {u.requests, u.prompt, u.completion}
    for _, id in ipairs(u.order) do
      local c, p = u.clients[id], 'c:' .. id .. ':'
      for f, n in pairs({requests = c.requests, prompt_tokens = c.prompt,
          completion_tokens = c.completion}) do
        names[#names + 1] = p .. f
        add[#add + 1] = n
      end
    end
    local k = KEYS[1 + j]
    local old = redis.call('HMGET', k, unpack(names))
    local args = {}
    for i, name in ipairs(names) do
      args[#args + 1] = name
      args[#args + 1] = string.format('%d', (tonumber(old[i]) or 0) + add[i])
    end
    redis.call('HSET', k, unpack(args))
    if not old[1] then redis.call('EXPIRE', k, retention + 86400) end
  end
end

-- Admissions.
local out = {}
local admitted = false
if n_admit > 0 then
  for _, s in ipairs(fields) do prune(states[s], now_s - 59, now_ms) end
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

local function headroom(dims)
  local h = {-1, 0, 0, -1, 0, 0}
  for _, d in ipairs(dims) do
    if d.k == 'r' or d.k == 't' then
      local st = states[d.s]
      local reset = 0
      if st.s > 0 then reset = math.max((st.s + 60) * 1000 - now_ms, 0) end
      local rem = math.max(d.l - total(st, d.k), 0)
      local o = 0
      if d.k == 't' then o = 3 end
      if h[o + 1] == -1 or rem < h[o + 2] then
        h[o + 1] = d.l; h[o + 2] = rem; h[o + 3] = reset
      end
    end
  end
  return h
end

-- The refusal of an admission by its i-th limit, or nil when every limit passes.
local function check(q)
  local tokens = q.tokens
  for i, d in ipairs(q.dims) do
    local st, l = states[d.s], d.l
    if d.k == 'r' or d.k == 't' then
      local amount = tokens
      if d.k == 'r' then amount = 1 end
      if total(st, d.k) + amount > l then
        if amount > l then return i, -1 end
        return i, retry_after(st, d.k, amount, l)
      end
    elseif d.k == 'c' then
      if st.l + 1 > l then return i, 1000 end
    elseif d.k == 'd' then
      local used = 0
      if st.day == today then used = st.used end
      if used + tokens > l then
        if tokens > l then return i, -1 end
        return i, (today + 1) * 86400000 - now_ms
      end
    end
  end
end

for _, q in ipairs(admits) do
  local i, retry = check(q)
  if i then
    local h = headroom(q.dims)
    out[#out + 1] = 0; out[#out + 1] = i; out[#out + 1] = retry
    for j = 1, 6 do out[#out + 1] = h[j] end
  else
    local seen = {}
    for _, d in ipairs(q.dims) do
      if not seen[d.s] then
        seen[d.s] = true
        local st = states[d.s]
        add_to_bucket(st, now_s, 1, q.tokens, true)
        if st.day ~= today then st.day, st.used = today, 0 end
        st.used = st.used + q.tokens
        dirty[d.s] = true
        admitted = true
      end
    end
    for _, d in ipairs(q.dims) do
      if d.k == 'c' then add_lease(states[d.s], deadline) end
    end
    local h = headroom(q.dims)
    out[#out + 1] = 1; out[#out + 1] = now_s
    for j = 1, 6 do out[#out + 1] = h[j] end
    out[#out + 1] = deadline
  end
end

local args = {}
for _, s in ipairs(fields) do
  if dirty[s] then
    args[#args + 1] = s
    args[#args + 1] = encode(states[s])
  end
end
-- The key must outlive today's daily counter and every lease in it.
local keep = 86400 + math.ceil(ttl / 1000)
local renew = admitted and (not expires or expires - now_s < keep)
if renew then
  args[#args + 1] = 'x'
  args[#args + 1] = string.format('%d', now_s + 2 * keep)
end
if #args > 0 then redis.call('HSET', key, unpack(args)) end
if renew then redis.call('EXPIRE', key, 2 * keep) end
return out
