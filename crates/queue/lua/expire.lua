-- expire.lua: queued jobs whose deadline has passed become 'expired' and never run (their
-- entries are dropped when leased).
-- KEYS[1]  counters hash
-- ARGV[1]  job record key prefix
-- ARGV[2]  key prefix P
-- ARGV[3]  the most jobs to expire in one call
-- Returns the number expired.
local P = ARGV[2]
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', P .. 'deadlines', '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
local expired = 0
for i = 1, #due, 2 do
  local id, deadline = due[i], tonumber(due[i + 1])
  redis.call('ZREM', P .. 'deadlines', id)
  local key = ARGV[1] .. id
  if redis.call('HGET', key, 'status') == 'queued' then
    local tenant = redis.call('HGET', key, 'tenant') or 'default'
    redis.call('HSET', key, 'status', 'expired', 'finished_at_ms', now, 'error_message',
      'not started before its deadline (checked ' .. (now - deadline) .. ' ms after it); it was never run')
    ended(P, now, { id })
    redis.call('HINCRBY', KEYS[1], 'expired', 1)
    tcount(P, tenant, 'queued', -1)
    tcount(P, tenant, 'expired', 1)
    expired = expired + 1
  end
end
return expired
