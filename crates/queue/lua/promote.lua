-- promote.lua: move retries that are due back to the leased end of the pending list.
-- KEYS[1]  delayed retries sorted set (member: entry, score: due time, Unix ms)
-- KEYS[2]  pending list
-- ARGV[1]  the most entries to move in one call
-- Returns the number moved.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, entry in ipairs(due) do
  redis.call('ZREM', KEYS[1], entry)
  redis.call('RPUSH', KEYS[2], entry)
end
return #due
