-- start.lua: mark leased jobs as running, or drop those that already have a final status
-- and expire those past their deadline. Takes a whole lease batch at once.
-- KEYS[1]    the worker's in-flight list
-- KEYS[2]    job index sorted set (member: job id, score: enqueue time, Unix ms)
-- KEYS[2+i]  the record hash of job i (i = 1..n)
-- ARGV[1]    worker id
-- ARGV[2]    key prefix P
-- ARGV[3]    retention of finished records, in seconds
-- ARGV[4i]   job i's entry as leased (raw, as the producer pushed it)
-- ARGV[4i+1] job i's normalized entry (with job_id); replaces the raw one in the in-flight list
-- ARGV[4i+2] job i's id
-- ARGV[4i+3] job i's deadline (Unix ms), or ''
-- Returns, per job, two items: 'run' and its attempt number, or 'skip' and its final status.
-- The caller dead-letters a job whose attempts exceed its budget (its workers kept dying).
local P = ARGV[2]
local now = now_ms()
local out = {}
for i = 1, #KEYS - 2 do
  local record = KEYS[2 + i]
  local raw, normalized, id, deadline = ARGV[4 * i], ARGV[4 * i + 1], ARGV[4 * i + 2], ARGV[4 * i + 3]
  local status = redis.call('HGET', record, 'status')
  local tenant = class_of(normalized)
  if deadline ~= '' and tonumber(deadline) <= now and not (status and TERMINAL[status]) then
    redis.call('LREM', KEYS[1], 1, raw)
    left_inflight(P, raw)
    if status == 'queued' then tcount(P, tenant, 'queued', -1) end
    if not status then
      redis.call('HSET', record, 'id', id, 'tenant', tenant, 'attempts', 0, 'enqueued_at_ms', now,
        'spec', normalized)
      redis.call('ZADD', KEYS[2], now, id)
      redis.call('ZADD', P .. 'index:' .. tenant, now, id)
    end
    redis.call('HSET', record, 'status', 'expired', 'finished_at_ms', now, 'error_message',
      'not started before its deadline (checked ' .. (now - tonumber(deadline)) .. ' ms after it); it was never run')
    redis.call('EXPIRE', record, tonumber(ARGV[3]))
    redis.call('ZREM', P .. 'deadlines', id)
    redis.call('HINCRBY', P .. 'counters', 'expired', 1)
    tcount(P, tenant, 'expired', 1)
    out[#out + 1] = 'skip'
    out[#out + 1] = 'expired'
  elseif status and TERMINAL[status] then
    redis.call('LREM', KEYS[1], 1, raw)
    left_inflight(P, raw)
    out[#out + 1] = 'skip'
    out[#out + 1] = status
  else
    if raw ~= normalized then
      redis.call('LREM', KEYS[1], 1, raw)
      redis.call('LPUSH', KEYS[1], normalized)
    end
    if status == 'queued' then tcount(P, tenant, 'queued', -1) end
    local attempts = redis.call('HINCRBY', record, 'attempts', 1)
    if not status then
      -- first seen here (pushed straight onto the list): record and index it now
      redis.call('HSET', record, 'id', id, 'tenant', tenant, 'spec', normalized, 'enqueued_at_ms', now)
      redis.call('ZADD', KEYS[2], now, id)
      redis.call('ZADD', P .. 'index:' .. tenant, now, id)
      redis.call('SADD', P .. 'tenant_names', tenant)
    end
    redis.call('ZREM', P .. 'deadlines', id)
    redis.call('HSET', record, 'status', 'running', 'started_at_ms', now, 'worker_id', ARGV[1])
    out[#out + 1] = 'run'
    out[#out + 1] = tostring(attempts)
  end
end
return out
