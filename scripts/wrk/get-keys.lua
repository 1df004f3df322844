-- GET of 10,000 distinct counters, chosen at random per request.
request = function()
  local id = math.random(0, 9999)
  return wrk.format("GET", "/api/v1/counter/bench:" .. id .. "/views")
end
