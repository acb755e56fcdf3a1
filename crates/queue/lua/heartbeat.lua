-- heartbeat.lua: renew a worker's lease and note the models it serves.
-- KEYS[1]  workers sorted set (member: worker id, score: lease deadline, Unix ms)
-- KEYS[2]  models hash (field: model name, value: when a worker last announced it, Unix ms)
-- ARGV[1]  worker id
-- ARGV[2]  lease duration in ms
-- ARGV[3..] the models the worker serves
-- Returns 1.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
for i = 3, #ARGV do
  redis.call('HSET', KEYS[2], ARGV[i], now)
end
return 1
