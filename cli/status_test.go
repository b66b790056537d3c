package cli

import (
	"strings"
	"testing"
)

func TestStatusBadInput(t *testing.T) {
	t.Parallel()
	cases := []badInputCase{
		{"missing service", []string{"--registry", "memory://"}, "missing --service"},
		{"no registry", []string{"--service", "web"}, "--registry"},
		{"unknown scheme", []string{"--registry", "zookeeper://127.0.0.1:2181", "--service", "web"}, `unknown registry scheme "zookeeper"`},
		{"malformed URL", []string{"--registry", "consul://[::1", "--service", "web"}, "does not parse"},
		{"credentials in registry URL", []string{"--registry", "nacos://nacos:" + secret + "@127.0.0.1:8848", "--service", "web"}, "carries credentials"},
		{"output yaml", []string{"--registry", "memory://", "--service", "web", "--output", "yaml"}, "output"},
		{"stray argument", []string{"--registry", "memory://", "--service", "web", "now"}, `unexpected argument "now"`},
	}
	runBadInput(t, "status", cases)
}

// A fresh process's memory registry is empty: a header and "(none)".
func TestStatusMemoryRegistryEmpty(t *testing.T) {
	t.Parallel()
	code, stdout, stderr := run(t, "status", "--registry", "memory://", "--service", "x")
	if code != ExitOK {
		t.Fatalf("want exit code %d, got %d\nstdout: %q\nstderr: %q", ExitOK, code, stdout, stderr)
	}
	if stderr != "" {
		t.Fatalf("want nothing on stderr, got %q", stderr)
	}
	lines := strings.Split(strings.TrimRight(stdout, "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("want a header and one row, got %d lines:\n%s", len(lines), stdout)
	}
	if got := strings.Fields(lines[0]); strings.Join(got, " ") != "REGISTRY INSTANCE ADDRESS PHASE IN FLIGHT" {
		t.Fatalf("want the header REGISTRY INSTANCE ADDRESS PHASE IN FLIGHT, got %q", lines[0])
	}
	if got := strings.Fields(lines[1]); len(got) != 2 || got[0] != "memory://" || got[1] != "(none)" {
		t.Fatalf("want the row \"memory:// (none)\", got %q", lines[1])
	}
}
