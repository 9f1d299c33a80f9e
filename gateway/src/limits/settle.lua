-- Settlement: a request ended. Corrects its token charge by the difference
-- between what it used and what was reserved, gives its leases back, and
-- meters its usage for billing. The model is `Counters::settle` in policy.rs.
--
-- KEYS[1..n]   the request's limit counters, as at admission
-- KEYS[n+1]    the usage hash of its tenant and day
-- ARGV[1] lease id   ARGV[2] second it was charged to   ARGV[3] token delta (actual - reserved)
-- ARGV[4] client id  ARGV[5] prompt tokens  ARGV[6] completion tokens  ARGV[7] usage retention (s)
-- ARGV[8..]    kind of each dimension
local lease, second, delta = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now_s = tonumber(redis.call('TIME')[1])
local n = #KEYS - 1
for i = 1, n do
  local k = ARGV[7 + i]
  if k == 't' and delta ~= 0 and second > now_s - 60 and redis.call('EXISTS', KEYS[i]) == 1 then
    local v = redis.call('HINCRBY', KEYS[i], second, delta)
    if v < 0 then redis.call('HSET', KEYS[i], second, 0) end
    redis.call('PEXPIRE', KEYS[i], 61000)
  elseif k == 'c' then
    redis.call('ZREM', KEYS[i], lease)
  elseif k == 'd' and delta ~= 0 and tonumber(redis.call('HGET', KEYS[i], 'day')) == math.floor(second / 86400) then
    local v = redis.call('HINCRBY', KEYS[i], 'used', delta)
    if v < 0 then redis.call('HSET', KEYS[i], 'used', 0) end
  end
end
local u = KEYS[n + 1]
local client = ARGV[4]
redis.call('HINCRBY', u, 'requests', 1)
redis.call('HINCRBY', u, 'prompt_tokens', ARGV[5])
redis.call('HINCRBY', u, 'completion_tokens', ARGV[6])
redis.call('HINCRBY', u, 'c:' .. client .. ':requests', 1)
redis.call('HINCRBY', u, 'c:' .. client .. ':prompt_tokens', ARGV[5])
redis.call('HINCRBY', u, 'c:' .. client .. ':completion_tokens', ARGV[6])
redis.call('EXPIRE', u, tonumber(ARGV[7]))
return 1
