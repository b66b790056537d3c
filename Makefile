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

# The proof of issue 6: rolling restarts under load on real Consul and Nacos, in five ways, against today's practice
# (about 10 minutes). BENCHMARKS.md explains the method and the numbers; CI runs one round (integration/scripts/test.sh).
PROOF_OUT ?= /tmp/lameduck-proof
.PHONY: proof
proof: servers
	go run ./integration/proof -rounds 3 -out $(PROOF_OUT)
