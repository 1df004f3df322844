-- One hot counter, delta 1: the seed plan's benchmark.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"resource_id":"bench:hot","counter_type":"likes","delta":1}'
