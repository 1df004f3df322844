-- batch-increment with 100 operations over 100,000 counters (sync).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local ops = {}
  for i = 1, 100 do
    ops[i] = '{"resource_id":"bench:' .. math.random(0, 99999) .. '","counter_type":"views","delta":1}'
  end
  return wrk.format(nil, nil, nil, '{"operations":[' .. table.concat(ops, ",") .. '],"async":false}')
end
