-- start.lua: mark leased jobs as running, or drop those that already have a final status
-- and expire those past their deadline. Takes a whole lease batch at once; what several
-- jobs share (indexes, counters) is written once per call.
-- KEYS[1]    the worker's in-flight list
-- KEYS[2]    job index sorted set (member: job id, score: enqueue time, Unix ms)
-- KEYS[2+i]  the record hash of job i (i = 1..n)
-- ARGV[1]    worker id
-- ARGV[2]    key prefix P
-- ARGV[3]    retention of finished records, in seconds
-- ARGV[6i-2] job i's entry as leased (raw, as the producer pushed it)
-- ARGV[6i-1] job i's normalized entry (with job_id): its record's spec
-- ARGV[6i]   '1' when the normalized entry replaces the raw one in the in-flight list
--            (the raw one has no job id of its own), else '0'
-- ARGV[6i+1] job i's id
-- ARGV[6i+2] job i's deadline (Unix ms), or ''
-- ARGV[6i+3] job i's tenant
-- Returns, per job, two items: 'run' and its attempt number, or 'skip' and its final status.
-- The caller dead-letters a job whose attempts exceed its budget (its workers kept dying).
local P = ARGV[2]
local now = now_ms()
local out = {}
local left, dequeued = {}, {}      -- tenant -> entries leaving in-flight / the queued count
local indexed, by_tenant = {}, {}  -- ZADD arguments for jobs first seen here
local dated = {}                   -- ids whose deadline no longer applies
local function add(t, tenant) t[tenant] = (t[tenant] or 0) + 1 end
-- A job first seen here (pushed straight onto the list): what its record starts with, and
-- its place in the indexes.
local function first_seen(fields, id, tenant, normalized)
  for _, v in ipairs({ 'id', id, 'tenant', tenant, 'spec', normalized, 'enqueued_at_ms', now }) do
    fields[#fields + 1] = v
  end
  indexed[#indexed + 1] = now
  indexed[#indexed + 1] = id
  by_tenant[tenant] = by_tenant[tenant] or {}
  table.insert(by_tenant[tenant], now)
  table.insert(by_tenant[tenant], id)
end
for i = 1, #KEYS - 2 do
  local record = KEYS[2 + i]
  local a = 6 * i - 2
  local raw, normalized, replace = ARGV[a], ARGV[a + 1], ARGV[a + 2] == '1'
  local id, deadline, tenant = ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
  local state = redis.call('HMGET', record, 'status', 'attempts')
  local status = state[1] or nil
  if deadline ~= '' then dated[#dated + 1] = id end
  if deadline ~= '' and tonumber(deadline) <= now and not (status and TERMINAL[status]) then
    redis.call('LREM', KEYS[1], 1, raw)
    add(left, tenant)
    if status == 'queued' then add(dequeued, tenant) end
    local fields = { 'status', 'expired', 'finished_at_ms', now, 'error_message',
      'not started before its deadline (checked ' .. (now - tonumber(deadline)) .. ' ms after it); it was never run' }
    if not status then
      first_seen(fields, id, tenant, normalized)
      fields[#fields + 1] = 'attempts'
      fields[#fields + 1] = 0
    end
    redis.call('HSET', record, unpack(fields))
    redis.call('EXPIRE', record, tonumber(ARGV[3]))
    redis.call('HINCRBY', P .. 'counters', 'expired', 1)
    tcount(P, tenant, 'expired', 1)
    out[#out + 1] = 'skip'
    out[#out + 1] = 'expired'
  elseif status and TERMINAL[status] then
    redis.call('LREM', KEYS[1], 1, raw)
    add(left, tenant)
    out[#out + 1] = 'skip'
    out[#out + 1] = status
  else
    if replace then
      redis.call('LREM', KEYS[1], 1, raw)
      redis.call('LPUSH', KEYS[1], normalized)
    end
    if status == 'queued' then add(dequeued, tenant) end
    local attempts = (tonumber(state[2]) or 0) + 1
    local fields = { 'status', 'running', 'started_at_ms', now, 'worker_id', ARGV[1], 'attempts', attempts }
    if not status then first_seen(fields, id, tenant, normalized) end
    redis.call('HSET', record, unpack(fields))
    out[#out + 1] = 'run'
    out[#out + 1] = tostring(attempts)
  end
end
if #indexed > 0 then
  redis.call('ZADD', KEYS[2], unpack(indexed))
  local names = {}
  for tenant, pairs_ in pairs(by_tenant) do
    redis.call('ZADD', P .. 'index:' .. tenant, unpack(pairs_))
    names[#names + 1] = tenant
  end
  redis.call('SADD', P .. 'tenant_names', unpack(names))
end
if #dated > 0 then redis.call('ZREM', P .. 'deadlines', unpack(dated)) end
for tenant, n in pairs(dequeued) do tcount(P, tenant, 'queued', -n) end
for tenant, n in pairs(left) do tcount(P, tenant, 'running', -n) end
return out
