-- lease.lua: lease up to ARGV[2] entries for one worker, oldest first, and renew its heartbeat.
-- Producers LPUSH onto the pending list, so its oldest entry is at the right end.
-- KEYS[1]  pending list
-- KEYS[2]  the worker's in-flight list
-- KEYS[3]  workers sorted set (member: worker id, score: lease deadline, Unix ms)
-- ARGV[1]  worker id
-- ARGV[2]  the most entries to lease
-- ARGV[3]  lease duration in ms
-- Returns the leased raw entries, oldest first.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[1])
local leased = {}
for _ = 1, tonumber(ARGV[2]) do
  local entry = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not entry then break end
  leased[#leased + 1] = entry
end
return leased
