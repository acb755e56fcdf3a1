-- start.lua: mark a leased job as running, or drop it when it already has a final status.
-- KEYS[1]  the job's record hash
-- KEYS[2]  the worker's in-flight list
-- ARGV[1]  the entry as leased (raw, as the producer pushed it)
-- ARGV[2]  the normalized entry (with job_id); replaces the raw one in the in-flight list
-- ARGV[3]  worker id
-- ARGV[4]  job id
-- Returns {'run', attempts} or {'skip', status}. The caller dead-letters a job whose
-- attempts exceed its budget (its workers kept dying while running it).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'succeeded' or status == 'failed' or status == 'dead' or status == 'cancelled' then
  redis.call('LREM', KEYS[2], 1, ARGV[1])
  return {'skip', status}
end
if ARGV[1] ~= ARGV[2] then
  redis.call('LREM', KEYS[2], 1, ARGV[1])
  redis.call('LPUSH', KEYS[2], ARGV[2])
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSETNX', KEYS[1], 'id', ARGV[4])
redis.call('HSETNX', KEYS[1], 'spec', ARGV[2])
redis.call('HSETNX', KEYS[1], 'enqueued_at_ms', now)
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at_ms', now, 'worker_id', ARGV[3])
return {'run', attempts}
