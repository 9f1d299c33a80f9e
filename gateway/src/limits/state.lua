-- A subject's limiter state (the tenant, or one of its clients), as one field
-- of its tenant's hash. Used by step.lua; the model is
-- `State` in policy.rs. A value reads
--   "<day> <used> <requests> <tokens> <newest> <its requests> <its tokens> <leases> <latest deadline>|<older buckets>|<leases>"
-- where <requests> and <tokens> total every bucket listed, <newest> is the
-- newest bucket's second (0: none), older buckets read "<second> <requests>
-- <tokens>", oldest first, and leases are their deadlines in ms, earliest
-- first, <leases> of them, none past <latest deadline>. A lease is known
-- by its deadline alone: leases with one deadline lapse together, so
-- settlement giving back any one of them gives back its own.
-- The totals and the order let a script work on the ends of the lists only,
-- and Lua's pattern functions do the scanning: no loop over every bucket.
-- Numbers are written with %d: tostring would round past 14 digits.

local function decode(v)
  local st = {day = 0, used = 0, r = 0, t = 0, s = 0, sr = 0, st = 0, l = 0, ld = 0,
    buckets = '', leases = ''}
  if not v then return st end
  -- Plain finds: a pattern would step through a long lease list char by char.
  local b1 = string.find(v, '|', 1, true)
  local b2 = b1 and string.find(v, '|', b1 + 1, true)
  if not b2 then return st end
  local h = {string.match(string.sub(v, 1, b1 - 1),
    '^(%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+)$')}
  if #h ~= 9 then return st end
  for i = 1, 9 do h[i] = tonumber(h[i]) end
  st.day, st.used, st.r, st.t, st.s, st.sr, st.st, st.l, st.ld = unpack(h)
  st.buckets, st.leases = string.sub(v, b1 + 1, b2 - 1), string.sub(v, b2 + 1)
  return st
end

local function encode(st)
  return string.format('%d %d %d %d %d %d %d %d %d|', st.day, st.used, st.r, st.t,
    st.s, st.sr, st.st, st.l, st.ld) .. st.buckets .. '|' .. st.leases
end

local function append(list, entry)
  if list == '' then return entry end
  return list .. ',' .. entry
end

-- Drops buckets before second `oldest` and leases whose deadline is not
-- after `now_ms`: both sit at the start of their lists.
local function prune(st, oldest, now_ms)
  if st.s < oldest then
    st.r, st.t, st.s, st.sr, st.st, st.buckets = 0, 0, 0, 0, 0, ''
  else
    local pos = 1
    while true do
      local _, e, s, r, t = string.find(st.buckets, '^(%d+) (%d+) (%d+),?', pos)
      if not s or tonumber(s) >= oldest then break end
      st.r, st.t = st.r - tonumber(r), st.t - tonumber(t)
      pos = e + 1
    end
    if pos > 1 then st.buckets = string.sub(st.buckets, pos) end
  end
  local pos = 1
  while true do
    local _, e, d = string.find(st.leases, '^(%d+),?', pos)
    if not d or tonumber(d) > now_ms then break end
    st.l = st.l - 1
    pos = e + 1
  end
  if pos > 1 then st.leases = string.sub(st.leases, pos) end
end

-- Where the entry `head` followed by `after` starts in `list`: `after` is
-- ' ' to find a bucket by its second, ',' to find a whole lease, which may
-- also end the list. Plain finds, no copy of the list.
local function find_entry(list, head, after)
  local h = head .. after
  if string.sub(list, 1, #h) == h then return 1 end
  local a = string.find(list, ',' .. h, 1, true)
  if a then return a + 1 end
  if after == ',' then
    if list == head then return 1 end
    if string.sub(list, -(#head + 1)) == ',' .. head then return #list - #head + 1 end
  end
end

-- Removes the entry at `a` (found by find_entry) from `list`.
local function cut(list, a)
  local _, e = string.find(list, '^[^,]*,?', a)
  local out = string.sub(list, 1, a - 1) .. string.sub(list, e + 1)
  if string.sub(out, -1) == ',' then out = string.sub(out, 1, -2) end
  return out
end

-- Puts `entry` into `list` before the first entry whose first number is
-- larger than `key`: the lists stay in order.
local function insert(list, entry, key)
  local pos = 1
  while true do
    local _, e, k = string.find(list, '^(%d+)[^,]*,?', pos)
    if not e then break end
    if tonumber(k) > key then
      return string.sub(list, 1, pos - 1) .. entry .. ',' .. string.sub(list, pos)
    end
    pos = e + 1
  end
  return append(list, entry)
end

-- Adds `dr` requests and `dt` tokens (leaving no fewer than 0) to the
-- bucket of second `sec`, newest or listed; a missing bucket is created
-- only if `create` (at admission: a settlement's bucket may have left).
local function add_to_bucket(st, sec, dr, dt, create)
  if sec == st.s then
    local t = math.max(st.st + dt, 0)
    st.r, st.t = st.r + dr, st.t + t - st.st
    st.sr, st.st = st.sr + dr, t
    return
  end
  local key = string.format('%d', sec)
  local a = find_entry(st.buckets, key, ' ')
  if a then
    local _, e, r, t = string.find(st.buckets, '^%d+ (%d+) (%d+)', a)
    r, t = tonumber(r), tonumber(t)
    local nt = math.max(t + dt, 0)
    st.buckets = string.sub(st.buckets, 1, a - 1)
      .. string.format('%s %d %d', key, r + dr, nt) .. string.sub(st.buckets, e + 1)
    st.r, st.t = st.r + dr, st.t + nt - t
    return
  end
  if not create then return end
  if sec > st.s then
    if st.s > 0 then
      st.buckets = append(st.buckets, string.format('%d %d %d', st.s, st.sr, st.st))
    end
    st.s, st.sr, st.st = sec, dr, dt
  else
    -- Redis's clock stepped back: the bucket goes among the older ones, in order.
    st.buckets = insert(st.buckets, string.format('%s %d %d', key, dr, dt), sec)
  end
  st.r, st.t = st.r + dr, st.t + dt
end

-- Gives back one lease ending at `deadline` (a string), if one is held.
local function drop_lease(st, deadline)
  local a = find_entry(st.leases, deadline, ',')
  if not a then return end
  st.leases = cut(st.leases, a)
  st.l = st.l - 1
end

local function add_lease(st, deadline)
  local entry = string.format('%d', deadline)
  if deadline >= st.ld then
    st.leases = append(st.leases, entry)
    st.ld = deadline
  else
    st.leases = insert(st.leases, entry, deadline)
  end
  st.l = st.l + 1
end
