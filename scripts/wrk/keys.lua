-- 100,000 distinct counters, delta 1, chosen at random per request.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local id = math.random(0, 99999)
  return wrk.format(nil, nil, nil, '{"resource_id":"bench:' .. id .. '","counter_type":"views","delta":1}')
end
