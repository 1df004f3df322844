-- Increments with an idempotency key each (the counter's ordered path),
-- over 100,000 counters, delta 1; keys random, so a repeat is a rare
-- replay, never a wrong count.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local id = math.random(0, 99999)
  local key = math.random(1, 2147483647) .. "-" .. math.random(1, 2147483647)
  return wrk.format(nil, nil, nil,
    '{"resource_id":"bench:' .. id .. '","counter_type":"views","delta":1,"idempotency_key":"' .. key .. '"}')
end
