package cli

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// envMarker marks env values in the fuzzed config files: errors never quote
// an env value (it may be a secret), so no error may hold the marker unless
// the file has it outside env values too.
const envMarker = "SECRET-"

// FuzzRunConfig feeds --config files to the parser: it never panics; an
// error is a bad-input error of one line that starts with the file name and
// holds no env value; an accepted file has programs whose values are in
// range, and written back out as YAML it parses to the same programs.
func FuzzRunConfig(f *testing.F) {
	example, err := os.ReadFile(filepath.Join("..", "examples", "run-config.yaml"))
	if err != nil {
		f.Fatal(err)
	}
	const head = "programs:\n  web:\n    port: 8080\n    command: [./web]\n"
	for _, s := range []string{
		string(example),
		head,
		head + "    env:\n      TOKEN: " + envMarker + "abc\n      GOMAXPROCS: \"2\"\n",
		head + "    env: {\"A=B\": " + envMarker + "x}\n",
		head + "    env:\n      A: [" + envMarker + "x]\n",
		head + "    standby: true\n    ready: http://127.0.0.1:8080/healthz\n    recycle-rss: 1.5GiB\n    recycle-after: 24h\n",
		head + "    id: x\n  api:\n    port: 9000\n    id: x\n    command: [./api]\n",
		"registries: [memory://, \"consul://127.0.0.1:8500?dc=dc1\"]\n" + head + "    conn-wait: 0s\n    budget: 25s\n",
		"programs:\n  web:\n    port: 65535\n    standby: true\n    command: [./web]\n",
		"programs:\n  web:\n    port: 8080\n    command: [./web, --port, {port}]\n",
		"base: &b {port: 1}\nprograms:\n  web:\n    <<: *b\n",
		"programs:\n  web: &w\n    port: 8080\n    command: [./web]\n  api: *w\n",
		"programs:\n\tweb:\n", "- web\n", "", "---\n---\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rf, err := parseRunConfig("run.yaml", data, configDefaults)
		if err != nil {
			var e *exitError
			msg := err.Error()
			if !errors.As(err, &e) || e.code != ExitBadInput {
				t.Fatalf("parseRunConfig(%q): want a bad-input error, got %#v", data, err)
			}
			if !strings.HasPrefix(msg, "run.yaml:") || strings.ContainsAny(msg, "\r\n") {
				t.Fatalf("parseRunConfig(%q): want one line starting \"run.yaml:\", got %q", data, msg)
			}
			if strings.Contains(msg, envMarker) && onlyInEnvValues(data) {
				t.Fatalf("parseRunConfig(%q): want no env value in the error, got %q", data, msg)
			}
			return
		}
		checkPrograms(t, data, rf)
		again := marshalRunFile(t, rf)
		rf2, err := parseRunConfig("run.yaml", again, configDefaults)
		if err != nil {
			t.Fatalf("parseRunConfig accepted\n%s\nbut not itself written back out:\n%s\nerror: %v", data, again, err)
		}
		for i := range rf.programs {
			rf.programs[i].lines, rf.programs[i].line = nil, 0
			rf2.programs[i].lines, rf2.programs[i].line = nil, 0
		}
		if !reflect.DeepEqual(rf.programs, rf2.programs) || !reflect.DeepEqual(rf.registries, rf2.registries) {
			t.Fatalf("parseRunConfig of\n%s\nwant the same programs written back out as\n%s\nwant %+v\ngot  %+v", data, again, rf.programs, rf2.programs)
		}
	})
}

// checkPrograms fails unless every value of an accepted file is in range.
func checkPrograms(t *testing.T, data []byte, rf *runFile) {
	t.Helper()
	if len(rf.programs) == 0 || len(rf.registries) != len(rf.regLines) {
		t.Fatalf("parseRunConfig(%q): accepted %d programs, %d registries with %d lines", data, len(rf.programs), len(rf.registries), len(rf.regLines))
	}
	names := map[string]bool{}
	for _, p := range rf.programs {
		bad := ""
		switch {
		case names[p.Name] || !validName(p.Name):
			bad = "name"
		case p.Service == "" || p.ID == "":
			bad = "service or id"
		case p.Port < 1 || p.Port > 65535:
			bad = "port"
		case len(p.Command) == 0 || p.Command[0] == "":
			bad = "command"
		case p.Budget <= 0 || p.ConnWait < 0 || p.RecycleAfter < 0 || p.ReadyTimeout < 0 || p.ConsumerLag < 0:
			bad = "a duration"
		case p.needsStandbyPort() && (p.StandbyPort < 1 || p.StandbyPort > 65535 || p.StandbyPort == p.Port || p.StandbyID == p.ID):
			bad = "the standby"
		case !p.needsStandbyPort() && (p.StandbyPort != 0 || p.StandbyID != ""):
			bad = "a standby setting without a standby"
		}
		for _, kv := range p.Env {
			if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
				bad = "env"
			}
		}
		if bad != "" {
			t.Fatalf("parseRunConfig(%q): accepted program %q with a bad %s: %+v", data, p.Name, bad, p)
		}
		names[p.Name] = true
	}
}

// onlyInEnvValues reports whether envMarker, in data, is only in the
// values of programs' env mappings, as far as the YAML reads.
func onlyInEnvValues(data []byte) bool {
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil {
		return false
	}
	envValues := map[*yaml.Node]bool{}
	var walk func(n *yaml.Node, path []string)
	walk = func(n *yaml.Node, path []string) {
		if n == nil {
			return
		}
		if n.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				walk(k, nil)
				if len(path) == 3 && path[0] == "programs" && path[2] == "env" {
					envValues[v] = true
				}
				walk(v, append(path[:len(path):len(path)], k.Value))
			}
			return
		}
		for _, c := range n.Content {
			walk(c, nil)
		}
	}
	var root *yaml.Node = &doc
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		root = doc.Content[0]
	}
	walk(root, []string{})
	total := strings.Count(string(data), envMarker)
	inEnv := 0
	for n := range envValues {
		if n.Kind != yaml.ScalarNode || n.Style != 0 && n.Style != yaml.DoubleQuotedStyle && n.Style != yaml.SingleQuotedStyle {
			return false // an alias, a list, a block scalar: not simply an env value
		}
		inEnv += strings.Count(n.Value, envMarker)
	}
	return total > 0 && inEnv == total
}

// marshalRunFile writes rf as a config file, each value explicit.
func marshalRunFile(t *testing.T, rf *runFile) []byte {
	t.Helper()
	str := func(s string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s} }
	num := func(n uint64) *yaml.Node {
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.FormatUint(n, 10)}
	}
	mapping := func(kv ...*yaml.Node) *yaml.Node { return &yaml.Node{Kind: yaml.MappingNode, Content: kv} }
	seq := func(items []string) *yaml.Node {
		n := &yaml.Node{Kind: yaml.SequenceNode}
		for _, s := range items {
			n.Content = append(n.Content, str(s))
		}
		return n
	}
	programs := mapping()
	for _, p := range rf.programs {
		m := mapping(
			str("service"), str(p.Service), str("addr"), str(p.Addr), str("port"), num(uint64(p.Port)),
			str("id"), str(p.ID), str("command"), seq(p.Command), str("budget"), str(p.Budget.String()),
		)
		add := func(k string, v *yaml.Node) { m.Content = append(m.Content, str(k), v) }
		if p.ConnWaitSet {
			add("conn-wait", str(p.ConnWait.String()))
		}
		if p.Ready != "" {
			add("ready", str(p.Ready))
		}
		if p.Live != "" {
			add("live", str(p.Live))
		}
		add("ready-timeout", str(p.ReadyTimeout.String()))
		add("consumer-lag", str(p.ConsumerLag.String()))
		if p.Report != "" {
			add("report", str(p.Report))
		}
		if len(p.PassEnv) > 0 {
			add("pass-env", seq(p.PassEnv))
		}
		if p.Standby {
			add("standby", &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: "true"})
		}
		if p.needsStandbyPort() {
			add("standby-port", num(uint64(p.StandbyPort)))
		}
		if p.StandbyID != "" {
			add("standby-id", str(p.StandbyID))
		}
		if p.RecycleAfter > 0 {
			add("recycle-after", str(p.RecycleAfter.String()))
		}
		if p.RecycleRSS > 0 {
			add("recycle-rss", str(strconv.FormatUint(p.RecycleRSS, 10)))
		}
		if p.Env != nil {
			env := mapping()
			for _, kv := range p.Env {
				k, v, _ := strings.Cut(kv, "=")
				env.Content = append(env.Content, str(k), str(v))
			}
			add("env", env)
		}
		if p.Dir != "" {
			add("dir", str(p.Dir))
		}
		programs.Content = append(programs.Content, str(p.Name), m)
	}
	root := mapping(str("programs"), programs)
	if rf.registries != nil {
		root.Content = append(root.Content, str("registries"), seq(rf.registries))
	}
	out, err := yaml.Marshal(root)
	if err != nil {
		t.Fatalf("yaml.Marshal: %v", err)
	}
	return out
}
