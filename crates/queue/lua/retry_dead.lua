-- retry_dead.lua: put one dead letter back on the queue with a fresh retry budget.
-- KEYS[1]  dead-letter list
-- KEYS[2]  pending list
-- KEYS[3]  the job's record hash (ignored when ARGV[3] is '0')
-- ARGV[1]  the dead-letter item, exactly as stored
-- ARGV[2]  the entry to enqueue again
-- ARGV[3]  '1' when the entry has a job id and so a record
-- ARGV[4]  key prefix P
-- Returns 1 when re-queued, 0 when the item was no longer there.
local P = ARGV[4]
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
local tenant, prio = class_of(ARGV[2])
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then
  -- It is no longer an ended job's record, to be forgotten after the retention (nor one
  -- with a TTL, as records were kept once).
  redis.call('PERSIST', KEYS[3])
  local id = redis.call('HGET', KEYS[3], 'id')
  if id then redis.call('ZREM', P .. 'ended', id) end
  redis.call('HSET', KEYS[3], 'status', 'queued', 'attempts', 0)
  redis.call('HDEL', KEYS[3], 'finished_at_ms', 'error_kind', 'error_message')
  tcount(P, tenant, 'queued', 1)
end
push_back(P, KEYS[2], ARGV[2], tenant, prio)
return 1
