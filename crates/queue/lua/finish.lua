-- finish.lua: record the outcome of a run and release its lease, idempotently.
-- A job that already has a final status (succeeded, failed, dead, cancelled) is never
-- overwritten, so a duplicate or late delivery cannot corrupt its record.
-- KEYS[1]  the job's record hash
-- KEYS[2]  the worker's in-flight list
-- KEYS[3]  result:{id}, the prototype-compatible answer string
-- KEYS[4]  delayed retries sorted set (member: entry, score: due time, Unix ms)
-- KEYS[5]  dead-letter list
-- KEYS[6]  counters hash (outcomes and error kinds, for metrics)
-- ARGV[1]  the entry as held in the in-flight list
-- ARGV[2]  outcome: succeeded | retry | failed | dead
-- ARGV[3]  retention of finished records and answers, in seconds
-- ARGV[4]  retry delay in ms (retry)
-- ARGV[5]  the answer text (succeeded)
-- ARGV[6]  the dead-letter entry, JSON (dead)
-- ARGV[7]  '1' to write the record, '0' when the entry has no job id
-- ARGV[8..] field/value pairs to set on the record
-- Returns the outcome applied, 'final' when the record was already final, or 'lost'
-- for a retry whose lease had expired (the job was handed back and runs again anyway).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = redis.call('LREM', KEYS[2], 1, ARGV[1])
local outcome = ARGV[2]
local record = ARGV[7] == '1'
if record then
  local status = redis.call('HGET', KEYS[1], 'status')
  if status == 'succeeded' or status == 'failed' or status == 'dead' or status == 'cancelled' then
    return 'final'
  end
end
if outcome == 'retry' and held == 0 then
  return 'lost'
end
local fields = {}
local error_kind = nil
for i = 8, #ARGV do
  fields[#fields + 1] = ARGV[i]
  if ARGV[i] == 'error_kind' and (i - 8) % 2 == 0 then error_kind = ARGV[i + 1] end
end
if error_kind then redis.call('HINCRBY', KEYS[6], 'error:' .. error_kind, 1) end
redis.call('HINCRBY', KEYS[6], outcome, 1)
if outcome == 'retry' then
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[4]), ARGV[1])
  redis.call('HSET', KEYS[1], 'status', 'queued', unpack(fields))
  return 'retry'
end
if outcome == 'dead' then
  redis.call('LPUSH', KEYS[5], ARGV[6])
end
if record then
  redis.call('HSET', KEYS[1], 'status', outcome, 'finished_at_ms', now, unpack(fields))
  if outcome == 'succeeded' then
    redis.call('HSET', KEYS[1], 'result', ARGV[5])
    redis.call('HDEL', KEYS[1], 'error_kind', 'error_message')
    redis.call('SET', KEYS[3], ARGV[5], 'EX', tonumber(ARGV[3]))
  end
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
end
return outcome
