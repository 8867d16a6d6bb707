-- wrk script for bench/circuit.py: the same load against etcd's v3 JSON gateway and
-- against a micro-os circuit's state API. Every request is prepared once per thread in
-- init(), so wrk spends the same (little) CPU per request on both sides.
--
-- Environment:
--   CIRCUIT_SIDE   etcd | micro-os
--   CIRCUIT_OP     put | get          (get is linearizable on both sides)
--   CIRCUIT_KEYS   how many keys, "k0".."k<N-1>" (default 1000)
--   CIRCUIT_VALUE  value size in bytes (default 128)
--   CIRCUIT_NAME   the circuit (micro-os; default bench)
--   CIRCUIT_TOKEN  the API token (micro-os)
-- done() prints one line of JSON: requests, duration, errors, latency percentiles (µs).

local side = os.getenv("CIRCUIT_SIDE") or "etcd"
local op = os.getenv("CIRCUIT_OP") or "put"
local nkeys = tonumber(os.getenv("CIRCUIT_KEYS") or "1000")
local vsize = tonumber(os.getenv("CIRCUIT_VALUE") or "128")
local circuit = os.getenv("CIRCUIT_NAME") or "bench"
local token = os.getenv("CIRCUIT_TOKEN") or ""

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function b64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local q = {math.floor(n / 262144) % 64, math.floor(n / 4096) % 64, math.floor(n / 64) % 64, n % 64}
    for j = 1, 4 do
      if (j == 3 and not b) or (j == 4 and not c) then
        out[#out + 1] = "="
      else
        out[#out + 1] = b64chars:sub(q[j] + 1, q[j] + 1)
      end
    end
  end
  return table.concat(out)
end

-- the value of key k: the key, "=", then "v" up to the size (bench/circuit.py's value())
local function value(key)
  return (key .. "=" .. string.rep("v", vsize)):sub(1, vsize)
end

-- each thread starts at another place in the key space
local next_id = 0
function setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
end

local reqs = {}
local counter = 0

function init(args)
  for i = 0, nkeys - 1 do
    local key = "k" .. i
    local r
    if side == "etcd" then
      local hdr = {["Content-Type"] = "application/json"}
      if op == "put" then
        r = wrk.format("POST", "/v3/kv/put", hdr,
          string.format('{"key":"%s","value":"%s"}', b64(key), b64(value(key))))
      else
        r = wrk.format("POST", "/v3/kv/range", hdr, string.format('{"key":"%s"}', b64(key)))
      end
    else
      local path = "/api/v1/circuits/" .. circuit .. "/state/" .. key
      local hdr = {["Authorization"] = "Bearer " .. token}
      if op == "put" then
        hdr["Content-Type"] = "application/json"
        r = wrk.format("PUT", path, hdr, string.format('{"value":"%s"}', value(key)))
      else
        r = wrk.format("GET", path, hdr)
      end
    end
    reqs[i + 1] = r
  end
  counter = ((thread_id or 0) * 487) % nkeys
end

function request()
  counter = counter + 1
  return reqs[(counter % nkeys) + 1]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"status_errors":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
