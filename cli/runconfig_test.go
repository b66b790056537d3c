package cli

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var configDefaults = programConfig{Addr: "127.0.0.1", Budget: 30 * time.Second}

// The example shipped in examples/ parses, and means what its comments say.
func TestRunConfigExample(t *testing.T) {
	t.Parallel()
	rf, err := loadRunConfig(filepath.Join("..", "examples", "run-config.yaml"), configDefaults)
	if err != nil {
		t.Fatalf("examples/run-config.yaml: want it to parse, got %v", err)
	}
	if want := []string{"memory://?push-delay=200ms"}; !slices.Equal(rf.registries, want) {
		t.Errorf("registries: want %q, got %q", want, rf.registries)
	}
	if len(rf.programs) != 2 {
		t.Fatalf("want 2 programs, got %d: %+v", len(rf.programs), rf.programs)
	}
	web, worker := rf.programs[0], rf.programs[1]
	checks := []struct {
		what      string
		got, want any
	}{
		{"web name", web.Name, "web"},
		{"web service", web.Service, "web"},
		{"web port", web.Port, 8080},
		{"web standby", web.Standby, true},
		{"web standby-port", web.StandbyPort, 8081},
		{"web id", web.ID, "web-127.0.0.1-8080"},
		{"web standby-id", web.StandbyID, "web-127.0.0.1-8081"},
		{"web ready", web.Ready, "http://127.0.0.1:{port}/healthz"},
		{"web live", web.Live, "http://127.0.0.1:{port}/healthz"},
		{"web ready-timeout", web.ReadyTimeout, 2 * time.Minute},
		{"web recycle-after", web.RecycleAfter, 24 * time.Hour},
		{"web recycle-rss", web.RecycleRSS, uint64(1 << 30)},
		{"web budget", web.Budget, 25 * time.Second},
		{"web conn-wait", web.ConnWait, 5 * time.Second},
		{"web conn-wait set", web.ConnWaitSet, true},
		{"worker conn-wait set", worker.ConnWaitSet, false},
		{"web command", strings.Join(web.Command, " "), "./bin/web --listen 127.0.0.1:{port}"},
		{"web env", strings.Join(web.Env, " "), "GOMAXPROCS=2"},
		{"web dir", web.Dir, "/srv/web"},
		{"worker service", worker.Service, "worker"},
		{"worker port", worker.Port, 9090},
		{"worker standby-port", worker.StandbyPort, 0},
		{"worker budget", worker.Budget, 30 * time.Second},
		{"worker addr", worker.Addr, "127.0.0.1"},
		{"worker command", strings.Join(worker.Command, " "), "./bin/worker --port {port}"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: want %v, got %v", c.what, c.want, c.got)
		}
	}
}

func TestRunConfigDefaultsAndRewrites(t *testing.T) {
	t.Parallel()
	rf, err := parseRunConfig("a.yaml", []byte(`
programs:
  api:
    service: orders
    port: 7000
    id: orders-1
    recycle-rss: 300MB
    ready: http://localhost:7000/ready?x=1
    command: [./api]
`), programConfig{Addr: "10.0.0.5", Budget: 10 * time.Second})
	if err != nil {
		t.Fatalf("want it to parse, got %v", err)
	}
	p := rf.programs[0]
	if p.Ready != "http://localhost:{port}/ready?x=1" {
		t.Errorf("ready: want the program's own port read as {port}, got %q", p.Ready)
	}
	if p.StandbyPort != 7001 || p.StandbyID != "" || p.ID != "orders-1" {
		t.Errorf("recycling: want standby-port 7001, id orders-1 and the supervisor's default standby ID, got %d, %q, %q", p.StandbyPort, p.ID, p.StandbyID)
	}
	if p.RecycleRSS != 300_000_000 || p.Addr != "10.0.0.5" || p.Budget != 10*time.Second {
		t.Errorf("want recycle-rss 300000000, addr and budget from the command line, got %d, %q, %v", p.RecycleRSS, p.Addr, p.Budget)
	}
}

// --ready-timeout and --pass-env on the command line are every program's
// defaults; a program's keys override them.
func TestRunConfigReadyTimeoutAndPassEnv(t *testing.T) {
	t.Parallel()
	const yaml = "programs:\n  web:\n    port: 8080\n    command: [./web]\n  api:\n    port: 9000\n    ready-timeout: \"0\"\n    pass-env: [NACOS_PASSWORD]\n    command: [./api]\n"
	def := configDefaults
	def.ReadyTimeout, def.PassEnv = time.Minute, []string{"CONSUL_HTTP_TOKEN"}
	rf, err := parseRunConfig("run.yaml", []byte(yaml), def)
	if err != nil {
		t.Fatalf("want it to parse, got %v", err)
	}
	web, api := rf.programs[0], rf.programs[1]
	if web.ReadyTimeout != time.Minute || !slices.Equal(web.PassEnv, []string{"CONSUL_HTTP_TOKEN"}) {
		t.Errorf("web: want the command line's ready-timeout 1m and pass-env [CONSUL_HTTP_TOKEN], got %v and %v", web.ReadyTimeout, web.PassEnv)
	}
	if api.ReadyTimeout != 0 || !slices.Equal(api.PassEnv, []string{"NACOS_PASSWORD"}) {
		t.Errorf("api: want its own ready-timeout 0 and pass-env [NACOS_PASSWORD], got %v and %v", api.ReadyTimeout, api.PassEnv)
	}
	if got, want := api.dropEnv(), []string{"CONSUL_HTTP_TOKEN", "CONSUL_HTTP_AUTH", "NACOS_USERNAME", "LAMEDUCK_ADMIN_TOKEN"}; !slices.Equal(got, want) {
		t.Errorf("api: want the child kept from %v, got %v", want, got)
	}
}

// --conn-wait on the command line is every program's default; a program's
// conn-wait key overrides it, 0 included (no wait).
func TestRunConfigConnWait(t *testing.T) {
	t.Parallel()
	const yaml = "programs:\n  web:\n    port: 8080\n    command: [./web]\n  api:\n    port: 9000\n    conn-wait: \"0\"\n    command: [./api]\n"
	for _, tc := range []struct {
		name         string
		def          programConfig
		wantWeb      time.Duration
		wantWebSet   bool
		wantAPI      time.Duration
		wantAPIIsSet bool
	}{
		{"unset on the command line", configDefaults, 0, false, 0, true},
		{"set on the command line", programConfig{Addr: "127.0.0.1", Budget: 30 * time.Second, ConnWait: 250 * time.Millisecond, ConnWaitSet: true},
			250 * time.Millisecond, true, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rf, err := parseRunConfig("run.yaml", []byte(yaml), tc.def)
			if err != nil {
				t.Fatalf("want it to parse, got %v", err)
			}
			web, api := rf.programs[0], rf.programs[1]
			if web.ConnWait != tc.wantWeb || web.ConnWaitSet != tc.wantWebSet {
				t.Errorf("web: want conn-wait %v (set %v), got %v (set %v)", tc.wantWeb, tc.wantWebSet, web.ConnWait, web.ConnWaitSet)
			}
			if api.ConnWait != tc.wantAPI || api.ConnWaitSet != tc.wantAPIIsSet {
				t.Errorf("api: want conn-wait %v (set %v), got %v (set %v)", tc.wantAPI, tc.wantAPIIsSet, api.ConnWait, api.ConnWaitSet)
			}
		})
	}
}

// Every mistake names the file, the line of the offending value, and what
// to write instead; none quotes a secret.
func TestRunConfigErrors(t *testing.T) {
	t.Parallel()
	const head = "programs:\n  web:\n    port: 8080\n    command: [./web]\n"
	cases := []struct {
		name, yaml, want string
	}{
		{"unknown key", "programs:\n  web:\n    port: 8080\n    command: [./web]\n\n\n    on-failure: always\n",
			`web.yaml:7: unknown key "on-failure" in program "web"; valid keys: addr, budget, command, conn-wait, consumer-lag, dir, env, id, live, pass-env, port, ready, ready-timeout, recycle-after, recycle-rss, report, service, standby, standby-id, standby-port`},
		{"typo suggestion", head + "    comand: [x]\n", `web.yaml:5: unknown key "comand" in program "web" (did you mean "command"?)`},
		{"swapped letters", head + "    stnadby: true\n", `(did you mean "standby"?)`},
		{"unknown top key", "registry: [memory://]\n" + head, `web.yaml:1: unknown key "registry" at the top level (did you mean "registries"?); valid keys: programs, registries`},
		{"credential key", head + "    consul-token: " + secret + "\n", `web.yaml:5: key "consul-token" in program "web": credentials never go in the file`},
		{"credential at top", "nacos-password: " + secret + "\n" + head, `web.yaml:1: key "nacos-password" at the top level: credentials never go in the file`},
		{"port out of range", "programs:\n  web:\n    port: 70000\n    command: [./web]\n", `web.yaml:3: program "web": port 70000: want a port between 1 and 65535`},
		{"port not a number", "programs:\n  web:\n    port: eighty\n    command: [./web]\n", `web.yaml:3: program "web": port "eighty": want a whole number`},
		{"missing command", "programs:\n  web:\n    port: 8080\n", `web.yaml:2: program "web": missing command`},
		{"missing port", "programs:\n  web:\n    command: [./web]\n", `web.yaml:2: program "web": missing port`},
		{"empty command", "programs:\n  web:\n    port: 8080\n    command: []\n", `web.yaml:4: program "web": command is empty`},
		{"command as a string", "programs:\n  web:\n    port: 8080\n    command: ./web --port 8080\n", `web.yaml:4: program "web": command is a single value; want a list`},
		{"bare {port}", "programs:\n  web:\n    port: 8080\n    command: [./web, --port, {port}]\n", `web.yaml:4: program "web": command item 3 is a mapping: YAML reads an unquoted {port} as one; write "{port}" in quotes`},
		{"duplicate program", head + "  web:\n    port: 9000\n    command: [./web]\n", `web.yaml:5: program "web" is defined twice (first at line 2)`},
		{"duplicate key", head + "    port: 8081\n", `web.yaml:5: key "port" appears twice in program "web" (first at line 3)`},
		{"duplicate port", head + "  api:\n    port: 8080\n    command: [./api]\n", `web.yaml:6: program "api": port 8080 is already the port of program "web" (line 3)`},
		{"standby port collides", "programs:\n  web:\n    port: 8080\n    standby: true\n    command: [./web]\n  api:\n    port: 8081\n    command: [./api]\n",
			`web.yaml:7: program "api": port 8081 is already the standby-port of program "web" (line 3)`},
		{"duplicate id", head + "    id: x\n  api:\n    port: 9000\n    id: x\n    command: [./api]\n", `web.yaml:8: program "api": instance ID "x" is already the id of program "web" (line 5)`},
		{"bad duration", head + "    budget: soon\n", `web.yaml:5: program "web": budget "soon": want a positive duration such as 30s`},
		{"zero budget", head + "    budget: 0s\n", `web.yaml:5: program "web": budget "0s": want a positive duration`},
		{"negative recycle-after", head + "    recycle-after: -1h\n", `web.yaml:5: program "web": recycle-after "-1h": want a positive duration`},
		{"negative conn-wait", head + "    conn-wait: -250ms\n", `web.yaml:5: program "web": conn-wait "-250ms": want a duration of 0 or more, such as 250ms`},
		{"conn-wait not a duration", head + "    conn-wait: 250\n", `web.yaml:5: program "web": conn-wait "250": want a duration of 0 or more`},
		{"conn-wait a list", head + "    conn-wait: [1s]\n", `web.yaml:5: program "web": conn-wait is a list; want a single value`},
		{"negative ready-timeout", head + "    ready-timeout: -1s\n", `web.yaml:5: program "web": ready-timeout "-1s": want a duration of 0 or more, such as 5m (0: wait for readiness forever)`},
		{"pass-env not a secret", head + "    pass-env: [PATH]\n", `web.yaml:5: program "web": pass-env PATH: is not a variable lameduck keeps from the child, which inherits every other one anyway; pass-env takes CONSUL_HTTP_TOKEN, CONSUL_HTTP_AUTH, NACOS_USERNAME, NACOS_PASSWORD, LAMEDUCK_ADMIN_TOKEN`},
		{"pass-env a single value", head + "    pass-env: CONSUL_HTTP_TOKEN\n", `web.yaml:5: program "web": pass-env is a single value; want a list of variable names such as [CONSUL_HTTP_TOKEN]`},
		{"pass-env bad name", head + "    pass-env: [\"A=" + secret + "\"]\n", `web.yaml:5: program "web": pass-env item 1: want a variable name, without '='`},
		{"bad size", head + "    recycle-rss: 512M\n", `web.yaml:5: program "web": recycle-rss "512M" is not a size; want one such as 512MiB, 1GiB, 300MB or a number of bytes`},
		{"standby not a bool", head + "    standby: yes\n", `web.yaml:5: program "web": standby "yes": want true or false`},
		{"standby-port alone", head + "    standby-port: 9000\n", `web.yaml:5: program "web": standby-port 9000: is only used with standby, recycle-after or recycle-rss`},
		{"standby-port is port", head + "    standby: true\n    standby-port: 8080\n", `web.yaml:6: program "web": standby-port 8080: is the program's own port`},
		{"no room for standby", "programs:\n  web:\n    port: 65535\n    standby: true\n    command: [./web]\n", `web.yaml:3: program "web": port 65535: leaves no port+1`},
		{"ready not http", head + "    ready: tcp://127.0.0.1:8080\n", `web.yaml:5: program "web": ready "tcp://127.0.0.1:8080": want an http:// or https:// URL`},
		{"ready with credentials", head + "    ready: http://u:" + secret + "@127.0.0.1:8080/\n", `web.yaml:5: program "web": ready "http://***@127.0.0.1:8080/": carries credentials`},
		{"ready on another port with standby", head + "    standby: true\n    ready: http://127.0.0.1:9999/healthz\n", `web.yaml:6: program "web": ready "http://127.0.0.1:9999/healthz": names neither the program's port nor {port}`},
		{"empty value", head + "    dir:\n", `web.yaml:5: program "web": dir is empty; give a value or remove the key`},
		{"env not a mapping", head + "    env: [A=1]\n", `web.yaml:5: program "web": env is a list; want a mapping`},
		{"env bad name", head + "    env: {\"A=B\": " + secret + "}\n", `program "web": env variable name "A=B" (line 5): want a name without '='`},
		{"env value a list", head + "    env:\n      A: [" + secret + "]\n", `program "web": env variable A (line 6): its value is a list`},
		{"program with no settings", "programs:\n  web:\n", `web.yaml:2: program "web" has no settings; give at least port and command`},
		{"program not a mapping", "programs:\n  web: [./web]\n", `web.yaml:2: program "web": want a mapping of settings`},
		{"bad program name", "programs:\n  we b:\n    port: 1\n", `web.yaml:2: program name "we b": use letters, digits`},
		{"programs a list", "programs:\n  - web\n", `web.yaml:2: programs: want a mapping from each program's name`},
		{"no programs", "registries: [memory://]\n", `web.yaml:1: no programs; give programs:`},
		{"empty programs", "programs: {}\n", `web.yaml:1: no programs`},
		{"empty file", "", `web.yaml: is empty`},
		{"only comments", "# nothing\n", `web.yaml: is empty`},
		{"top level a list", "- web\n", `web.yaml:1: want a mapping with programs: at the top`},
		{"syntax error", "programs:\n  web:\n    port: [8080\n", `: not valid YAML: did not find expected ',' or ']'`},
		{"tab indentation", "programs:\n\tweb:\n", `web.yaml:2: not valid YAML: found character that cannot start any token`},
		{"two documents", head + "---\nprograms: {}\n", `web.yaml:5: a second YAML document`},
		{"merge key", "base: &b {port: 1}\nprograms:\n  web:\n    <<: *b\n", `web.yaml:1: unknown key "base"`},
		{"merge key in program", "programs:\n  web:\n    <<: {port: 1}\n", `web.yaml:3: merge keys (<<) are not supported in program "web"`},
		{"registries not a list", "registries: memory://\n" + head, `web.yaml:1: registries: want a list`},
		{"empty registry", "registries: [~]\n" + head, `web.yaml:1: registries: an item is empty`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			_, err := parseRunConfig("web.yaml", []byte(c.yaml), configDefaults)
			if err == nil {
				t.Fatalf("want an error containing %q, got none for:\n%s", c.want, c.yaml)
			}
			var e *exitError
			if !errors.As(err, &e) || e.code != ExitBadInput {
				t.Errorf("want a bad-input error (exit %d), got %#v", ExitBadInput, err)
			}
			msg := err.Error()
			if !strings.Contains(msg, c.want) {
				t.Errorf("want an error containing\n  %q\ngot\n  %q", c.want, msg)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("want one line, got %q", msg)
			}
			if strings.Contains(msg, secret) {
				t.Errorf("want the secret kept out of the error, got %q", msg)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	t.Parallel()
	good := map[string]uint64{
		"0": 0, "1048576": 1 << 20, "512MiB": 512 << 20, "1GiB": 1 << 30, "1gib": 1 << 30, "300MB": 300_000_000,
		"2 KiB": 2048, "1.5GiB": 3 << 29, "10kB": 10_000, "7B": 7, "1TiB": 1 << 40,
	}
	for in, want := range good {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q): want %d, got %d, %v", in, want, got, err)
		}
	}
	for _, in := range []string{"", "512M", "1G", "MiB", "-1MiB", "1..5GiB", "lots", "1e3MB", "99999999999TiB", "NaN"} {
		if got, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q): want an error, got %d", in, got)
		} else if !strings.Contains(err.Error(), "size") {
			t.Errorf("parseSize(%q): want the error to say what a size looks like, got %q", in, err)
		}
	}
}

func TestCheckURL(t *testing.T) {
	t.Parallel()
	cases := []struct {
		raw      string
		port     int
		needPort bool
		want     string // "" when a problem is expected
	}{
		{"http://127.0.0.1:8080/healthz", 8080, false, "http://127.0.0.1:{port}/healthz"},
		{"http://127.0.0.1:8080", 8080, true, "http://127.0.0.1:{port}"},
		{"https://[::1]:8080?x=8080#8080", 8080, true, "https://[::1]:{port}?x=8080#8080"},
		{"http://127.0.0.1:{port}/healthz", 8080, true, "http://127.0.0.1:{port}/healthz"},
		{"http://127.0.0.1:9000/healthz", 8080, false, "http://127.0.0.1:9000/healthz"},
		{"http://127.0.0.1:9000/healthz", 8080, true, ""},
		{"http://127.0.0.1:18080/healthz", 8080, true, ""},
		{"127.0.0.1:8080/healthz", 8080, false, ""},
		{"ftp://127.0.0.1:8080/", 8080, false, ""},
		{"http:///healthz", 8080, false, ""},
	}
	for _, c := range cases {
		got, problem := checkURL(c.raw, c.port, c.needPort)
		if c.want == "" {
			if problem == "" {
				t.Errorf("checkURL(%q, %d, %v): want a problem, got %q", c.raw, c.port, c.needPort, got)
			}
			continue
		}
		if problem != "" || got != c.want {
			t.Errorf("checkURL(%q, %d, %v): want %q, got %q (problem %q)", c.raw, c.port, c.needPort, c.want, got, problem)
		}
	}
}

// writeConfig writes a config file into a fresh directory and returns its
// path.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "run.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// padConfig pads text with a comment to n bytes.
func padConfig(t *testing.T, text string, n int) string {
	t.Helper()
	pad := n - len(text) - len("# \n")
	if pad < 0 {
		t.Fatalf("padConfig: %d bytes do not fit in %d", len(text), n)
	}
	return text + "# " + strings.Repeat("x", pad) + "\n"
}

// A config file of MaxConfigSize bytes is read; one byte more is refused
// (TestRunConfigBadInput) before it is parsed.
func TestRunConfigAtSizeLimit(t *testing.T) {
	t.Parallel()
	text := padConfig(t, "programs:\n  web:\n    port: 8080\n    command: [./web]\n", MaxConfigSize)
	if len(text) != MaxConfigSize {
		t.Fatalf("padConfig: want %d bytes, got %d", MaxConfigSize, len(text))
	}
	rf, err := loadRunConfig(writeConfig(t, text), configDefaults)
	if err != nil || len(rf.programs) != 1 || rf.programs[0].Port != 8080 {
		t.Fatalf("loadRunConfig of a %d-byte file: want program web on port 8080, got %+v, %v", len(text), rf, err)
	}
}

// Through the command line, a config mistake is one line on stderr and
// exit code 2, with no credential in it.
func TestRunConfigBadInput(t *testing.T) {
	t.Parallel()
	good := writeConfig(t, "programs:\n  web:\n    port: 8080\n    command: [./web]\n")
	typo := writeConfig(t, "programs:\n  web:\n    port: 8080\n    command: [./web]\n    retsart: always\n")
	badReg := writeConfig(t, "registries:\n  - memory://\n  - consul://admin:"+secret+"@127.0.0.1:8500\nprograms:\n  web:\n    port: 8080\n    command: [./web]\n")
	noReg := writeConfig(t, "programs:\n  web:\n    port: 8080\n    command: [./web]\n")
	tooBig := writeConfig(t, padConfig(t, "programs:\n  web:\n    port: 8080\n    command: [./web]\n", MaxConfigSize+1))
	runBadInput(t, "run", []badInputCase{
		{"too large", []string{"--registry", "memory://", "--config", tooBig},
			"--config: " + tooBig + " is 1.0 MiB (1048577 bytes), more than the limit of 1 MiB; a run config is a few kilobytes"},
		{"typo", []string{"--registry", "memory://", "--config", typo}, `run.yaml:5: unknown key "retsart" in program "web"`},
		{"missing file", []string{"--registry", "memory://", "--config", filepath.Join(t.TempDir(), "nope.yaml")}, "--config: open"},
		{"config and command", []string{"--registry", "memory://", "--config", good, "--", "./web"}, "--config and a command after -- do not mix"},
		{"config and port", []string{"--registry", "memory://", "--config", good, "--port", "8080"}, "--port is set per program in the config file"},
		{"config and standby", []string{"--registry", "memory://", "--config", good, "--standby"}, "--standby is set per program"},
		{"config budget", []string{"--registry", "memory://", "--config", good, "--budget", "0s"}, "--budget 0s"},
		{"config negative conn-wait", []string{"--registry", "memory://", "--config", good, "--conn-wait", "-1s"}, "--conn-wait -1s: want a duration of 0 or more"},
		{"config negative ready-timeout", []string{"--registry", "memory://", "--config", good, "--ready-timeout", "-1s"}, "--ready-timeout -1s: want a duration of 0 or more, such as 5m"},
		{"config pass-env not a secret", []string{"--registry", "memory://", "--config", good, "--pass-env", "HOME"}, "--pass-env HOME: is not a variable lameduck keeps from the child"},
		{"registry URL in file", []string{"--config", badReg}, "run.yaml:3: registries: adapters: registry URL"},
		{"no registry anywhere", []string{"--config", noReg}, "or list registries: in"},
	})
}
