"""The Lua scripts the store runs (registered once per store, in `StoreBase`): the atomic write of a
result with its summary, indexes and series points (`_PUT_RESULT`), the points alone for an import
(`_APPEND_POINTS`), a report's fetch of summaries (`_FETCH_SUMMARIES`, `_FETCH_JOINED`) and the
rewrite of one result under a new spec hash (`_REHASH_RESULT`).

A result, its summary and its index entries are written by one script, atomically: a redelivered
job whose result exists changes nothing.
"""

from __future__ import annotations

# Lua appended to a write script: ARGV[base] the number n of series, then n points, n series ids and
# n meta JSONs (each starting `[<epoch>,`); KEYS[kbase] the meta hash, KEYS[kbase+1..kbase+n] the
# series keys. A meta entry is replaced when its latest finish time is not later than this one.
_ADD_POINTS = """
local function add_points(kbase, base)
  local n = tonumber(ARGV[base])
  for j = 1, n do
    redis.call('APPEND', KEYS[kbase + j], ARGV[base + j])
    local sid, meta = ARGV[base + n + j], ARGV[base + 2 * n + j]
    local cur = redis.call('HGET', KEYS[kbase], sid)
    local at = tonumber(string.match(meta, '^%[([^,]+),'))
    if (not cur) or (tonumber(string.match(cur, '^%[([^,]+),')) or -math.huge) <= at then
      redis.call('HSET', KEYS[kbase], sid, meta)
    end
  end
end
"""
_APPEND_POINTS = _ADD_POINTS + "add_points(1, 1)\nreturn 1\n"

# KEYS[1] result key, KEYS[2] summary key, KEYS[3] `meta`, KEYS[4] the series meta hash, KEYS[5..4+n]
# the series keys, then the index keys (`idx:all` first); ARGV[1] the stored result, ARGV[2] score,
# ARGV[3] job id, ARGV[4] "1" to overwrite, ARGV[5] its summary ("": none), ARGV[6..6+3n] the points
# (`_ADD_POINTS`), then SERIES_VERSION, SPEC_HASH_VERSION and DEVICE_INDEX_VERSION (recorded by the first write into an
# empty farm). Returns 1 when written, 0 when a result already existed.
_PUT_RESULT = (
    _ADD_POINTS
    + """
local written
if ARGV[4] == '1' then
  redis.call('SET', KEYS[1], ARGV[1])
  written = 1
else
  written = redis.call('SET', KEYS[1], ARGV[1], 'NX') and 1 or 0
end
if written == 1 then
  if ARGV[5] ~= '' then redis.call('SET', KEYS[2], ARGV[5]) else redis.call('DEL', KEYS[2]) end
  local n = tonumber(ARGV[6])
  -- The first result of an empty farm: nothing older needs filing into series (`backfill_series`)
  -- or re-hashing (`migrate_spec_hashes`).
  if redis.call('ZCARD', KEYS[5 + n]) == 0 then
    redis.call('HSETNX', KEYS[3], 'series_version', ARGV[7 + 3 * n])
    redis.call('HSETNX', KEYS[3], 'spec_hash_version', ARGV[8 + 3 * n])
    redis.call('HSETNX', KEYS[3], 'device_index_version', ARGV[9 + 3 * n])
  end
  for i = 5 + n, #KEYS do redis.call('ZADD', KEYS[i], ARGV[2], ARGV[3]) end
  add_points(4, 6)
end
return written
"""
)

# KEYS[1..n] summary keys, KEYS[n+1..2n] result keys: each summary, or false when absent or stale
# (a summary starts with the byte length of the stored result it was derived from).
_FETCH_SUMMARIES = """
local n = #KEYS / 2
local out = {}
for i = 1, n do
  local s = redis.call('GET', KEYS[i])
  if s and tonumber(string.match(s, '^%[(%d+),')) ~= redis.call('STRLEN', KEYS[n + i]) then s = false end
  out[i] = s or false
end
return out
"""
# The same, joined into one reply: the summaries (`null` where none) separated by commas, so that
# the client reads one string instead of parsing a thousand replies. A summary that is not one JSON
# value (only a damaged or hostile one) spoils the join; the reader then falls back to the above.
_FETCH_JOINED = """
local n = #KEYS / 2
local out = {}
for i = 1, n do
  local s = redis.call('GET', KEYS[i])
  if s and tonumber(string.match(s, '^%[(%d+),')) ~= redis.call('STRLEN', KEYS[n + i]) then s = false end
  out[i] = s or 'null'
end
return table.concat(out, ',')
"""

# KEYS[1] result, KEYS[2] idx:spec:<new>, KEYS[3] idx:spec:<old>, KEYS[4] summary; ARGV[1] the result
# as read, ARGV[2] it under the new hash (packed), ARGV[3] score, ARGV[4] job id. Changes nothing (and
# returns 0) when the result was replaced since it was read.
_REHASH_RESULT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZREM', KEYS[3], ARGV[4])
redis.call('DEL', KEYS[4])
return 1
"""
