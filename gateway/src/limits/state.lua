-- A subject's limiter state (the tenant, or one of its clients), as one field
-- of its tenant's hash. Shared by admit.lua and settle.lua; the model is
-- `State` in policy.rs. A value reads
--   "<day> <used>|<second> <requests> <tokens>,...|<lease id> <deadline ms>,..."
-- with the buckets oldest first. Numbers are written with %d: tostring would
-- round anything past 14 digits.

-- Reads a value, keeping buckets from second `oldest` on and leases whose
-- deadline is after `now_ms`: the rest is dropped when the state is rewritten.
local function decode(v, oldest, now_ms)
  local st = {day = 0, used = 0, buckets = {}, leases = {}, nleases = 0}
  if not v then return st end
  local daily, buckets, leases = string.match(v, '^([^|]*)|([^|]*)|(.*)$')
  if not daily then return st end
  local day, used = string.match(daily, '^(%d+) (%d+)$')
  st.day, st.used = tonumber(day) or 0, tonumber(used) or 0
  for s, r, t in string.gmatch(buckets, '(%d+) (%d+) (%d+)') do
    s = tonumber(s)
    if s >= oldest then st.buckets[#st.buckets + 1] = {s, tonumber(r), tonumber(t)} end
  end
  for id, deadline in string.gmatch(leases, '([^ ,]+) (%d+)') do
    deadline = tonumber(deadline)
    if deadline > now_ms then
      st.leases[id] = deadline
      st.nleases = st.nleases + 1
    end
  end
  return st
end

local function encode(st)
  local b, l = {}, {}
  for i, x in ipairs(st.buckets) do b[i] = string.format('%d %d %d', x[1], x[2], x[3]) end
  for id, deadline in pairs(st.leases) do l[#l + 1] = id .. string.format(' %d', deadline) end
  return string.format('%d %d|', st.day, st.used) .. table.concat(b, ',') .. '|' .. table.concat(l, ',')
end
