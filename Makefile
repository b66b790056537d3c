# `make test` is the project's test command: README gives it, CI runs it.
.PHONY: test demo servers stop-servers bench

test:
	./integration/scripts/test.sh

demo:
	go run ./cli/lameduck demo

# Start Consul and Nacos on loopback (installing them if needed) and leave them running.
servers:
	./integration/scripts/start-consul.sh
	./integration/scripts/start-nacos.sh

stop-servers:
	./integration/scripts/stop-nacos.sh
	./integration/scripts/stop-consul.sh

bench:
	go test -run '^$$' -bench . -benchmem -count 6 ./drain ./pkg/...
