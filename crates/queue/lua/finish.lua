-- finish.lua: record the outcome of a run and release its lease, idempotently.
-- A job that already has a final status (succeeded, failed, dead, cancelled, expired) is
-- never overwritten, so a duplicate or late delivery cannot corrupt its record.
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
-- ARGV[8]  key prefix P
-- ARGV[9]  tokens the run used (succeeded), for the tenant's per-minute budget
-- ARGV[10..] field/value pairs to set on the record
-- Returns the outcome applied, 'final' when the record was already final, or 'lost'
-- for a retry whose lease had expired (the job was handed back and runs again anyway).
local P = ARGV[8]
local now = now_ms()
local held = redis.call('LREM', KEYS[2], 1, ARGV[1])
local tenant = class_of(ARGV[1])
if held == 1 then left_inflight(P, ARGV[1]) end
local outcome = ARGV[2]
local record = ARGV[7] == '1'
local status = nil
if record then
  status = redis.call('HGET', KEYS[1], 'status')
  if status and TERMINAL[status] then return 'final' end
end
if outcome == 'retry' and held == 0 then
  return 'lost'
end
-- A late answer for a job that was handed back: it no longer waits.
if status == 'queued' then tcount(P, tenant, 'queued', -1) end
local fields = {}
local error_kind = nil
for i = 10, #ARGV do
  fields[#fields + 1] = ARGV[i]
  if ARGV[i] == 'error_kind' and (i - 10) % 2 == 0 then error_kind = ARGV[i + 1] end
end
if error_kind then redis.call('HINCRBY', KEYS[6], 'error:' .. error_kind, 1) end
redis.call('HINCRBY', KEYS[6], outcome, 1)
tcount(P, tenant, outcome, 1)
if outcome == 'retry' then
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[4]), ARGV[1])
  redis.call('HSET', KEYS[1], 'status', 'queued', unpack(fields))
  tcount(P, tenant, 'queued', 1)
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
    local tokens = tonumber(ARGV[9]) or 0
    if tokens > 0 then
      local key = P .. 'tokens:' .. tenant .. ':' .. math.floor(now / 60000)
      redis.call('INCRBY', key, tokens)
      redis.call('EXPIRE', key, 120)
    end
  end
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
end
return outcome
