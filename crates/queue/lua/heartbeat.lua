-- heartbeat.lua: renew a worker's lease.
-- KEYS[1]  workers sorted set (member: worker id, score: lease deadline, Unix ms)
-- ARGV[1]  worker id
-- ARGV[2]  lease duration in ms
-- Returns 1.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
