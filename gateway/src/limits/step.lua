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
-- KEYS[#KEYS]  with ARGV[6] > 0: the settlements seen in the last ARGV[6] ms,
--              a sorted set of id by time, so a settlement sent again
--              (its call's answer was lost) counts once
-- ARGV[1] lease ttl (ms)  ARGV[2] usage retention (s)  ARGV[3] number of
-- limit sets  ARGV[4] number of settlements  ARGV[5] number of admissions,
-- ARGV[6] how long settlement ids are kept (ms; 0: none are given), then
-- each limit set (the limits of one client of the tenant): n, then its n
--   limits as three values: subject, kind (r requests/min, t tokens/min,
--   c concurrency, d daily tokens), limit
-- each settlement: its lease deadline (ms), the second it was charged to,
--   token delta (actual - reserved), client id, prompt tokens, completion
--   tokens, the j of its usage hash, its limit set, and with ARGV[6] > 0 its id
-- each admission: tokens reserved, its limit set
-- Returns nine integers per admission, in order:
--   {1, second, rq_limit, rq_remaining, rq_reset_ms, tk_limit, tk_remaining, tk_reset_ms, lease deadline ms}
--   or {0, i, retry_after_ms (-1: never), rq_limit, ...}; limits of -1: none apply.
--
-- Redis runs, per step whatever it carries: one HMGET and at most one HSET
-- on the state, TIME when it admits, one HMGET and one HSET per usage hash
-- settled into, EXPIRE on a usage hash it creates, and EXPIRE on the state
-- about once a day per tenant (when its expiry comes within a day and a
-- lease of now). With settlement ids, a call that settles also runs TIME,
-- ZMSCORE, ZADD, ZREMRANGEBYSCORE and PEXPIRE on the set of ids.
local ttl, retention = tonumber(ARGV[1]), tonumber(ARGV[2])
local n_sets, n_settle, n_admit = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local keep_ids = tonumber(ARGV[6])
local key = KEYS[1]
local n_usage = #KEYS - 1
if keep_ids > 0 then n_usage = n_usage - 1 end
-- The clock first, before any write: admissions and settlement ids need it.
local now_s, now_ms, today, deadline = 0, 0, 0, 0
if n_admit > 0 or (keep_ids > 0 and n_settle > 0) then
  local t = redis.call('TIME')
  now_s = tonumber(t[1])
  now_ms = now_s * 1000 + math.floor(tonumber(t[2]) / 1000)
  today = math.floor(now_s / 86400)
  deadline = now_ms + ttl
end

local pos = 7
local function arg()
  local v = ARGV[pos]
  pos = pos + 1
  return v
end

-- The limit sets: their limits, their subjects (each once) and which of
-- those hold leases; and every subject any of them names.
local sets, fields, wanted = {}, {}, {}
for i = 1, n_sets do
  local set = {dims = {}, subjects = {}, leased = {}}
  local seen = {}
  for j = 1, tonumber(arg()) do
    local d = {s = arg(), k = arg(), l = tonumber(arg())}
    set.dims[j] = d
    if not seen[d.s] then
      seen[d.s] = true
      set.subjects[#set.subjects + 1] = d.s
    end
    if d.k == 'c' then set.leased[d.s] = true end
    if not wanted[d.s] then
      wanted[d.s] = true
      fields[#fields + 1] = d.s
    end
  end
  sets[i] = set
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
    pending(states[s])
  end
end

-- Settlements. No clock: a bucket that left the window is either gone or no
-- longer counted, so correcting it changes nothing. A subject that is gone
-- (its key expired) stays gone: nothing is created here.
local usage = {}
-- Settlements already seen (their ids, 9th of their 9 values) are skipped.
local seen, fresh = {}, {}
if keep_ids > 0 and n_settle > 0 then
  local ids = {}
  for i = 1, n_settle do ids[i] = ARGV[pos + (i - 1) * 9 + 8] end
  local ids_key = KEYS[#KEYS]
  seen = redis.call('ZMSCORE', ids_key, unpack(ids))
  for i = 1, n_settle do
    if not seen[i] then
      fresh[#fresh + 1] = now_ms
      fresh[#fresh + 1] = ids[i]
    end
  end
  if #fresh > 0 then redis.call('ZADD', ids_key, unpack(fresh)) end
  redis.call('ZREMRANGEBYSCORE', ids_key, '-inf', now_ms - keep_ids)
  redis.call('PEXPIRE', ids_key, keep_ids)
end
for i = 1, n_settle do
  local d, second, delta = arg(), tonumber(arg()), tonumber(arg())
  local client, prompt, completion = arg(), tonumber(arg()), tonumber(arg())
  local j, set = tonumber(arg()), sets[tonumber(arg())]
  if keep_ids > 0 then arg() end
  if seen[i] then
    -- Counted by an earlier call whose answer was lost.
  elseif delta ~= 0 or next(set.leased) ~= nil then
    local day = math.floor(second / 86400)
    for _, s in ipairs(set.subjects) do
      if present[s] then
        local st = states[s]
        if delta ~= 0 then
          correct(st, second, delta)
          if st.day == day then st.used = math.max(st.used + delta, 0) end
        end
        if set.leased[s] then give_back(st, d) end
        dirty[s] = true
      end
    end
  end
  if not seen[i] then
    local u = usage[j]
    if not u then
      u = {clients = {}, order = {}, requests = 0, prompt = 0, completion = 0}
      usage[j] = u
    end
    local c = u.clients[client]
    if not c then
      c = {requests = 0, prompt = 0, completion = 0}
      u.clients[client] = c
      u.order[#u.order + 1] = client
    end
    u.requests, u.prompt, u.completion = u.requests + 1, u.prompt + prompt, u.completion + completion
    c.requests, c.prompt, c.completion = c.requests + 1, c.prompt + prompt, c.completion + completion
  end
end
for _, s in ipairs(fields) do flush(states[s]) end

-- Usage keeps its layout (totals, then c:<client>:<field>), read by usage.rs.
-- Every write to a hash sets `requests`: without it the hash is new. It is
-- kept the retention from the end of its day, whatever settles into it later.
for j = 1, n_usage do
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

-- The tightest requests and tokens windows of `dims`, into `out`.
local function headroom(dims, out)
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
  for j = 1, 6 do out[#out + 1] = h[j] end
end

-- The refusal of an admission by its i-th limit, or nil when every limit passes.
local function check(dims, tokens)
  for i, d in ipairs(dims) do
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

local out, admitted = {}, false
for _ = 1, n_admit do
  local tokens, set = tonumber(arg()), sets[tonumber(arg())]
  local i, retry = check(set.dims, tokens)
  if i then
    out[#out + 1] = 0; out[#out + 1] = i; out[#out + 1] = retry
    headroom(set.dims, out)
  else
    for _, s in ipairs(set.subjects) do
      local st = states[s]
      add_to_bucket(st, now_s, 1, tokens, true)
      if st.day ~= today then st.day, st.used = today, 0 end
      st.used = st.used + tokens
      if set.leased[s] then add_lease(st, deadline) end
      dirty[s] = true
      admitted = true
    end
    out[#out + 1] = 1; out[#out + 1] = now_s
    headroom(set.dims, out)
    out[#out + 1] = deadline
  end
end

local args = {}
for _, s in ipairs(fields) do
  if dirty[s] then
    flush_leases(states[s])
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
