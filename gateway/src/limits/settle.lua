-- Settlement: a request ended. Corrects its token charge by the difference
-- between what it used and what was reserved, gives its leases back, and
-- meters its usage for billing. The model is `Counters::settle` in policy.rs;
-- it runs after state.lua, which reads and writes a subject.
--
-- KEYS[1]      the tenant's limiter state, as at admission
-- KEYS[2]      the usage hash of its tenant and day
-- ARGV[1] its lease deadline (ms)  ARGV[2] second it was charged to  ARGV[3] token delta (actual - reserved)
-- ARGV[4] client id  ARGV[5] prompt tokens  ARGV[6] completion tokens  ARGV[7] usage retention (s)
-- ARGV[8..] the subjects of its limits, with a + in front of those it holds a lease of
--
-- Redis runs one HMGET and one HSET for the limits (none when there is
-- nothing to correct), one HMGET and one HSET for the usage, and EXPIRE on a
-- usage hash it creates. No clock: a bucket that left the window is either
-- gone or no longer counted, so correcting it changes nothing.
local deadline, second, delta = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

local fields, leased, any = {}, {}, false
for i = 8, #ARGV do
  local s = ARGV[i]
  if string.sub(s, 1, 1) == '+' then
    s = string.sub(s, 2)
    leased[s], any = true, true
  end
  fields[#fields + 1] = s
end
if #fields > 0 and (delta ~= 0 or any) then
  local v = redis.call('HMGET', KEYS[1], unpack(fields))
  local day = math.floor(second / 86400)
  local args = {}
  for j, s in ipairs(fields) do
    -- A subject that is gone (its key expired) stays gone: nothing is created here.
    if v[j] then
      local st = decode(v[j])
      if delta ~= 0 then
        add_to_bucket(st, second, 0, delta, false)
        if st.day == day then st.used = math.max(st.used + delta, 0) end
      end
      if leased[s] then drop_lease(st, deadline) end
      args[#args + 1] = s
      args[#args + 1] = encode(st)
    end
  end
  if #args > 0 then redis.call('HSET', KEYS[1], unpack(args)) end
end

-- Usage keeps its layout (totals, then c:<client>:<field>), read by usage.rs.
local u = KEYS[2]
local c = 'c:' .. ARGV[4] .. ':'
local names = {'requests', 'prompt_tokens', 'completion_tokens',
  c .. 'requests', c .. 'prompt_tokens', c .. 'completion_tokens'}
local add = {1, tonumber(ARGV[5]), tonumber(ARGV[6])}
local old = redis.call('HMGET', u, unpack(names))
local args = {}
for i, name in ipairs(names) do
  args[#args + 1] = name
  args[#args + 1] = string.format('%d', (tonumber(old[i]) or 0) + add[(i - 1) % 3 + 1])
end
redis.call('HSET', u, unpack(args))
-- Every write to the hash sets `requests`: without it the hash is new. It is
-- kept the retention from the end of its day, whatever settles into it later.
if not old[1] then redis.call('EXPIRE', u, tonumber(ARGV[7]) + 86400) end
return 1
