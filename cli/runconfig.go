package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net/url"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/lameduck/lameduck/adapters"
	"github.com/lameduck/lameduck/internal/readcap"
	"github.com/lameduck/lameduck/pkg/probe"
	"github.com/lameduck/lameduck/pkg/report"
	"github.com/lameduck/lameduck/registry"
)

// programConfig is one supervised program: from the flags of `lameduck run`,
// or from one entry under programs: in a --config file, whose keys are the
// flags' names.
type programConfig struct {
	Name         string // output prefix and metrics label
	Service      string
	Addr         string
	Port         int
	ID           string
	Standby      bool
	StandbyPort  int
	StandbyID    string
	RecycleAfter time.Duration
	RecycleRSS   uint64
	Ready, Live  string        // check URLs; "" means the default (TCP connect) and none
	ReadyTimeout time.Duration // 0: wait for readiness forever
	Budget       time.Duration
	ConsumerLag  time.Duration // drain.WithConsumerLag
	Report       string        // where each offline's report goes; "" for none
	ConnWait     time.Duration // with ConnWaitSet: the most the offline waits for connections to close
	ConnWaitSet  bool          // false: the wait lasts until the deadline
	Command      []string      // argv; Command[0] is the program
	Env          []string      // KEY=VALUE, added to lameduck's environment
	PassEnv      []string      // secret variables (secretEnv) the child may inherit all the same
	Dir          string

	// From a config file: the line of each key's value, and of the
	// program's name. Zero for flags.
	lines map[string]int
	line  int
}

// needsStandbyPort reports whether the program runs a second copy at times:
// a warm standby, or recycling (which starts the replacement first).
func (p *programConfig) needsStandbyPort() bool {
	return p.Standby || p.RecycleAfter > 0 || p.RecycleRSS > 0
}

// instance is the registry entry of the program's first copy.
func (p *programConfig) instance() registry.Instance {
	return registry.Instance{Service: p.Service, ID: p.ID, Address: p.Addr, Port: p.Port}
}

// fieldError is a problem with one flag or config key. It is rendered as
// "--key value: msg" for flags and "key value: msg" in a config file.
type fieldError struct {
	key, value string
	missing    bool
	msg        string
}

func (e *fieldError) render(prefix string) string {
	if e.missing {
		return fmt.Sprintf("missing %s%s; %s", prefix, e.key, e.msg)
	}
	return fmt.Sprintf("%s%s %s: %s", prefix, e.key, e.value, e.msg)
}

func (e *fieldError) Error() string { return e.render("") }

// finish fills in what depends on other fields (the standby port, instance
// IDs, {port} in check URLs) and checks the program. Its error is a
// *fieldError.
func (p *programConfig) finish() error {
	switch {
	case len(p.Command) == 0 || p.Command[0] == "":
		return &fieldError{key: "command", missing: true, msg: "give the program to run and its arguments"}
	case p.Service == "":
		return &fieldError{key: "service", missing: true, msg: "name the service the program serves"}
	case p.Port < 1 || p.Port > 65535:
		return &fieldError{key: "port", value: strconv.Itoa(p.Port), msg: "give the port the program serves on (1-65535)"}
	case p.Budget <= 0:
		return &fieldError{key: "budget", value: p.Budget.String(), msg: "want a positive duration such as 30s"}
	case p.ConnWait < 0:
		return &fieldError{key: "conn-wait", value: p.ConnWait.String(), msg: "want a duration of 0 or more, such as 250ms (0: no wait for connections)"}
	case p.RecycleAfter < 0:
		return &fieldError{key: "recycle-after", value: p.RecycleAfter.String(), msg: "want a positive duration such as 24h, or 0 for no age limit"}
	case p.ReadyTimeout < 0:
		return &fieldError{key: "ready-timeout", value: p.ReadyTimeout.String(), msg: readyTimeoutWant}
	case p.ConsumerLag < 0:
		return &fieldError{key: "consumer-lag", value: p.ConsumerLag.String(), msg: consumerLagWant}
	}
	if p.Report != "" {
		if err := report.CheckPath(p.Report); err != nil {
			return &fieldError{key: "report", value: p.Report, msg: err.Error()}
		}
	}
	for _, name := range p.PassEnv {
		if !slices.Contains(secretEnv(), name) {
			return &fieldError{key: "pass-env", value: name, msg: passEnvWant}
		}
	}
	if !p.needsStandbyPort() {
		if p.StandbyPort != 0 {
			return &fieldError{key: "standby-port", value: strconv.Itoa(p.StandbyPort), msg: "is only used with standby, recycle-after or recycle-rss; add one or drop it"}
		}
		if p.StandbyID != "" {
			return &fieldError{key: "standby-id", value: strconv.Quote(p.StandbyID), msg: "is only used with standby, recycle-after or recycle-rss; add one or drop it"}
		}
	} else {
		if p.StandbyPort == 0 {
			if p.Port == 65535 {
				return &fieldError{key: "port", value: "65535", msg: "leaves no port+1 for the second copy; give standby-port"}
			}
			p.StandbyPort = p.Port + 1
		}
		switch {
		case p.StandbyPort < 1 || p.StandbyPort > 65535:
			return &fieldError{key: "standby-port", value: strconv.Itoa(p.StandbyPort), msg: "want a port between 1 and 65535 for the second copy"}
		case p.StandbyPort == p.Port:
			return &fieldError{key: "standby-port", value: strconv.Itoa(p.StandbyPort), msg: "is the program's own port; give the second copy another one"}
		}
	}
	if p.ID == "" {
		p.ID = fmt.Sprintf("%s-%s-%d", p.Service, p.Addr, p.Port)
		if p.needsStandbyPort() && p.StandbyID == "" {
			p.StandbyID = fmt.Sprintf("%s-%s-%d", p.Service, p.Addr, p.StandbyPort)
		}
	}
	if p.StandbyID != "" && p.StandbyID == p.ID {
		return &fieldError{key: "standby-id", value: strconv.Quote(p.StandbyID), msg: "is the first copy's ID; the two copies need different IDs"}
	}
	for _, f := range []struct {
		key string
		url *string
	}{{"ready", &p.Ready}, {"live", &p.Live}} {
		if *f.url == "" {
			continue
		}
		u, problem := checkURL(*f.url, p.Port, p.needsStandbyPort())
		if problem != "" {
			return &fieldError{key: f.key, value: strconv.Quote(redactURL(*f.url)), msg: problem}
		}
		*f.url = u
	}
	if err := p.instance().Validate(); err != nil {
		return &fieldError{key: "addr", value: strconv.Quote(p.Addr), msg: strings.TrimPrefix(err.Error(), "registry: ")}
	}
	return nil
}

// checkDefaults checks the command line's defaults for a --config file's
// programs, as flags.
func (p *programConfig) checkDefaults() error {
	switch {
	case p.Budget <= 0:
		return badInput("--budget %v: want a positive duration such as 30s", p.Budget)
	case p.ConnWait < 0:
		return badInput("--conn-wait %v: want a duration of 0 or more, such as 250ms (0: no wait for connections)", p.ConnWait)
	case p.ReadyTimeout < 0:
		return badInput("--ready-timeout %v: %s", p.ReadyTimeout, readyTimeoutWant)
	case p.ConsumerLag < 0:
		return badInput("--consumer-lag %v: %s", p.ConsumerLag, consumerLagWant)
	}
	for _, name := range p.PassEnv {
		if !slices.Contains(secretEnv(), name) {
			return badInput("--pass-env %s: %s", name, passEnvWant)
		}
	}
	return nil
}

const readyTimeoutWant = "want a duration of 0 or more, such as 5m (0: wait for readiness forever)"

const consumerLagWant = "want a duration of 0 or more, such as 35s (the consumers' cache refresh interval)"

var passEnvWant = "is not a variable lameduck keeps from the child, which inherits every other one anyway; pass-env takes " + strings.Join(secretEnv(), ", ")

// dropEnv is what the child must not inherit: every secret variable but
// those the program passes.
func (p *programConfig) dropEnv() []string {
	return slices.DeleteFunc(secretEnv(), func(name string) bool { return slices.Contains(p.PassEnv, name) })
}

// checkURL checks a readiness or liveness URL and writes {port} in place of
// the program's own port, so that each copy is checked on its own port. With
// two copies (needPort) a URL must name the copy's port, else both copies
// would be judged by one of them. It returns the URL to use, or a problem.
func checkURL(raw string, port int, needPort bool) (string, string) {
	const example = "such as http://127.0.0.1:{port}/healthz"
	u, err := url.Parse(strings.ReplaceAll(raw, probe.PortPlaceholder, "1"))
	switch {
	case err != nil, u.Scheme != "http" && u.Scheme != "https", u.Host == "":
		return "", "want an http:// or https:// URL " + example
	case u.User != nil:
		return "", "carries credentials; checks send none, so leave them out"
	}
	if !strings.Contains(raw, probe.PortPlaceholder) && u.Port() == strconv.Itoa(port) {
		// url.Parse accepted it, so the authority ends with ":port".
		start := strings.Index(raw, "://") + 3
		end := len(raw)
		if k := strings.IndexAny(raw[start:], "/?#"); k >= 0 {
			end = start + k
		}
		raw = raw[:end-len(u.Port())] + probe.PortPlaceholder + raw[end:]
	}
	if needPort && !strings.Contains(raw, probe.PortPlaceholder) {
		return "", "names neither the program's port nor {port}, so both copies would be checked on one port; write {port} where the copy's port goes, " + example
	}
	return raw, ""
}

// redactURL replaces the user info of a URL, if any, with "***", so that
// an error can show the rest.
func redactURL(raw string) string {
	start := strings.Index(raw, "://")
	if start < 0 {
		return raw
	}
	start += 3
	end := len(raw)
	if k := strings.IndexAny(raw[start:], "/?#"); k >= 0 {
		end = start + k
	}
	if at := strings.LastIndex(raw[start:end], "@"); at >= 0 {
		return raw[:start] + "***" + raw[start+at:]
	}
	return raw
}

// parseSize reads a byte count: a plain number of bytes, or a number and a
// unit: B, kB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of
// 1024), in any letter case, with an optional space between.
func parseSize(s string) (uint64, error) {
	bad := fmt.Errorf("%q is not a size; want one such as 512MiB, 1GiB, 300MB or a number of bytes", s)
	t := strings.TrimSpace(s)
	k := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if k >= 0 {
		num, unit = t[:k], strings.TrimSpace(t[k:])
	}
	units := map[string]float64{
		"": 1, "b": 1,
		"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
		"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
	}
	mult, ok := units[strings.ToLower(unit)]
	if !ok || num == "" {
		return 0, bad
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, bad
	}
	v := f * mult
	if v >= 1<<63 {
		return 0, fmt.Errorf("%q is too large a size", s)
	}
	return uint64(v), nil
}

// runFile is a parsed --config file.
type runFile struct {
	registries []string
	regLines   []int // the line of each registry URL
	programs   []programConfig
}

// fileYAML is a --config file as written, decoded with KnownFields: its
// yaml tags are the file's keys, and a program's keys are the `lameduck run`
// flags of the same names. Each value type checks what was written and
// says what to write instead (see valueError). Durations stay text until
// the program is built, because their limits depend on the key.
type fileYAML struct {
	Registries registryList           `yaml:"registries"`
	Programs   map[string]programYAML `yaml:"programs"`
}

type programYAML struct {
	Service      text    `yaml:"service"`
	Addr         text    `yaml:"addr"`
	Port         port    `yaml:"port"`
	ID           text    `yaml:"id"`
	Ready        text    `yaml:"ready"`
	ReadyTimeout text    `yaml:"ready-timeout"`
	Live         text    `yaml:"live"`
	Budget       text    `yaml:"budget"`
	ConsumerLag  text    `yaml:"consumer-lag"`
	Report       text    `yaml:"report"`
	ConnWait     text    `yaml:"conn-wait"`
	Standby      flag    `yaml:"standby"`
	StandbyPort  port    `yaml:"standby-port"`
	StandbyID    text    `yaml:"standby-id"`
	RecycleAfter text    `yaml:"recycle-after"`
	RecycleRSS   size    `yaml:"recycle-rss"`
	Command      command `yaml:"command"`
	Env          env     `yaml:"env"`
	PassEnv      names   `yaml:"pass-env"`
	Dir          text    `yaml:"dir"`
}

// The keys of a config file, for errors and suggestions.
var (
	topKeys     = yamlKeys(reflect.TypeFor[fileYAML]())
	programKeys = yamlKeys(reflect.TypeFor[programYAML]())
)

func yamlKeys(t reflect.Type) []string {
	keys := make([]string, t.NumField())
	for i := range keys {
		keys[i] = t.Field(i).Tag.Get("yaml")
	}
	slices.Sort(keys)
	return keys
}

// configError is a problem at a line of a config file.
func configError(file string, line int, format string, args ...any) error {
	if line > 0 {
		return badInput("%s:%d: %s", file, line, fmt.Sprintf(format, args...))
	}
	return badInput("%s: %s", file, fmt.Sprintf(format, args...))
}

// keyError is a problem with the value of key, in program prog or, when
// prog is "", at the top level.
func keyError(file string, line int, prog, key, msg string) error {
	if prog == "" {
		return configError(file, line, "%s: %s", key, msg)
	}
	return configError(file, line, "program %q: %s %s", prog, key, msg)
}

func whereIs(prog string) string {
	if prog == "" {
		return "at the top level"
	}
	return fmt.Sprintf("in program %q", prog)
}

// MaxConfigSize is the largest --config file `lameduck run` reads. A run
// config is a few kilobytes; the cap keeps a wrong file (a log, an image)
// from being read and parsed whole: a 200 MiB one took 1.1 GB and 13s to be
// refused as bad YAML.
const MaxConfigSize = 1 << 20

// loadRunConfig reads and checks a --config file. def holds the defaults
// the command line gives every program (addr, budget).
func loadRunConfig(path string, def programConfig) (*runFile, error) {
	data, err := readcap.ReadFile(path, MaxConfigSize)
	if tl := (*readcap.TooLargeError)(nil); errors.As(err, &tl) {
		return nil, badInput("--config: %v; a run config is a few kilobytes, is it the right file?", err)
	}
	if err != nil {
		return nil, badInput("--config: %v", err)
	}
	return parseRunConfig(filepath.Base(path), data, def)
}

// parseRunConfig parses a config file's contents; file names it in errors.
// Every error is one line that starts with "file:line:" and never quotes a
// value that could be secret (env values).
func parseRunConfig(file string, data []byte, def programConfig) (*runFile, error) {
	l, err := readLayout(file, data)
	if err != nil {
		return nil, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var f fileYAML
	if err := dec.Decode(&f); err != nil {
		return nil, l.decodeError(file, err)
	}
	if l.merge != nil {
		return nil, configError(file, l.merge.Line, "merge keys (<<) are not supported %s; write the keys out", whereIs(l.mergeIn))
	}
	rf := &runFile{registries: f.Registries.urls, regLines: f.Registries.lines}
	for _, at := range l.programs {
		p, err := at.config(file, f.Programs[at.name.Value], def)
		if err != nil {
			return nil, err
		}
		rf.programs = append(rf.programs, p)
	}
	if err := checkAcross(file, rf.programs); err != nil {
		return nil, err
	}
	return rf, nil
}

// layout is where a config file's parts are, read from its node tree
// before the typed decoding: the order of the programs and the lines of
// their keys, which the decoded values do not keep, and the mistakes
// whose errors need them.
type layout struct {
	programs []programAt
	owners   map[[2]int]owner // by the line and column of a value
	merge    *yaml.Node       // the first merge key (<<), refused once decoding has reported unknown keys
	mergeIn  string           // its program, or "" at the top level
}

// programAt is one entry under programs:.
type programAt struct {
	name     *yaml.Node
	keyLines map[string]int // the line of each key
	lines    map[string]int // the line of each key's value
}

// owner is whose value a node is: the key's, in program prog or, when prog
// is "", at the top level.
type owner struct{ prog, key string }

// readLayout refuses an empty file, bad YAML, a second document, and a
// shape other than a mapping of programs, each a mapping of settings.
func readLayout(file string, data []byte) (*layout, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc, next yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, configError(file, 0, "is empty; it needs programs:, see examples/run-config.yaml")
		}
		return nil, yamlSyntaxError(file, err)
	}
	switch err := dec.Decode(&next); {
	case err == nil:
		return nil, configError(file, next.Line, "a second YAML document; put every program under one programs:")
	case !errors.Is(err, io.EOF):
		return nil, yamlSyntaxError(file, err)
	}
	root := resolve(&doc)
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = resolve(root.Content[0])
	}
	if root.Kind != yaml.MappingNode {
		return nil, configError(file, root.Line, "want a mapping with programs: at the top, see examples/run-config.yaml")
	}
	l := &layout{owners: map[[2]int]owner{}}
	if _, _, err := l.keys(file, root, ""); err != nil {
		return nil, err
	}
	var programs *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value == "programs" {
			programs = resolve(root.Content[i+1])
		}
	}
	switch {
	case programs == nil, programs.Tag == "!!null", programs.Kind == yaml.MappingNode && len(programs.Content) == 0:
		line := root.Line
		if programs != nil {
			line = programs.Line
		}
		return nil, configError(file, line, "no programs; give programs: with one entry per program, see examples/run-config.yaml")
	case programs.Kind != yaml.MappingNode:
		return nil, configError(file, programs.Line, "programs: want a mapping from each program's name to its settings, see examples/run-config.yaml")
	}
	names := map[string]int{}
	for i := 0; i+1 < len(programs.Content); i += 2 {
		k, v := resolve(programs.Content[i]), resolve(programs.Content[i+1])
		if k.Kind != yaml.ScalarNode || !validName(k.Value) {
			return nil, configError(file, k.Line, "program name %q: use letters, digits, '.', '_' and '-'", scalarText(k))
		}
		if first, dup := names[k.Value]; dup {
			return nil, configError(file, k.Line, "program %q is defined twice (first at line %d)", k.Value, first)
		}
		names[k.Value] = k.Line
		switch {
		case v.Tag == "!!null":
			return nil, configError(file, k.Line, "program %q has no settings; give at least port and command", k.Value)
		case v.Kind != yaml.MappingNode:
			return nil, configError(file, v.Line, "program %q: want a mapping of settings such as port: 8080, got a %s", k.Value, kindName(v))
		}
		keyLines, lines, err := l.keys(file, v, k.Value)
		if err != nil {
			return nil, err
		}
		l.programs = append(l.programs, programAt{name: k, keyLines: keyLines, lines: lines})
	}
	return l, nil
}

// keys checks the keys of mapping m, at the top level (prog "") or of
// program prog: each a name, written once, and a program's known keys not
// left empty (yaml.v3 hands no null to a value type). It returns the line
// of each key and of its value, and notes the first merge key.
func (l *layout) keys(file string, m *yaml.Node, prog string) (keyLines, lines map[string]int, err error) {
	keyLines, lines = map[string]int{}, map[string]int{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := resolve(m.Content[i]), m.Content[i+1]
		r := resolve(v)
		switch {
		case k.Kind != yaml.ScalarNode:
			return nil, nil, configError(file, k.Line, "a %s used as a key %s; keys are names such as port", kindName(k), whereIs(prog))
		case k.Tag == "!!merge":
			if l.merge == nil {
				l.merge, l.mergeIn = k, prog
			}
			continue
		}
		if first, dup := keyLines[k.Value]; dup {
			return nil, nil, configError(file, k.Line, "key %q appears twice %s (first at line %d)", k.Value, whereIs(prog), first)
		}
		if prog != "" && r.Tag == "!!null" && slices.Contains(programKeys, k.Value) {
			return nil, nil, keyError(file, v.Line, prog, k.Value, "is empty; give a value or remove the key")
		}
		keyLines[k.Value], lines[k.Value] = k.Line, v.Line
		l.owners[[2]int{r.Line, r.Column}] = owner{prog, k.Value}
	}
	return keyLines, lines, nil
}

// unknownField is how yaml.v3's KnownFields reports a key no field takes;
// it gives the key and line in text only.
var unknownField = regexp.MustCompile(`^field (.+) not found in type `)

// decodeError renders an error of the typed decoding at its line, naming
// the program and key: a value of the wrong shape, or an unknown key, with
// the valid keys and the one likely meant.
func (l *layout) decodeError(file string, err error) error {
	var ve *valueError
	if errors.As(err, &ve) {
		o := l.owners[[2]int{ve.node.Line, ve.node.Column}]
		return keyError(file, ve.line, o.prog, o.key, ve.msg)
	}
	var te *yaml.TypeError
	if !errors.As(err, &te) || len(te.Errors) == 0 {
		return yamlSyntaxError(file, err)
	}
	line, msg := splitLine(te.Errors[0])
	m := unknownField.FindStringSubmatch(msg)
	if m == nil {
		return configError(file, line, "%s", msg)
	}
	key, prog := m[1], ""
	for _, p := range l.programs {
		if p.keyLines[key] == line {
			prog = p.name.Value
		}
	}
	valid := topKeys
	if prog != "" {
		valid = programKeys
	}
	if isCredentialKey(key) {
		return configError(file, line, "key %q %s: credentials never go in the file; pass --consul-token, --nacos-username and --nacos-password or set %s, %s and %s",
			key, whereIs(prog), adapters.EnvConsulToken, adapters.EnvNacosUsername, adapters.EnvNacosPassword)
	}
	hint := ""
	if near := nearest(key, valid); near != "" {
		hint = fmt.Sprintf(" (did you mean %q?)", near)
	}
	return configError(file, line, "unknown key %q %s%s; valid keys: %s", key, whereIs(prog), hint, strings.Join(valid, ", "))
}

// yamlSyntaxError renders the YAML library's "yaml: line N: problem" as
// "file:N: problem".
func yamlSyntaxError(file string, err error) error {
	line, msg := splitLine(err.Error())
	return configError(file, line, "not valid YAML: %s", msg)
}

// splitLine reads yaml.v3's "line N: problem", after an optional "yaml: ";
// without a line it returns 0.
func splitLine(msg string) (int, string) {
	msg = strings.TrimPrefix(msg, "yaml: ")
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if n, after, ok := strings.Cut(rest, ": "); ok {
			if l, err := strconv.Atoi(n); err == nil {
				return l, after
			}
		}
	}
	return 0, msg
}

// config builds the program from its decoded settings y, with def's
// defaults for the keys not written.
func (at *programAt) config(file string, y programYAML, def programConfig) (programConfig, error) {
	name := at.name.Value
	p := programConfig{
		Name: name, Service: name, Addr: def.Addr, Budget: def.Budget, ConnWait: def.ConnWait, ConnWaitSet: def.ConnWaitSet,
		ReadyTimeout: def.ReadyTimeout, PassEnv: def.PassEnv, ConsumerLag: def.ConsumerLag, Report: string(y.Report),
		Port: int(y.Port), ID: string(y.ID), Ready: string(y.Ready), Live: string(y.Live),
		Standby: bool(y.Standby), StandbyPort: int(y.StandbyPort), StandbyID: string(y.StandbyID),
		RecycleRSS: uint64(y.RecycleRSS), Command: y.Command, Env: y.Env, Dir: string(y.Dir),
		lines: at.lines, line: at.name.Line,
	}
	written := func(key string) bool { _, ok := at.lines[key]; return ok }
	if written("service") {
		p.Service = string(y.Service)
	}
	if written("addr") {
		p.Addr = string(y.Addr)
	}
	if written("pass-env") {
		p.PassEnv = y.PassEnv
	}
	const positive = "want a positive duration such as 30s or 24h"
	for _, d := range []struct {
		key    string
		raw    text
		dst    *time.Duration
		zeroOK bool
		want   string
	}{
		{"budget", y.Budget, &p.Budget, false, positive},
		{"recycle-after", y.RecycleAfter, &p.RecycleAfter, true, positive},
		{"conn-wait", y.ConnWait, &p.ConnWait, true, "want a duration of 0 or more, such as 250ms (0: no wait for connections)"},
		{"ready-timeout", y.ReadyTimeout, &p.ReadyTimeout, true, readyTimeoutWant},
		{"consumer-lag", y.ConsumerLag, &p.ConsumerLag, true, consumerLagWant},
	} {
		if !written(d.key) {
			continue
		}
		v, err := time.ParseDuration(string(d.raw))
		if err != nil || v < 0 || v == 0 && !d.zeroOK {
			return p, keyError(file, at.lines[d.key], name, d.key, fmt.Sprintf("%q: %s", d.raw, d.want))
		}
		*d.dst = v
	}
	p.ConnWaitSet = p.ConnWaitSet || written("conn-wait")
	for _, key := range []string{"port", "command"} {
		if !written(key) {
			return p, configError(file, p.line, "program %q: missing %s; every program needs port and command", name, key)
		}
	}
	if err := p.finish(); err != nil {
		var fe *fieldError
		if errors.As(err, &fe) {
			return p, configError(file, p.lineOf(fe.key), "program %q: %s", name, fe.render(""))
		}
		return p, configError(file, p.line, "program %q: %v", name, err)
	}
	return p, nil
}

// lineOf is the line of key's value, or of the program's name when the key
// was not written (a default).
func (p *programConfig) lineOf(key string) int {
	if l, ok := p.lines[key]; ok {
		return l
	}
	if key == "standby-port" || key == "standby-id" {
		if l, ok := p.lines["port"]; ok {
			return l // derived from port
		}
	}
	return p.line
}

// valueError is a value of the wrong shape, from a value type's
// UnmarshalYAML: the value's node, the line of the mistake, and what is
// wrong and what to write instead, to follow the key. yaml.v3 stops
// decoding at the first.
type valueError struct {
	node *yaml.Node
	line int
	msg  string
}

func (e *valueError) Error() string { return e.msg }

func valueErr(n *yaml.Node, format string, args ...any) *valueError {
	return &valueError{node: n, line: n.Line, msg: fmt.Sprintf(format, args...)}
}

// scalar is a single value's text; numbers and booleans are taken as
// written.
func scalar(n *yaml.Node) (string, error) {
	if n.Kind != yaml.ScalarNode {
		return "", fmt.Errorf("is a %s; want a single value", kindName(n))
	}
	if n.Tag == "!!null" {
		return "", errors.New("is empty; give a value or remove the key")
	}
	return n.Value, nil
}

// text is a single value, such as a name, an address or a URL.
type text string

func (t *text) UnmarshalYAML(n *yaml.Node) error {
	s, err := scalar(n)
	if err != nil {
		return valueErr(n, "%v", err)
	}
	*t = text(s)
	return nil
}

// port is a TCP port.
type port int

func (p *port) UnmarshalYAML(n *yaml.Node) error {
	s, err := scalar(n)
	if err != nil {
		return valueErr(n, "%v", err)
	}
	v, err := strconv.Atoi(s)
	switch {
	case err != nil:
		return valueErr(n, "%q: want a whole number", scalarText(n))
	case v < 1 || v > 65535:
		return valueErr(n, "%d: want a port between 1 and 65535", v)
	}
	*p = port(v)
	return nil
}

// flag is true or false, not YAML 1.1's yes or on.
type flag bool

func (f *flag) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
		shown := scalarText(n)
		if n.Kind == yaml.ScalarNode {
			shown = strconv.Quote(shown) // one line, whatever the value holds
		}
		return valueErr(n, "%s: want true or false", shown)
	}
	return n.Decode((*bool)(f))
}

// size is a byte count (see parseSize).
type size uint64

func (z *size) UnmarshalYAML(n *yaml.Node) error {
	s, err := scalar(n)
	var v uint64
	if err == nil {
		v, err = parseSize(s)
	}
	if err != nil {
		return valueErr(n, "%v", err)
	}
	*z = size(v)
	return nil
}

// command is an argv list. A bare {port} in YAML is a mapping, so it gets
// its own hint.
type command []string

func (c *command) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.SequenceNode {
		return valueErr(n, "is a %s; want a list such as [./web, --listen, \"127.0.0.1:{port}\"] (no shell runs it)", kindName(n))
	}
	if len(n.Content) == 0 {
		return valueErr(n, "is empty; give the program to run and its arguments")
	}
	for i, item := range n.Content {
		item = resolve(item)
		if item.Kind == yaml.MappingNode && len(item.Content) == 2 && item.Content[0].Value == "port" {
			return valueErr(n, "item %d is a mapping: YAML reads an unquoted {port} as one; write \"{port}\" in quotes", i+1)
		}
		s, err := scalar(item)
		switch {
		case err != nil:
			return valueErr(n, "item %d %v", i+1, err)
		case i == 0 && s == "":
			return valueErr(n, "item 1 is empty; name the program to run")
		}
		*c = append(*c, s)
	}
	return nil
}

// env is a mapping of variable names to values, kept as KEY=VALUE in the
// order written. Values are never quoted in errors: they may hold secrets.
type env []string

func (e *env) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return valueErr(n, "is a %s; want a mapping such as {GOMAXPROCS: \"2\"}", kindName(n))
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		switch {
		case k.Kind != yaml.ScalarNode || k.Value == "" || strings.ContainsAny(k.Value, "=\x00"):
			return valueErr(n, "variable name %q (line %d): want a name without '='", scalarText(k), k.Line)
		case seen[k.Value]:
			return valueErr(n, "variable %s appears twice (line %d)", k.Value, k.Line)
		case v.Kind != yaml.ScalarNode:
			return valueErr(n, "variable %s (line %d): its value is a %s; want a single value", k.Value, v.Line, kindName(v))
		case strings.ContainsRune(v.Value, 0):
			return valueErr(n, "variable %s (line %d): its value holds a NUL byte", k.Value, v.Line)
		}
		seen[k.Value] = true
		value := v.Value
		if v.Tag == "!!null" {
			value = ""
		}
		*e = append(*e, k.Value+"="+value)
	}
	return nil
}

// names is a list of environment variable names, such as pass-env's.
type names []string

func (ns *names) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.SequenceNode {
		return valueErr(n, "is a %s; want a list of variable names such as [CONSUL_HTTP_TOKEN]", kindName(n))
	}
	for i, item := range n.Content {
		item = resolve(item)
		s, err := scalar(item)
		switch {
		case err != nil:
			return valueErr(n, "item %d %v", i+1, err)
		case s == "" || strings.ContainsAny(s, "=\x00"):
			return valueErr(n, "item %d: want a variable name, without '=' (pass-env passes the value lameduck has)", i+1)
		}
		*ns = append(*ns, s)
	}
	return nil
}

// registryList is registries:, with the line of each URL for the
// adapters' errors.
type registryList struct {
	urls  []string
	lines []int
}

func (r *registryList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.SequenceNode {
		return valueErr(n, "want a list such as [consul://127.0.0.1:8500], got a %s", kindName(n))
	}
	for _, item := range n.Content {
		item = resolve(item)
		s, err := scalar(item)
		if err != nil {
			e := valueErr(n, "an item %v", err)
			e.line = item.Line
			return e
		}
		r.urls, r.lines = append(r.urls, s), append(r.lines, item.Line)
	}
	return nil
}

// resolve follows aliases (*name) to the node they name.
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 16; i++ {
		n = n.Alias
	}
	return n
}

// scalarText is a node's text for an error message: a scalar's value, cut
// short, or its kind.
func scalarText(n *yaml.Node) string {
	if n.Kind != yaml.ScalarNode {
		return "(a " + kindName(n) + ")"
	}
	if len(n.Value) > 40 {
		return n.Value[:40] + "..."
	}
	return n.Value
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "list"
	case yaml.ScalarNode:
		return "single value"
	}
	return "node"
}

func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

func isCredentialKey(key string) bool {
	k := strings.ToLower(key)
	for _, w := range []string{"token", "password", "passwd", "secret", "username", "credential"} {
		if strings.Contains(k, w) {
			return true
		}
	}
	return false
}

// nearest returns the valid key closest to key when it is a likely typo:
// about one edit per three letters away, or the same letters in another
// order.
func nearest(key string, valid []string) string {
	best, bestD := "", max(1, (len(key)+2)/3)+1
	for _, v := range valid {
		if d := editDistance(key, v); d < bestD {
			best, bestD = v, d
		}
	}
	if best != "" {
		return best
	}
	for _, v := range valid {
		if sameLetters(key, v) {
			return v
		}
	}
	return ""
}

func sameLetters(a, b string) bool {
	x, y := []byte(a), []byte(b)
	slices.Sort(x)
	slices.Sort(y)
	return string(x) == string(y)
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// checkAcross checks what no program can check alone: every port (first
// and second copies) and every instance ID appears once on the host.
func checkAcross(file string, progs []programConfig) error {
	type owner struct {
		prog, key string
		line      int
	}
	ports := map[int]owner{}
	ids := map[string]owner{}
	for i := range progs {
		p := &progs[i]
		for _, f := range []struct {
			key  string
			port int
		}{{"port", p.Port}, {"standby-port", p.StandbyPort}} {
			if f.port == 0 {
				continue
			}
			if o, dup := ports[f.port]; dup {
				return configError(file, p.lineOf(f.key), "program %q: %s %d is already the %s of program %q (line %d); give every program its own ports",
					p.Name, f.key, f.port, o.key, o.prog, o.line)
			}
			ports[f.port] = owner{p.Name, f.key, p.lineOf(f.key)}
		}
		for _, f := range []struct{ key, id string }{{"id", p.ID}, {"standby-id", p.StandbyID}} {
			if f.id == "" {
				continue
			}
			if o, dup := ids[f.id]; dup {
				return configError(file, p.lineOf(f.key), "program %q: instance ID %q is already the %s of program %q (line %d); IDs must differ",
					p.Name, f.id, o.key, o.prog, o.line)
			}
			ids[f.id] = owner{p.Name, f.key, p.lineOf(f.key)}
		}
	}
	return nil
}
