-- enqueue.lua: store a new job's record, index it and push it onto the pending list,
-- atomically; with an idempotency key, a repeated key returns the first job instead.
-- KEYS[1]  the job's record hash
-- KEYS[2]  pending list
-- KEYS[3]  the idempotency key's string (ignored when ARGV[4] is '0')
-- KEYS[4]  job index sorted set (member: job id, score: enqueue time, Unix ms)
-- ARGV[1]  the normalized entry
-- ARGV[2]  job id
-- ARGV[3]  retention in seconds (how long an idempotency key is remembered)
-- ARGV[4]  '1' when an idempotency key is given
-- Returns {1, id} when stored, {0, existing id} for a repeated idempotency key,
-- {-1, id} when a job with this id already exists.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[4] == '1' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return {0, existing} end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {-1, ARGV[2]} end
redis.call('HSET', KEYS[1], 'id', ARGV[2], 'status', 'queued', 'attempts', 0,
  'enqueued_at_ms', now, 'spec', ARGV[1])
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[4], now, ARGV[2])
if ARGV[4] == '1' then
  redis.call('SET', KEYS[3], ARGV[2], 'EX', tonumber(ARGV[3]))
end
return {1, ARGV[2]}
