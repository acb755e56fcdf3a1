-- start.lua: mark leased jobs as running, or drop those that already have a final status.
-- Takes a whole lease batch at once.
-- KEYS[1]    the worker's in-flight list
-- KEYS[2]    job index sorted set (member: job id, score: enqueue time, Unix ms)
-- KEYS[2+i]  the record hash of job i (i = 1..n)
-- ARGV[1]    worker id
-- ARGV[3i-1] job i's entry as leased (raw, as the producer pushed it)
-- ARGV[3i]   job i's normalized entry (with job_id); replaces the raw one in the in-flight list
-- ARGV[3i+1] job i's id
-- Returns, per job, two items: 'run' and its attempt number, or 'skip' and its final status.
-- The caller dead-letters a job whose attempts exceed its budget (its workers kept dying).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 1, #KEYS - 2 do
  local record = KEYS[2 + i]
  local raw, normalized, id = ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
  local status = redis.call('HGET', record, 'status')
  if status == 'succeeded' or status == 'failed' or status == 'dead' or status == 'cancelled' then
    redis.call('LREM', KEYS[1], 1, raw)
    out[#out + 1] = 'skip'
    out[#out + 1] = status
  else
    if raw ~= normalized then
      redis.call('LREM', KEYS[1], 1, raw)
      redis.call('LPUSH', KEYS[1], normalized)
    end
    local attempts = redis.call('HINCRBY', record, 'attempts', 1)
    redis.call('HSETNX', record, 'id', id)
    redis.call('HSETNX', record, 'spec', normalized)
    if redis.call('HSETNX', record, 'enqueued_at_ms', now) == 1 then
      -- first seen here (pushed straight onto the list): index it now
      redis.call('ZADD', KEYS[2], now, id)
    end
    redis.call('HSET', record, 'status', 'running', 'started_at_ms', now, 'worker_id', ARGV[1])
    out[#out + 1] = 'run'
    out[#out + 1] = tostring(attempts)
  end
end
return out
