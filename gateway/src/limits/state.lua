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

-- Removes the `len` characters at `a` (whole entries, found by find_entry,
-- with their commas) from `list`, and a comma left at its end.
local function cut(list, a, len)
  local out = string.sub(list, 1, a - 1) .. string.sub(list, a + len)
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

-- A step's changes to a subject are counted on its numbers first and written
-- into its lists once, by `flush` and `flush_leases`: however many requests
-- a step carries, each list is copied a few times, not once per request.
-- `fix` holds listed buckets being corrected (their second -> {t, was});
-- `taken` the leases being given back (deadline -> count), `held` how many
-- of a deadline the list holds; `adds` the leases to append, ending at `ends`.
local function pending(st)
  st.fix, st.taken, st.held, st.adds, st.ends = {}, {}, {}, 0, 0
end

-- Corrects the tokens of the listed bucket of second `sec` by `dt` (leaving
-- no fewer than 0), as add_to_bucket does, on the numbers only.
local function correct(st, sec, dt)
  if sec == st.s then return add_to_bucket(st, sec, 0, dt, false) end
  local b = st.fix[sec]
  if b == nil then
    local a = find_entry(st.buckets, string.format('%d', sec), ' ')
    b = false
    if a then
      local _, _, t = string.find(st.buckets, '^%d+ %d+ (%d+)', a)
      t = tonumber(t)
      b = {t = t, was = t}
    end
    st.fix[sec] = b
  end
  if not b then return end
  local nt = math.max(b.t + dt, 0)
  st.t = st.t + nt - b.t
  b.t = nt
end

-- How many leases ending at `d` (a string) follow one another from `a` on.
local function run_of(list, a, d)
  local n, pos = 0, a
  while string.sub(list, pos, pos + #d - 1) == d do
    local c = string.sub(list, pos + #d, pos + #d)
    if c ~= ',' and c ~= '' then break end
    n, pos = n + 1, pos + #d + 1
  end
  return n
end

-- Gives back one lease ending at `d` (a string), if one is held.
local function give_back(st, d)
  local held = st.held[d]
  if held == nil then
    local a = find_entry(st.leases, d, ',')
    held = a and run_of(st.leases, a, d) or 0
  end
  if held > 0 then
    held = held - 1
    st.l = st.l - 1
    st.taken[d] = (st.taken[d] or 0) + 1
  end
  st.held[d] = held
end

-- Writes the corrections and the leases given back into the lists.
local function flush(st)
  for sec, b in pairs(st.fix) do
    if b and b.t ~= b.was then
      local key = string.format('%d', sec)
      local a = find_entry(st.buckets, key, ' ')
      local _, e, r = string.find(st.buckets, '^%d+ (%d+) %d+', a)
      st.buckets = string.sub(st.buckets, 1, a - 1)
        .. string.format('%s %s %d', key, r, b.t) .. string.sub(st.buckets, e + 1)
    end
  end
  for d, n in pairs(st.taken) do
    -- Leases of one deadline sit together: cut n of them in one copy.
    st.leases = cut(st.leases, find_entry(st.leases, d, ','), n * (#d + 1))
  end
  st.fix, st.taken, st.held = {}, {}, {}
end

-- Appends the leases taken since the last flush.
local function flush_leases(st)
  if st.adds > 0 then
    local entry = string.format('%d', st.ends)
    st.leases = append(st.leases, string.rep(entry .. ',', st.adds - 1) .. entry)
    st.adds = 0
  end
end

-- Takes a lease ending at `deadline` (a number): appended at the next
-- flush_leases when it ends last, put in its place at once otherwise.
local function add_lease(st, deadline)
  if deadline >= st.ld and (st.adds == 0 or deadline == st.ends) then
    st.adds, st.ends, st.ld = st.adds + 1, deadline, deadline
  else
    flush_leases(st)
    if deadline >= st.ld then
      st.leases = append(st.leases, string.format('%d', deadline))
      st.ld = deadline
    else
      st.leases = insert(st.leases, string.format('%d', deadline), deadline)
    end
  end
  st.l = st.l + 1
end
