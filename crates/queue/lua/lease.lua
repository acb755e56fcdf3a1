-- lease.lua: lease up to ARGV[2] entries for one worker by the fair rule (flows.lua), and
-- renew its heartbeat.
-- KEYS[1]  pending list (producers LPUSH; the tail of the default tenant's interactive flow)
-- KEYS[2]  the worker's in-flight list
-- KEYS[3]  workers sorted set (member: worker id, score: lease deadline, Unix ms)
-- ARGV[1]  worker id
-- ARGV[2]  the most entries to lease
-- ARGV[3]  lease duration in ms
-- ARGV[4]  key prefix P
-- ARGV[5]  job record key prefix
-- Entries of jobs that already finished (cancelled while queued, or answered by a worker
-- thought dead) count among the ARGV[2] taken; those of capped tenants are dropped here,
-- the others when started (start.lua).
-- Returns how many entries were taken (dropped ones included), then the leased raw
-- entries in the order taken.
local P = ARGV[4]
redis.call('ZADD', KEYS[3], now_ms() + tonumber(ARGV[3]), ARGV[1])
-- Entries pushed straight onto the pending list make the default flow ready.
if redis.call('LLEN', KEYS[1]) > 0 then activate(P, 0, 'default') end
local running = {}
local leased, taken = take(P, KEYS[1], tonumber(ARGV[2]), running, ARGV[5])
if taken == 0 then return {} end
if #leased > 0 then redis.call('LPUSH', KEYS[2], unpack(leased)) end
for tenant, n in pairs(running) do
  if n ~= 0 then tcount(P, tenant, 'running', n) end
end
table.insert(leased, 1, tostring(taken))
return leased
