-- promote.lua: move retries that are due to the front of their flows.
-- KEYS[1]  delayed retries sorted set (member: entry, score: due time, Unix ms)
-- KEYS[2]  pending list
-- ARGV[1]  the most entries to move in one call
-- ARGV[2]  key prefix P
-- Returns the number moved.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[1]))
-- Latest due first, each pushed onto the front: the earliest due is leased first.
for i = #due, 1, -1 do
  redis.call('ZREM', KEYS[1], due[i])
  push_front(ARGV[2], KEYS[2], due[i])
end
return #due
